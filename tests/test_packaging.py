"""The releasable package: wheel and sdist contents, metadata, version, missing extras."""

from __future__ import annotations

import importlib.metadata
import io
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import wsdet
from wsdet.train import TrainConfig, Trainer, _Progress

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SKIP_DIRS = {".git", ".venv", "site", "runs", "build", "dist", "demo_out", "__pycache__"}
TOP_FILES = {"pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "mkdocs.yml", "Makefile"}
TOP_FILES |= {"CHANGELOG.md"}
SDIST_DIRS = ("wsdet", "tests", "docs", "benchmarks", "examples")


def _setuptools_ok() -> bool:
    try:
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return major >= 77


needs_setuptools = pytest.mark.skipif(
    not _setuptools_ok(), reason="building needs setuptools >= 77 (pip install 'wsdet[test]')"
)


def _source_files(root: Path) -> set[str]:
    """The files a source distribution should carry: the package, what its tests read, and
    the build files (caches, virtual environments and build output left out)."""
    found = {name for name in TOP_FILES if (root / name).is_file()}
    for top in SDIST_DIRS:
        for path in (root / top).rglob("*"):
            rel = path.relative_to(root)
            if path.is_file() and not SKIP_DIRS & set(rel.parts) and path.suffix != ".pyc":
                found.add(rel.as_posix())
    return found


def _copy_source(dest: Path) -> set[str]:
    files = _source_files(ROOT)
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, dest / rel)
    return files


def _backend(hook: str, src: Path, out: Path) -> tuple[str, str]:
    """Run a setuptools PEP 517 hook in a fresh process (offline, no isolation)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = f"from setuptools import build_meta as b; print(b.{hook}({str(out)!r}))"
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=src, env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1], res.stdout + res.stderr


def _warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if "warning" in line.lower()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if not _setuptools_ok():
        pytest.skip("building needs setuptools >= 77 (pip install 'wsdet[test]')")
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("dist")
    files = _copy_source(src)
    wheel, wheel_log = _backend("build_wheel", src, out)
    sdist, sdist_log = _backend("build_sdist", src, out)
    return {
        "files": files,
        "wheel": out / wheel,
        "sdist": out / sdist,
        "logs": wheel_log + sdist_log,
    }


@needs_setuptools
def test_wheel_holds_the_package_and_nothing_else(built: dict[str, object]) -> None:
    wheel = built["wheel"]
    assert isinstance(wheel, Path)
    version = PYPROJECT["project"]["version"]
    assert wheel.name == f"wsdet-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"wsdet-{version}.dist-info/METADATA").decode()
        entry_points = z.read(f"wsdet-{version}.dist-info/entry_points.txt").decode()
    files = built["files"]
    assert isinstance(files, set)
    package = {f for f in files if f.startswith("wsdet/")}
    assert package and "wsdet/py.typed" in package and "wsdet/__init__.py" in package
    dist_info = {n for n in names if n.startswith(f"wsdet-{version}.dist-info/")}
    assert names - dist_info == package  # every module and py.typed; no tests, docs, caches
    assert f"wsdet-{version}.dist-info/licenses/LICENSE" in dist_info
    assert "License-Expression: Apache-2.0" in meta and "License-File: LICENSE" in meta
    assert "Project-URL: Documentation, https://wsdet.github.io/wsdet/" in meta
    assert "Classifier: Typing :: Typed" in meta and "Requires-Python: >=3.10" in meta
    assert "wsdet = wsdet.cli:main" in entry_points
    assert "Provides-Extra: docs" in meta


@needs_setuptools
def test_sdist_holds_what_its_tests_need(built: dict[str, object]) -> None:
    import tarfile

    sdist = built["sdist"]
    assert isinstance(sdist, Path)
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    files = built["files"]
    assert isinstance(files, set)
    missing = sorted(files - names)
    assert not missing, f"the sdist lacks {missing[:10]}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert {"docs/tutorials/mnist_2d.md", "benchmarks/bench_metrics.py"} <= names


@needs_setuptools
def test_building_gives_no_warnings(built: dict[str, object]) -> None:
    logs = built["logs"]
    assert isinstance(logs, str)
    assert not _warnings(logs), _warnings(logs)


def test_licence_and_metadata_in_pyproject() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert any(r.startswith("setuptools>=77") for r in PYPROJECT["build-system"]["requires"])
    assert set(project["urls"]) >= {"Homepage", "Documentation", "Repository", "Changelog"}
    tested = f"Programming Language :: Python :: {sys.version_info.major}.{sys.version_info.minor}"
    assert tested in project["classifiers"]


def test_version_comes_from_the_installed_metadata() -> None:
    assert wsdet.__version__ == importlib.metadata.version("wsdet")
    assert wsdet.__version__ == PYPROJECT["project"]["version"]


def test_progress_bar_without_tqdm_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError) as info:
        _Progress("bar", total=3, start=0, log_every=1)
    assert str(info.value) == "progress='bar' needs tqdm: pip install 'wsdet[progress]'"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_default_progress_shows_when_nothing_is_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No terminal, no logging handler: the epoch lines are printed to stderr."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    logger = logging.getLogger("wsdet.train")
    monkeypatch.setattr(logger, "handlers", [])
    monkeypatch.setattr(logger, "propagate", False)
    assert TrainConfig().progress == "auto"
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8.0) % 3
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(2, 1),
    )
    Trainer(net, TrainConfig(max_epochs=3, log_every=2, batch_size=4)).fit((x, y), (x, y))
    lines = sys.stderr.getvalue().splitlines()  # type: ignore[attr-defined]
    assert [line.split(":")[0] for line in lines] == ["epoch 0", "epoch 1"], lines


def test_auto_progress_is_a_bar_in_jupyter(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setitem(sys.modules, "ipykernel", type(sys)("ipykernel"))
    progress = _Progress("auto", total=2, start=0, log_every=1)
    try:
        assert progress.mode == "bar" and progress.bar is not None
    finally:
        progress.close()


def test_auto_progress_logs_where_logging_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    logger = logging.getLogger("wsdet.train")
    handler, level = logging.NullHandler(), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        assert _Progress("auto", total=2, start=0, log_every=1).mode == "log"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
