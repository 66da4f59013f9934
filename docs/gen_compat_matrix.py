"""Regenerate the compatibility matrix of ``docs/bring_your_own_model.md``.

The table is rendered from the expected outcome of every cell, kept as data in
``tests/compat_models.py`` (the same data ``tests/test_compat_matrix.py`` asserts)::

    python docs/gen_compat_matrix.py           # rewrite the table in the page
    python docs/gen_compat_matrix.py --check   # exit 1 if the page's table is stale
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "bring_your_own_model.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report a stale table")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    compat = importlib.import_module("compat_models")
    text = PAGE.read_text(encoding="utf-8")
    new = compat.update_page(text)
    if new == text:
        print(f"{PAGE.relative_to(ROOT)} is up to date")
        return 0
    if args.check:
        print(f"{PAGE.relative_to(ROOT)} is stale: run `python docs/gen_compat_matrix.py`")
        return 1
    PAGE.write_text(new, encoding="utf-8")
    print(f"rewrote the compatibility matrix of {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
