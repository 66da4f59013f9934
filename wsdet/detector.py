"""The :class:`Detector`: a user model bound to an attention method."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # typing.Unpack is Python >= 3.11; annotations are not evaluated
    from typing_extensions import Unpack

from wsdet._checks import check_bool, check_int
from wsdet._modules import eval_mode as _eval_mode
from wsdet.attention.base import (
    AttentionMethod,
    Target,
    get_method,
    instrumented,
    model_lock,
    select_target,
    warn_once,
)
from wsdet.detection import (
    Detections,
    NArg,
    Negatives,
    SizeArg,
    check_detect_options,
    detect_maps,
    parse_n,
)

__all__ = ["Detector", "TileOptions"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_NDIM: dict[type[nn.Module], int] = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_STOCHASTIC = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
#: torch's messages for an input smaller than a pooling/convolution window.
_TOO_SMALL = re.compile(
    r"too small|can't be greater than actual input size|"
    r"should be less than the corresponding input dimension"
)
#: The size probe of a too-small input tries inputs of at most this many voxels.
_PROBE_VOXELS = 2**21
#: The tensor method converting to each dtype, for the dtype hint.
_CAST = {
    torch.float32: ".float()",
    torch.float64: ".double()",
    torch.float16: ".half()",
    torch.bfloat16: ".bfloat16()",
}


class _FirstConv(Exception):
    """Raised by the input-hint probe at the first convolution called."""


class TileOptions(TypedDict, total=False):
    """How the maps are computed (the keyword arguments of :meth:`Detector.attention`).

    ``tile_size`` (sequence of int): tile cores per spatial axis (see
    :mod:`wsdet.attention.tiling`); ``tile_halo`` (int or sequence of int): the halo
    around each core (default: measured); ``batch_size`` (int): chunks of at most this
    many samples.
    """

    tile_size: Sequence[int] | None
    tile_halo: int | Sequence[int] | None
    batch_size: int | None


def _cast(dtype: torch.dtype) -> str:
    return _CAST.get(dtype, f".to({dtype})")


class Detector:
    """Turn a counting network into a point detector.

    Parameters
    ----------
    model : torch.nn.Module
        Any 2D or 3D network taking ``(B, C, *S)`` and returning one count (or logit) per
        sample, ``(B,)`` or ``(B, 1)``; use ``target=`` for other outputs.
    method : str or AttentionMethod subclass
        An attention method from :func:`wsdet.available_methods` (default ``"gp_unet"``).
    target : None, int or callable
        What is explained: the single output (default), a column of ``(B, K)`` outputs, or
        ``callable(output) -> (B,)`` (gradient methods).
    eval_mode : bool
        Put the model in eval mode for each call (restored afterwards), so that BatchNorm
        and dropout behave as at inference and the samples of a batch are independent.
        With ``eval_mode=False`` a model left in training mode uses batch statistics.
    **options
        Passed to the method (e.g. ``features=``, ``head=``, ``layer=``,
        ``fuse_intensity=``).

    Examples
    --------
    >>> import torch, wsdet
    >>> from wsdet.models import GPUnet
    >>> _ = torch.manual_seed(0)
    >>> det = wsdet.Detector(GPUnet(dim=2), method="gp_unet")
    >>> x = torch.rand(2, 1, 32, 32)
    >>> det.attention(x).shape
    torch.Size([2, 32, 32])
    >>> dets = det.detect(x, n=3)
    >>> [d.points.shape for d in dets]
    [(3, 2), (3, 2)]
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | type[AttentionMethod] = "gp_unet",
        *,
        target: Target = None,
        eval_mode: bool = True,
        **options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(method, str):
            cls = get_method(method)
        elif isinstance(method, type) and issubclass(method, AttentionMethod):
            cls = method
        else:
            raise TypeError(
                f"method must be a registered name or an AttentionMethod subclass, got {method!r}"
            )
        self.method = cls(model, target=target, **options)
        #: The method's options as given (``target`` included), e.g. for run records.
        self.options: dict[str, Any] = {"target": target, **options}
        self.model = self.method.model  # a torch.compile-d model's eager module
        self.method_name = cls.name or cls.__name__
        self.eval_mode = check_bool("eval_mode", eval_mode)

    def __repr__(self) -> str:
        return f"Detector(model={type(self.model).__name__}, method={self.method_name!r})"

    # ------------------------------------------------------------------ validation
    def _check_input(self, x: Any) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim not in (4, 5):
            raise ValueError(
                "x must have shape (B, C, H, W) or (B, C, D, H, W) "
                f"(2 or 3 spatial dims), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError("x must hold at least one sample, got batch size 0")
        # one reduction first; the elementwise check only when the sum is not finite
        # (NaN/inf present, or a float overflow of a finite input)
        if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or infinite values")
        return x

    def _input_error(self, x: Tensor, err: RuntimeError) -> Exception | None:
        """A clear error for a model that rejects ``x`` (``None``: no better explanation).

        Checked in turn, each cheaply: the dtype and device of the model's parameters, the
        first convolution *called* on ``x`` (spatial dims, channels), and for torch's
        "input too small" messages the smallest size the model accepts.
        """
        mismatch = self._dtype_device_hint(x)
        if mismatch is not None:
            return TypeError(mismatch)
        hint = self._first_conv_hint(x)
        if hint is not None:
            return ValueError(hint)
        if _TOO_SMALL.search(str(err)):
            return ValueError(self._too_small_hint(x, err))
        return None

    def _dtype_device_hint(self, x: Tensor) -> str | None:
        """``x`` and the model's first floating-point parameter disagree in dtype/device."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        ref = next((t for t in tensors if t.is_floating_point()), None)
        if ref is None:
            return None
        if ref.dtype != x.dtype:
            return (
                f"x has dtype {x.dtype} but the model's parameters are {ref.dtype}: convert "
                f"the input (x{_cast(ref.dtype)}) or the model (model{_cast(x.dtype)})"
            )
        if ref.device != x.device:
            return (
                f"x is on {x.device} but the model's parameters are on {ref.device}: move "
                f"the input (x.to('{ref.device}')) or the model (model.to('{x.device}'))"
            )
        return None

    def _first_conv_hint(self, x: Tensor) -> str | None:
        """Why the model rejects ``x``, judged by its first convolution *called* on it."""
        first: list[nn.Module] = []

        def pre(mod: nn.Module, inp: Any) -> None:
            first.append(mod)
            raise _FirstConv  # stop here: only the first convolution's input matters

        with instrumented(self.model) as ins, torch.no_grad():
            for m in self.model.modules():
                if isinstance(m, _CONV):
                    ins.forward_pre_hook(m, pre)
            with contextlib.suppress(Exception):
                self.model(x[:1])
        if not first:
            return None
        conv = first[0]
        name = next(n for n, m in self.model.named_modules() if m is conv)
        nd = _CONV_NDIM.get(type(conv), x.ndim - 2)
        cin = conv.in_channels  # type: ignore[union-attr]
        if nd != x.ndim - 2:
            return (
                f"x has {x.ndim - 2} spatial dims but the model's first convolution "
                f"{name!r} is {type(conv).__name__}: expected shape (B, {cin}, "
                f"{', '.join('S' * nd)}), got {tuple(x.shape)}"
            )
        if cin != x.shape[1]:
            return (
                f"x has {x.shape[1]} channels but the model's first convolution {name!r} "
                f"expects {cin}: expected shape (B, {cin}, *S), got {tuple(x.shape)}"
            )
        return None

    def _accepts(self, shape: tuple[int, ...], like: Tensor) -> bool:
        """Whether one forward pass of the model runs on zeros of ``shape``."""
        with instrumented(self.model), torch.no_grad():
            try:
                self.model(like.new_zeros(shape))
            except Exception:  # too small still, or any other failure: not accepted
                return False
        return True

    def _too_small_hint(self, x: Tensor, err: RuntimeError) -> str:
        """The "input too small" message, with the smallest accepted size when a probe of
        growing inputs finds it: the axes shorter than ``s`` grown to ``s``, for ``s`` from
        the shortest axis + 1 up (inputs of at most ``_PROBE_VOXELS`` voxels)."""
        spatial = tuple(int(v) for v in x.shape[2:])
        why = str(err).strip().splitlines()[0]
        text = f"x of shape {tuple(x.shape)} is too small for the model ({why})"
        for s in range(min(spatial) + 1, min(spatial) + 257):  # 256 tries at most
            grown = tuple(max(v, s) for v in spatial)
            if math.prod(grown) > _PROBE_VOXELS:
                break
            if self._accepts((1, x.shape[1], *grown), x):
                shape = ", ".join(map(str, grown))
                return f"{text}; the smallest input it accepts is (B, {x.shape[1]}, {shape})"
        return f"{text}; give a larger input"

    @contextlib.contextmanager
    def _mode(self) -> Iterator[None]:
        model = self.model
        if self.eval_mode:
            with _eval_mode(model):
                yield
        else:
            if any(m.training for m in model.modules() if isinstance(m, _STOCHASTIC)):
                warn_once(
                    self,
                    "the model has BatchNorm/Dropout layers in training mode and "
                    "eval_mode=False: maps depend on the other samples of the batch",
                )
            yield

    # ---------------------------------------------------------------------- public
    def _run(
        self, x: Tensor, call: Callable[[Tensor], tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """``call(x)`` with the model in the requested mode; a model error gets a hint."""
        with model_lock(self.model), self._mode():
            try:
                return call(x)
            except torch.cuda.OutOfMemoryError:  # not an input problem: no second pass
                raise
            except RuntimeError as e:
                clear = self._input_error(x, e)
                if clear is None:
                    raise
                raise clear from e

    def attention_and_count(
        self,
        x: Tensor,
        *,
        tile_size: Sequence[int] | None = None,
        tile_halo: int | Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Raw signed maps ``(B, *S)`` and the explained outputs ``(B,)``.

        Parameters
        ----------
        x : Tensor
            ``(B, C, *S)`` input batch.
        tile_size : sequence of int, optional
            Compute the maps tile by tile (cores of this size per spatial axis, plus a
            halo), for inputs whose whole-volume attention does not fit in memory. The
            result equals the untiled map (see :mod:`wsdet.attention.tiling`).
        tile_halo : int or sequence of int, optional
            Halo around each tile core in voxels (default: measured from the model's
            receptive field by a probe).
        batch_size : int, optional
            Process the batch in chunks of at most this many samples.
        """
        x = self._check_input(x)
        step = x.shape[0] if batch_size is None else check_int("batch_size", batch_size, minimum=1)
        if tile_size is None:
            if tile_halo is not None:
                raise ValueError("tile_halo is only used with tile_size")
            call = self.method
        else:
            from wsdet.attention.tiling import TiledAttention

            call = TiledAttention(self.method, tile_size=tile_size, halo=tile_halo)
        parts = [self._run(x[i : i + step], call) for i in range(0, x.shape[0], step)]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def attention(self, x: Tensor, **tiling: Unpack[TileOptions]) -> Tensor:
        """Raw signed attention maps ``(B, *S)`` at input resolution, same device/dtype.

        ``**tiling``: ``tile_size``, ``tile_halo`` and ``batch_size``, as in
        :meth:`attention_and_count`.
        """
        return self.attention_and_count(x, **tiling)[0]

    def count(self, x: Tensor) -> Tensor:
        """The model's predicted count per image, ``(B,)`` (a forward pass only)."""
        x = self._check_input(x)

        def forward(x: Tensor) -> tuple[Tensor, Tensor]:
            with instrumented(self.model), torch.inference_mode():
                y = select_target(self.model(x), self.method.target, x.shape[0]).detach()
            return y, y

        return self._run(x, forward)[1]

    def detect(
        self,
        x: Tensor,
        n: NArg = None,
        *,
        size: SizeArg = 6,
        negatives: Negatives = "clip",
        min_value: float | None = None,
        size_mm: float | Sequence[float] | None = None,
        spacing: Sequence[float] | None = None,
        **tiling: Unpack[TileOptions],
    ) -> list[Detections]:
        """Point detections per image: attention, then :func:`wsdet.detect_maps`.

        Parameters
        ----------
        x : Tensor
            ``(B, C, *S)`` input batch.
        n : None, int, sequence of int, or "all"
            How many candidates to keep per image: ``None`` keeps the rounded predicted
            count (``max(0, floor(count + 0.5))``), an int or one number per image keeps
            that many (rounded half up), ``"all"`` keeps every candidate (use it for a
            FROC curve: :func:`wsdet.metrics.evaluate` warns on truncated detections).
        size : int or sequence of int
            Maximum-filter size of the NMS (default 6, as in the paper). A window larger
            than ``2 L - 1`` along an axis of length ``L`` covers the whole axis from every
            voxel and is clamped to it (same result).
        negatives : {"clip", "abs", "keep"}
            What to do with negative map values before NMS (the paper clips).
        min_value : float, optional
            Candidates must exceed it (default: each map's minimum); NaN raises.
        size_mm : float or sequence of float, optional
            The NMS window in millimetres instead of ``size`` (with ``spacing``):
            :func:`wsdet.io.size_in_voxels` voxels per axis.
        spacing : sequence of float, optional
            Voxel size per spatial axis in mm (e.g. ``Volume.spacing``), for ``size_mm``.
        **tiling
            ``tile_size``, ``tile_halo``, ``batch_size``: as in :meth:`attention_and_count`.

        Returns
        -------
        list of Detections
            One per image: ``points`` (k, ndim) int64 index coordinates in array axis order,
            ``scores`` (k,), ``count`` (the model's prediction), ``n_candidates``.
        """
        b = x.shape[0] if isinstance(x, Tensor) and x.ndim >= 1 else 0
        parse_n(n, b)  # fail before the model runs
        if size_mm is not None or spacing is not None:
            from wsdet.io import size_in_voxels

            if size_mm is None or spacing is None:
                raise ValueError("size_mm and spacing go together (the window in mm needs both)")
            if size != 6:
                raise ValueError("give the NMS window as size (voxels) or size_mm, not both")
            nd = x.ndim - 2 if isinstance(x, Tensor) else -1
            try:
                sp = [float(v) for v in spacing]
            except TypeError:
                sp = []
            if nd >= 0 and len(sp) != nd:
                raise ValueError(
                    f"spacing must have one voxel size (mm) per spatial axis ({nd}), "
                    f"got {spacing!r}"
                )
            size = size_in_voxels(size_mm, sp)
        if isinstance(x, Tensor) and x.ndim in (4, 5):  # fail before the model runs
            check_detect_options(x.ndim - 2, size=size, negatives=negatives, min_value=min_value)
        maps, counts = self.attention_and_count(x, **tiling)
        return detect_maps(
            maps, n=n, counts=counts, size=size, negatives=negatives, min_value=min_value
        )
