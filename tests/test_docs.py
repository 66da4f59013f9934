"""The documentation runs: every ``python`` block of README.md and docs/, page by page.

The fence convention (``docs/run_page.py``, ``docs/contributing_docs.md``): ``python`` blocks
run in order in one namespace per page; ``bash``/``console``/``sh``/``shell`` blocks are shell
commands (their ``wsdet ...`` lines run through the command's ``main``); ``text`` blocks are
output. Any other fence, or one without an info string, fails :func:`test_every_fence_is_marked`.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "docs" / "run_page.py").is_file():  # e.g. an unpacked wheel
    pytest.skip("docs/ is not part of this tree", allow_module_level=True)

_spec = importlib.util.spec_from_file_location("run_page", ROOT / "docs" / "run_page.py")
assert _spec is not None and _spec.loader is not None
run_page = importlib.util.module_from_spec(_spec)
sys.modules["run_page"] = run_page
_spec.loader.exec_module(run_page)

PAGES = run_page.pages(ROOT)


def _blocks(page: Path) -> list[run_page.Block]:
    return run_page.blocks(page.read_text(encoding="utf-8"))


def _runs_code(page: Path) -> bool:
    return any(
        b.lang in run_page.PYTHON or (b.lang in run_page.SHELL and "\nwsdet " in "\n" + b.code)
        for b in _blocks(page)
    )


RUNNABLE = [p for p in PAGES if _runs_code(p)]
# Pages whose smoke run takes more than 20 s on the 2-core development machine.
SLOW: set[str] = set()
# What some pages must leave behind besides their pictures, and how many `wsdet` lines they run.
WRITES = {"docs/nifti.md": ["results/case00.mrk.json", "froc.png", "case00_python.mrk.json"]}
WSDET_LINES = {"docs/nifti.md": 4}


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _mnist_missing() -> bool:
    from wsdet.data.mnist import find_mnist_files

    try:
        find_mnist_files(None, "test")
    except (FileNotFoundError, OSError, ValueError):
        return True
    return False


def test_pages_are_found() -> None:
    names = {_name(p) for p in PAGES}
    assert {"README.md", "docs/quickstart.md", "docs/tutorials/mnist_2d.md"} <= names
    assert len(RUNNABLE) >= 12


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_fence_is_marked(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    found = _blocks(page)
    unmarked = [(b.line, b.lang or "(none)") for b in found if b.lang not in run_page.KNOWN]
    assert not unmarked, f"{_name(page)}: fences without a known info string: {unmarked}"
    # the parser and a plain count of opening fences agree
    assert sum(b.lang == "python" for b in found) == len(re.findall(r"^\s*```python\b", text, re.M))


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=[pytest.mark.slow] if _name(p) in SLOW else []) for p in RUNNABLE],
    ids=_name,
)
def test_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = page.read_text(encoding="utf-8")
    if "WSDET_MNIST_DIR" in text and _mnist_missing():
        pytest.skip("the page needs the MNIST files (WSDET_MNIST_DIR)")
    monkeypatch.setenv(run_page.SMOKE_VAR, "1")
    monkeypatch.setattr(sys, "argv", [str(page)])
    # a page may register attention methods: the registry is restored afterwards
    from wsdet.attention import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    found = sum(b.lang in run_page.PYTHON for b in _blocks(page))
    run = run_page.run_page(page, tmp_path)
    assert run.python_blocks == found and run.python_run == found
    assert run.wsdet_lines >= WSDET_LINES.get(_name(page), 0)
    for path in WRITES.get(_name(page), []):
        assert (tmp_path / path).is_file(), path
    if page.parent.name == "tutorials":  # a tutorial's pictures are written by its code
        wanted = run_page.page_pictures(page)
        assert run.pictures == wanted, f"pictures the page's code did not write: {wanted}"
        for picture in wanted:
            assert (page.parent / page.stem / picture).is_file(), f"{picture} is not committed"


def test_runner_counts_and_reports(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n```text\nout\n```\n\n  ```python\n  y = x + 1\n  ```\n"
        "\n```bash\npip install wsdet\n```\n\n![p](page/a.png)\n"
    )
    run = run_page.run_page(page, tmp_path)
    assert (run.python_blocks, run.python_run, run.wsdet_lines) == (2, 2, 0)
    assert run_page.page_pictures(page) == ["a.png"] and run.pictures == []
    page.write_text("```python\nx = 1\n```\n\n```python\nraise ValueError('boom')\n```\n")
    with pytest.raises(AssertionError, match=r"page.md:5 \(python block\) failed"):
        run_page.run_page(page, tmp_path)
    page.write_text("```\nunmarked\n```\n")
    assert [b.lang for b in run_page.blocks(page.read_text())] == [""]


def test_readme_links_are_absolute() -> None:
    """README.md is also the package's page on the index, where relative links break; its
    links into the site are made relative again for the site's home page (docs/hooks.py)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"<(https?://[^>]+)>", text)
    assert len(links) >= 10
    assert all(link.startswith("https://") for link in links), links
    site = re.search(r"^site_url: (\S+)$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert site is not None
    assert sum(link.startswith(site.group(1)) for link in links) >= 10
    hooks = (ROOT / "docs" / "hooks.py").read_text(encoding="utf-8")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'SITE_URL = "{site.group(1)}"' in hooks
    assert f'Documentation = "{site.group(1)}"' in pyproject


def test_site_hooks_cover_the_public_api() -> None:
    """What docs/hooks.py generates and checks (the strict build runs it for real)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("griffe")
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import griffe_roles
        import hooks
    finally:
        sys.path.remove(str(ROOT / "docs"))
    modules = hooks.public_modules()
    assert {"wsdet", "wsdet.viz", "wsdet.metrics.froc", "wsdet.data.mnist"} <= set(modules)
    assert not [m for m in modules if "._" in m or m.endswith("__main__")]
    objects = hooks.public_objects()
    assert objects["wsdet.find_peaks"] == "wsdet.detection.find_peaks"
    assert objects["wsdet.models.ConvReLU"] == "wsdet.models.ConvReLU"  # private module
    assert objects["wsdet.viz.plot_froc"] == "wsdet.viz.plot_froc"
    assert len(set(objects.values())) >= 150 and None not in objects.values()
    docs = ROOT / "docs"
    assert hooks.site_link_to_page("tutorials/mnist_2d/", docs) == "tutorials/mnist_2d.md"
    assert hooks.site_link_to_page("metrics/#semantics", docs) == "metrics.md#semantics"
    assert hooks.site_link_to_page("", docs) == "index.md"
    assert hooks.site_link_to_page("results/mnist_fig3.png", docs) == "results/mnist_fig3.png"
    text = "Intro:\n\n>>> 1 + 1\n2\n\nafter"
    assert griffe_roles.fence_doctests(text) == "Intro:\n\n```pycon\n>>> 1 + 1\n2\n```\n\nafter"
