"""Run the code of a documentation page as one script, as the tests do.

The convention for fenced code blocks in ``README.md`` and ``docs/`` (see
``docs/contributing_docs.md``); every fence must carry one of these info strings:

- ``python``: runs. All ``python`` blocks of a page run in order, in one namespace, in an
  empty working folder, so a block may use what the blocks above it defined;
- ``bash`` (also ``console``, ``sh``, ``shell``): shell commands, not run, except the lines
  that start with ``wsdet``, which run through ``wsdet.cli.main`` and must exit with 0;
- ``text``: output, diagrams, file contents: never run.

``tests/test_docs.py`` runs every page with the environment variable ``WSDET_DOCS_SMOKE=1``
(tutorials shrink their data and training with it) and checks that every ``python`` block
ran and that every picture a tutorial shows from its own folder (``tutorials/mnist_2d.md``
shows ``mnist_2d/*.png``) was written by the tutorial's code.

Without ``--smoke`` this script runs a page at full size in a temporary folder and copies
the pictures it shows into the page's folder::

    python docs/run_page.py docs/tutorials/mnist_2d.md          # rewrites docs/tutorials/mnist_2d/
    python docs/run_page.py docs/tutorials/mnist_2d.md --smoke  # what the tests run
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = {"python"}
SHELL = {"bash", "console", "sh", "shell"}
OUTPUT = {"text"}
KNOWN = PYTHON | SHELL | OUTPUT
SMOKE_VAR = "WSDET_DOCS_SMOKE"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<info>[^\n]*)$")
PICTURE = re.compile(r"!\[[^\]]*\]\((?P<src>[^)\s]+)")


@dataclass
class Block:
    """One fenced code block: its info string's first word, code and first line (1-based)."""

    lang: str
    code: str
    line: int


@dataclass
class Run:
    """What running a page did."""

    python_blocks: int = 0
    python_run: int = 0
    wsdet_lines: int = 0
    seconds: float = 0.0
    pictures: list[str] = field(default_factory=list)


def pages(root: Path = ROOT) -> list[Path]:
    """``README.md`` and every Markdown page under ``docs/``, sorted."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order (indented fences included)."""
    out: list[Block] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m.group("indent"), m.group("fence")
        lang = m.group("info").strip().split(" ")[0].split("{")[0]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        out.append(Block(lang, "\n".join(body) + "\n", i + 1))
        i = j + 1
    return out


def page_pictures(page: Path) -> list[str]:
    """Pictures the page shows from its own folder (``<page stem>/...``), as file names."""
    prefix = page.stem + "/"
    found = PICTURE.findall(page.read_text(encoding="utf-8"))
    return sorted({src[len(prefix) :] for src in found if src.startswith(prefix)})


def run_page(page: Path, workdir: Path) -> Run:
    """Run the page's ``python`` blocks and ``wsdet`` command lines in ``workdir``.

    Raises AssertionError naming the page and block when a block fails or a ``wsdet``
    command exits with a non-zero code.
    """
    from wsdet.cli import main

    name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
    run = Run()
    namespace: dict[str, object] = {"__name__": "__docs__"}
    cwd = Path.cwd()
    start = time.perf_counter()
    os.chdir(workdir)
    try:
        for block in blocks(page.read_text(encoding="utf-8")):
            where = f"{name}:{block.line}"
            if block.lang in PYTHON:
                run.python_blocks += 1
                try:
                    exec(compile(block.code, where, "exec"), namespace)
                except Exception as err:
                    raise AssertionError(f"{where} ({block.lang} block) failed: {err!r}") from err
                run.python_run += 1
            elif block.lang in SHELL:
                for line in block.code.replace("\\\n", " ").splitlines():
                    if line.startswith("wsdet "):
                        code = main(shlex.split(line, comments=True)[1:])
                        assert code == 0, f"{where}: `{line}` exited with {code}"
                        run.wsdet_lines += 1
    finally:
        os.chdir(cwd)
    run.seconds = time.perf_counter() - start
    run.pictures = [p for p in page_pictures(page) if (workdir / p).is_file()]
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("--smoke", action="store_true", help=f"set {SMOKE_VAR}=1 (tiny run)")
    args = parser.parse_args(argv)
    page = args.page.resolve()
    if args.smoke:
        os.environ[SMOKE_VAR] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        run = run_page(page, Path(tmp))
        wanted = page_pictures(page)
        print(
            f"{page.name}: {run.python_run}/{run.python_blocks} python blocks, "
            f"{run.wsdet_lines} wsdet commands, {run.seconds:.1f} s"
        )
        if not args.smoke and wanted:
            folder = page.parent / page.stem
            folder.mkdir(exist_ok=True)
            for picture in wanted:
                shutil.copyfile(Path(tmp) / picture, folder / picture)
                print(f"wrote {folder / picture}")
        missing = sorted(set(wanted) - set(run.pictures))
        if missing:
            print(f"the page shows pictures its code did not write: {missing}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
