"""The ``wsdet`` command end to end on small NIfTI volumes (anisotropic, rotated affine),
against the Python API; its errors; the "Your NIfTI volumes" page; the examples."""

from __future__ import annotations

import csv
import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import wsdet
from wsdet.cli import UserError, main
from wsdet.export import read_markups, read_points_csv
from wsdet.io import load_volume, normalize_intensity, points_from_mask
from wsdet.metrics import evaluate
from wsdet.models import GPUnet
from wsdet.train import Trainer

nib = pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (16, 14, 10)


def rotated_affine() -> np.ndarray:
    a = 0.5
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.0, 1.25, 2.5])
    aff[:3, 3] = [-20.0, 35.5, -7.25]
    return aff


def write_data(folder: Path, n: int = 5) -> dict[str, Any]:
    """n volumes with 0-3 bright blobs each, their masks, counts and mm targets."""
    rng = np.random.default_rng(1)
    aff = rotated_affine()
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), -1)
    counts, targets = {}, []
    for i in range(n):
        img = rng.normal(0, 0.1, SHAPE).astype(np.float32)
        mask = np.zeros(SHAPE, np.uint8)
        centres = [c for c in ([3, 3, 3], [11, 9, 6], [5, 10, 7])[: i % 4]]
        for c in centres:
            d2 = (((grid - c) * [1.0, 1.25, 2.5]) ** 2).sum(-1)
            img += np.exp(-d2 / 4.0).astype(np.float32)
            mask[d2 <= 4.0] = 1
        name = f"case{i:02d}"
        nib.save(nib.Nifti1Image(img, aff), folder / "images" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(mask, aff), folder / "masks" / f"{name}.nii.gz")
        counts[name] = len(centres)
        mm = nib.affines.apply_affine(aff, np.array(centres).reshape(-1, 3))
        targets += [[name, *p] for p in mm] or [[name, "", "", ""]]
    with open(folder / "counts.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "count"])
        w.writerows(counts.items())
    with open(folder / "targets.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "x_mm", "y_mm", "z_mm"])
        w.writerows(targets)
    return {"counts": counts}


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3D GP-Unet trained by the command line (2 epochs, then resumed to 3)."""
    root = tmp_path_factory.mktemp("cli")
    write_data(root)
    args = ["train", str(root / "images"), "--counts", str(root / "counts.csv")]
    args += ["--out", str(root / "run"), "--width", "2", "--epochs", "2", "--quiet"]
    args += ["--device", "cpu", "--threads", "1"]  # Adadelta: maps with candidates
    assert main(args) == 0
    history = (root / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + 2 epochs
    args[args.index("--epochs") + 1] = "3"
    assert main([*args, "--resume"]) == 0
    assert len((root / "run" / "history.csv").read_text().splitlines()) == 4  # continued
    return root


def api_detections(root: Path, name: str, size_mm: float) -> Any:
    """The same detections through the Python API."""
    model = GPUnet(dim=3, width=2)
    Trainer(model).finetune_from(root / "run" / "best.pt")
    vol = load_volume(root / "images" / f"{name}.nii.gz")
    x = torch.from_numpy(normalize_intensity(vol.array, "zscore"))[None, None]
    det = wsdet.Detector(model, method="gp_unet")
    (found,) = det.detect(x, n="all", size_mm=size_mm, spacing=vol.spacing, negatives="abs")
    return vol, vol.locate(found), det.attention(x)[0].numpy()


def test_train_writes_checkpoints_and_a_model_description(trained: Path) -> None:
    spec = json.loads((trained / "run" / "model.json").read_text())
    assert spec["arch"] == "gpunet" and spec["dim"] == 3 and spec["width"] == 2
    assert spec["normalize"] == "zscore" and spec["method"] == "gp_unet"
    assert spec["upsample"] == "aligned"
    assert {"best.pt", "last.pt", "history.csv"} <= {p.name for p in (trained / "run").iterdir()}


def test_detect_equals_the_python_api_in_mm(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "det"
    code, stdout, _ = run(
        [
            "detect",
            str(trained / "images"),
            "--weights",  # --arch/--dim from run/model.json
            str(trained / "run" / "best.pt"),
            "--size-mm",
            "5",
            "--out",
            str(out),
            "--save-maps",
            "--save-mask",
            "--overlay",
            "--coordinate-system",
            "LPS",
            "--negatives",  # a briefly trained CAM may be negative everywhere
            "abs",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0 and "case03: predicted count" in stdout
    with open(out / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [r["image"] for r in summary] == [f"case{i:02d}" for i in range(5)]
    for row in summary:
        name = row["image"]
        vol, api, amap = api_detections(trained, name, 5.0)
        assert float(row["count"]) == pytest.approx(api.count, rel=1e-6)
        assert int(row["n_candidates"]) == len(api) == int(row["n_csv"]) > 0
        with open(out / f"{name}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        voxel = np.array([[int(r[c]) for c in "ijk"] for r in rows]).reshape(-1, 3)
        mm = np.array([[float(r[c]) for c in ("x_mm", "y_mm", "z_mm")] for r in rows])
        np.testing.assert_array_equal(voxel, api.points)
        np.testing.assert_array_equal(mm.reshape(-1, 3), api.points_mm)  # exactly the API's
        np.testing.assert_allclose(
            mm.reshape(-1, 3), nib.affines.apply_affine(vol.affine, voxel), atol=1e-9
        )
        np.testing.assert_array_equal([float(r["score"]) for r in rows], api.scores)
        k = int(row["n_markups"])
        assert k == min(len(api), max(0, int(np.floor(api.count + 0.5))))
        pos, _, _ = read_markups(out / f"{name}.mrk.json")  # LPS in the file, RAS back
        assert (
            json.loads((out / f"{name}.mrk.json").read_text())["markups"][0]["coordinateSystem"]
            == "LPS"
        )
        np.testing.assert_allclose(pos, api.points_mm[:k], atol=1e-9)
        saved = nib.load(out / f"{name}_attention.nii.gz")
        np.testing.assert_allclose(saved.affine, vol.affine, atol=1e-6)
        np.testing.assert_allclose(saved.get_fdata(), amap, rtol=1e-5, atol=1e-6)
        mask = np.asarray(nib.load(out / f"{name}_detections.nii.gz").dataobj)
        assert int((mask > 0).sum()) == k
        assert (out / f"{name}_overlay.png").read_bytes()[:4] == b"\x89PNG"


def test_attention_writes_maps_with_the_input_geometry(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two volumes\n{trained / 'images' / 'case01.nii.gz'}\n")
    args = ["attention", str(listing), "--arch", "gpunet", "--dim", "3", "--width", "2"]
    args += ["--weights", str(trained / "run" / "best.pt"), "--out", str(tmp_path / "maps")]
    code, _, _ = run([*args, "--quiet", "--format", "npz"], capsys)
    assert code == 0
    vol, _, amap = api_detections(trained, "case01", 5.0)
    got = load_volume(tmp_path / "maps" / "case01_attention.npz")
    np.testing.assert_allclose(got.array, amap, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.affine, vol.affine)


def test_a_model_json_from_before_aligned_upsampling_rebuilds_the_stretching_decoder(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old_run"
    old.mkdir()
    (old / "best.pt").write_bytes((trained / "run" / "best.pt").read_bytes())
    spec = json.loads((trained / "run" / "model.json").read_text())
    del spec["upsample"]  # as written before the entry existed
    (old / "model.json").write_text(json.dumps(spec))
    src = nib.load(trained / "images" / "case02.nii.gz")
    odd = np.asarray(src.dataobj, dtype=np.float32)[:15, :13, :9]  # sizes the pooling floors
    nib.save(nib.Nifti1Image(odd, src.affine), tmp_path / "odd.nii.gz")
    args = ["attention", str(tmp_path / "odd.nii.gz"), "--weights", str(old / "best.pt")]
    args += ["--out", str(tmp_path / "maps"), "--quiet", "--format", "npz"]
    code, _, err = run(args, capsys)
    assert code == 0 and "predates aligned decoder upsampling" in err  # shown with --quiet
    got = load_volume(tmp_path / "maps" / "odd_attention.npz").array
    x = torch.from_numpy(normalize_intensity(odd, "zscore"))[None, None]
    maps = {}
    for factor in (None, 2):  # None: what the old decoder did, F.interpolate(size=...)
        model = GPUnet(dim=3, width=2)
        model.up.factor = factor
        Trainer(model).finetune_from(old / "best.pt")
        maps[factor] = wsdet.Detector(model, method="gp_unet").attention(x)[0].numpy()
    np.testing.assert_allclose(got, maps[None], rtol=1e-5, atol=1e-6)
    assert np.abs(maps[2] - maps[None]).max() > 1e-3  # the aligned decoder differs here
    args[args.index("--weights") + 1] = str(trained / "run" / "best.pt")  # today's model.json
    code, _, err = run(args, capsys)
    assert code == 0 and "predates" not in err
    got = load_volume(tmp_path / "maps" / "odd_attention.npz").array
    np.testing.assert_allclose(got, maps[2], rtol=1e-5, atol=1e-6)


def test_resuming_a_run_from_before_aligned_upsampling_keeps_its_decoder(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "old_run"
    run_dir.mkdir()
    for name in ("best.pt", "last.pt", "history.csv"):
        (run_dir / name).write_bytes((trained / "run" / name).read_bytes())
    spec = json.loads((trained / "run" / "model.json").read_text())
    del spec["upsample"]
    (run_dir / "model.json").write_text(json.dumps(spec))
    args = ["train", str(trained / "images"), "--counts", str(trained / "counts.csv")]
    args += ["--out", str(run_dir), "--width", "2", "--epochs", "4", "--quiet", "--resume"]
    code, _, err = run([*args, "--device", "cpu", "--threads", "1"], capsys)
    assert code == 0 and "predates aligned decoder upsampling" in err
    assert len((run_dir / "history.csv").read_text().splitlines()) == 5  # resumed, 1 more
    assert "upsample" not in json.loads((run_dir / "model.json").read_text())
    fresh = tmp_path / "no_state"  # an old description but nothing to resume: a new run
    fresh.mkdir()
    (fresh / "model.json").write_text(json.dumps(spec))
    args[args.index("--out") + 1], args[args.index("--epochs") + 1] = str(fresh), "1"
    code, _, err = run([*args, "--device", "cpu", "--threads", "1"], capsys)
    assert code == 0 and "predates" not in err
    assert json.loads((fresh / "model.json").read_text())["upsample"] == "aligned"


def test_evaluate_prints_the_metrics_report(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "det"
    weights = str(trained / "run" / "best.pt")
    assert (
        main(["detect", str(trained / "images"), "--weights", weights, "-o", str(out), "-q"]) == 0
    )
    base = ["evaluate", str(out), "--radius-mm", "4", "--bootstrap", "20", "--max-fp", "5"]
    code, text, _ = run([*base, "--targets", str(trained / "targets.csv")], capsys)
    assert code == 0 and "within 4 mm" in text
    code, js, _ = run([*base, "--targets", str(trained / "targets.csv"), "--json"], capsys)
    got = json.loads(js)
    # the Python API on the same files
    tg = read_points_csv(trained / "targets.csv", coords="mm")
    names = [f"case{i:02d}" for i in range(5)]
    dets = []
    with open(out / "summary.csv", newline="") as f:
        counts = {r["image"]: float(r["count"]) for r in csv.DictReader(f)}
    for n in names:
        p, s = read_points_csv(out / f"{n}.csv", coords="mm").get(n, (np.zeros((0, 3)), None))
        dets.append((p, np.zeros(0) if s is None else s, counts[n]))
    rep = evaluate(
        dets, [tg[n][0] for n in names], radius_mm=4, spacing=1, n_bootstrap=20, max_fp=5
    )
    assert text.strip() == str(rep)
    assert got["fauc"] == rep.to_dict()["fauc"] and got["settings"]["radius_unit"] == "mm"
    # masks give the same targets (their centroids): the same report
    fig = tmp_path / "froc.png"
    code, masks, _ = run(
        [*base, "--target-masks", str(trained / "masks"), "--figure", str(fig), "--log-x"], capsys
    )
    assert code == 0 and masks == text and fig.read_bytes()[:4] == b"\x89PNG"
    code, vox, _ = run(
        ["evaluate", str(out), "--target-masks", str(trained / "masks"), "--bootstrap", "0"],
        capsys,
    )
    assert code == 0 and "within 6 voxels" in vox


def test_mask_centroids_are_the_blob_centres(trained: Path) -> None:
    vol = load_volume(trained / "masks" / "case03.nii.gz")
    expected = [[3, 3, 3], [5, 10, 7], [11, 9, 6]]  # raster order of the first voxels
    np.testing.assert_allclose(points_from_mask(vol), expected)


# ----------------------------------------------------------------------------- models
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_user_model_factory_and_torchscript(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    (tmp_path / "mynets.py").write_text(
        "from wsdet.models import GPUnet\n\n"
        "def build(dim=3):\n    return GPUnet(dim=dim, width=2)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = GPUnet(dim=3, width=2)
    Trainer(model).finetune_from(trained / "run" / "best.pt")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    img = str(trained / "images" / "case02.nii.gz")
    args = ["detect", img, "--model", "mynets:build", "--model-kwargs", '{"dim": 3}']
    code, _, err = run(
        [*args, "--weights", "sd.pt", "-o", "user", "-q", "--negatives", "keep"], capsys
    )
    assert code == 0, err
    x = torch.from_numpy(normalize_intensity(load_volume(img).array))[None, None]
    (ref,) = wsdet.Detector(model, method="gp_unet").detect(x, n="all", negatives="keep")
    got = read_points_csv(tmp_path / "user" / "case02.csv")["case02"]
    assert len(ref) > 0
    np.testing.assert_array_equal(got[0], ref.points)
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), x)
    traced.save(str(tmp_path / "net.ts"))
    code, _, err = run(["detect", img, "--torchscript", "net.ts", "-o", "ts", "-q"], capsys)
    assert code == 0, err
    (ref,) = wsdet.Detector(model, method="grad").detect(x, n="all")
    assert len(ref) > 0
    got = read_points_csv(tmp_path / "ts" / "case02.csv")["case02"]
    np.testing.assert_array_equal(got[0], ref.points)


def test_2d_png_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skimage import io as skio

    img = np.zeros((24, 20), np.uint8)
    img[5, 7] = 255
    skio.imsave(tmp_path / "a.png", img, check_contrast=False)
    net = GPUnet(dim=2, width=2)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    args = ["detect", str(tmp_path / "a.png"), "--arch", "gpunet", "--dim", "2", "--width", "2"]
    code, _, err = run(
        [*args, "--weights", str(tmp_path / "w.pt"), "-o", str(tmp_path / "o")], capsys
    )
    assert code == 0, err
    header = (tmp_path / "o" / "a.csv").read_text().splitlines()[0]
    assert header == "image,rank,score,i,j,x_mm,y_mm,z_mm"
    assert not (tmp_path / "o" / "a.mrk.json").exists()  # Slicer markups are for volumes


# ----------------------------------------------------------------------------- errors
def one_error_line(err: str) -> str:
    """The one error line (progress lines may precede it); no traceback."""
    lines = [ln for ln in err.splitlines() if ln.startswith("wsdet: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert err.rstrip().endswith(lines[0])  # the last thing said
    return lines[0]


def test_user_errors_are_one_line_and_exit_nonzero(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = str(trained / "run" / "best.pt")
    img = str(trained / "images" / "case01.nii.gz")
    model = ["--arch", "gpunet", "--dim", "3", "--width", "2", "--weights", weights]
    cases: list[tuple[list[str], str]] = [
        (["detect", str(tmp_path / "nope.nii.gz"), *model, "-o", "o"], "input not found"),
        (
            ["detect", img, "--arch", "gpunet", "--dim", "3", "-o", "o", "--weights", "x.pt"],
            "weights not found",
        ),
        (
            [
                "detect",
                img,
                "--arch",
                "gpunet",
                "--dim",
                "3",
                "--width",
                "4",
                "--weights",
                weights,
                "-o",
                "o",
            ],
            "do not fit the model",
        ),
        (["detect", img, "--arch", "gpunet", "--dim", "2", "-o", "o"], "for this 2D model"),
        (["detect", img, "-o", "o"], "no model"),
        (["detect", img, "--model", "no_such_module:f", "-o", "o"], "cannot import"),
        (["detect", img, *model, "--method", "magic", "-o", "o"], "unknown --method 'magic'"),
        (["detect", img, *model, "--n", "many", "-o", str(tmp_path / "o")], "--n must be"),
        (["evaluate", str(tmp_path / "none"), "--targets", "t.csv"], "detections not found"),
        (["train", img, "--counts", str(tmp_path / "c.csv"), "-o", "r"], "--counts not found"),
    ]
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    cases.append((["detect", str(bad), *model, "-o", str(tmp_path / "o")], "cannot read"))
    spec = tmp_path / "run"
    spec.mkdir()
    (spec / "model.json").write_text('{"format": "wsdet.cli.model/1", "arch": "resnet"}')
    (spec / "best.pt").write_bytes(b"")
    cases.append(
        (["detect", img, "--weights", str(spec / "best.pt"), "-o", "o"], "unknown architecture")
    )
    for argv, expected in cases:
        argv = [str(tmp_path / a) if a in ("o", "r") else a for a in argv]
        code, _, err = run(argv, capsys)
        assert code == 1, argv
        assert expected in one_error_line(err), (argv, err)
    with pytest.raises(UserError, match="input not found"):  # --debug: the traceback
        main(["detect", str(tmp_path / "nope.nii.gz"), *model, "-o", "o", "--debug"])
    with pytest.raises(SystemExit) as exc:  # argparse: unknown architecture name
        main(["detect", img, "--arch", "resnet", "-o", "o"])
    assert exc.value.code == 2


def test_console_script_and_module_run(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "wsdet", "--help"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and "attention" in res.stdout and "evaluate" in res.stdout
    script = Path(sys.executable).parent / "wsdet"
    if not script.exists():
        pytest.skip("the wsdet console script is not installed in this environment")
    res = subprocess.run(
        [str(script), "evaluate", str(tmp_path / "x.csv"), "--targets", "t.csv"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and res.stderr.startswith("wsdet: error: detections not found")


# ----------------------------------------------------------------------------- docs, examples
@pytest.mark.parametrize("name", ["example_2d.py", "example_nifti_3d.py", "example_evaluate.py"])
def test_examples_run_at_smoke_size(name: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    module = runpy.run_path(str(ROOT / "examples" / name), run_name="example")
    assert module["main"](["--smoke", "--out", str(tmp_path / "out")]) == 0
    assert any((tmp_path / "out").iterdir())
