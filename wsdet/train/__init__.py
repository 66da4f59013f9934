"""Training counting networks: regression or classification, early stopping, exact resume.

The :class:`Trainer` optimises a network whose forward pass returns one value per sample
``(B,)`` (a count, or a logit for the classification objective), as in Dubost et al. §3.3
and §3.5:

* objectives: ``"regression"`` — mean squared error on the count (the paper's);
  ``"classification"`` — binary cross-entropy with logits on the presence ``count > 0``;
* optimisers: Adadelta with the paper's (Keras) settings ``lr=1.0, rho=0.95, eps=1e-7``
  (default) or Adam;
* regression targets standardised with the training statistics, the scaling then folded into
  the final ``Linear(K, 1)`` so that the returned model predicts counts;
* early stopping with patience (paper: 100 epochs), a maximum number of epochs and a time
  budget; the lowest-validation-loss weights are kept;
* atomic checkpoints that load with ``weights_only=True`` and resume bit for bit;
* fine-tuning from another checkpoint (the paper first trains the easiest region).

Data are tensors ``(images, counts)``, a callable ``epoch -> (images, counts[, ...])``
drawing fresh data each epoch, any ``torch.utils.data.Dataset`` (map-style or iterable)
yielding ``(image, count)`` or dicts, or a ``DataLoader`` of your own
(:mod:`wsdet.data.loading`). Shuffling and the ``augment`` callable use a generator seeded by
``(seed, epoch)``, so an interrupted run resumed from its checkpoint follows the
uninterrupted run exactly. Launched by ``torchrun``, :meth:`Trainer.fit` trains data-parallel
(:mod:`wsdet.distributed`, ``docs/scaling.md``).

The package: :mod:`~wsdet.train.config` (:class:`TrainConfig`, :class:`TrainResult`, the data
checks), :mod:`~wsdet.train.scaling` (target standardisation folded into the head),
:mod:`~wsdet.train.checkpoints` (run state, ``last.pt`` / ``best.pt`` / ``history.csv``,
random generators), :mod:`~wsdet.train.runtime` (progress display, memory formats) and
:mod:`~wsdet.train.trainer` (:class:`Trainer`); the public names are importable from
``wsdet.train`` itself.
"""

from wsdet._io import DamagedCheckpointError

# Type aliases and ``_Progress`` (imported by tests) are re-exported outside ``__all__``.
from wsdet.train.config import AugmentFn, CountData, Sampler, TrainConfig, TrainResult
from wsdet.train.config import InitScheme as InitScheme
from wsdet.train.config import MemoryFormat as MemoryFormat
from wsdet.train.config import Objective as Objective
from wsdet.train.config import OptimizerName as OptimizerName
from wsdet.train.config import Precision as Precision
from wsdet.train.config import ProgressMode as ProgressMode
from wsdet.train.config import StopReason as StopReason
from wsdet.train.config import TrainData as TrainData
from wsdet.train.config import ValData as ValData
from wsdet.train.runtime import _Progress as _Progress
from wsdet.train.scaling import find_head, fold_target_scaling, unfold_target_scaling
from wsdet.train.trainer import Trainer

__all__ = [
    "AugmentFn",
    "CountData",
    "DamagedCheckpointError",
    "Sampler",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "find_head",
    "fold_target_scaling",
    "unfold_target_scaling",
]
