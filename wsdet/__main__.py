"""``python -m wsdet``: the ``wsdet`` command line (see :mod:`wsdet.cli`)."""

from wsdet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
