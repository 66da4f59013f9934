"""Griffe extension of the documentation site: numpydoc roles in docstrings become links.

wsdet's docstrings follow numpydoc and use Sphinx roles (:func:`fauc`, :class:`~wsdet.io.Volume`,
:meth:`Trainer.fit`, :mod:`wsdet.metrics`) and reStructuredText literal blocks (a paragraph
ending in ``::``). The site renders docstrings as Markdown, so before rendering this extension
rewrites

- each role into a Markdown cross-reference, ``[`fauc`][wsdet.metrics.froc.fauc]``, when the
  name resolves (as Python would, from the docstring's own scope) to an object that the API
  reference renders (:func:`rendered_path`); into plain code otherwise (``torch.nn.Module``,
  private helpers), so that no link can dangle;
- a closing ``::`` into ``:`` (the indented block below it is code in both languages);
- each doctest (lines from ``>>>`` to the next blank line) into a fenced ``pycon`` block, so
  that it shows as code wherever it stands (the doctests themselves run in ``make test``).

Loaded by ``mkdocs.yml`` (``extensions: [docs/griffe_roles.py]``); ``docs/hooks.py`` uses
:func:`rendered_path` to decide which objects each API page renders, so the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj):`(~?)([^`<>]+?)(?:\(\))?`")
LITERAL = re.compile(r"(\S)::\n(\s*\n)")


def is_public_path(path: str) -> bool:
    """No component of the dotted path starts with an underscore."""
    return not any(part.startswith("_") for part in path.split("."))


def rendered_path(path: str, collection: Any) -> str | None:
    """The identifier under which the API reference renders the object at ``path``, or None.

    Public modules have a page each; a public class or function with a docstring is rendered
    on the page of the public module that defines it, or, when it is defined in a private
    module (``wsdet.models._blocks``), on the page of the package that re-exports it.
    """
    try:
        obj = collection[path]
    except (KeyError, ValueError, griffe.AliasResolutionError):
        return None
    try:
        target = obj.final_target if obj.is_alias else obj
        canonical = target.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    if not (target.is_module or target.has_docstring):
        return None
    for candidate in (canonical, path):
        if is_public_path(candidate):
            if target.is_module:
                return candidate
            parent_path, name = candidate.rsplit(".", 1)
            parent = collection[parent_path]
            if not parent.is_module and rendered_path(parent_path, collection) is None:
                continue
            if name in parent.members and parent.members[name].is_public:
                return candidate
    return None


def _resolve(name: str, obj: Any, collection: Any) -> str | None:
    head, _, rest = name.partition(".")
    candidates = [name] if name.startswith("wsdet") else []
    scope = obj
    while scope is not None:
        try:
            full = scope.resolve(head)
        except (griffe.NameResolutionError, KeyError):
            pass
        else:
            candidates.append(f"{full}.{rest}" if rest else full)
        scope = scope.parent
    for path in candidates:
        found = rendered_path(path, collection)
        if found is not None:
            return found
    return None


def fence_doctests(text: str) -> str:
    """Wrap each doctest block of a docstring in a fenced ``pycon`` code block."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.lstrip().startswith(">>>"):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        block = []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
    return "\n".join(out)


def _walk(obj: Any) -> Iterator[Any]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class SphinxRoles(griffe.Extension):
    """Rewrite roles and literal-block markers in every docstring of the ``wsdet`` package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "wsdet":
            return
        collection = loader.modules_collection
        for obj in _walk(pkg):
            doc = obj.docstring
            if doc is None:
                continue

            def link(match: re.Match[str], obj: Any = obj) -> str:
                short, name = match.group(1), match.group(2).strip()
                shown = name.rsplit(".", 1)[-1] if short else name
                path = _resolve(name, obj, collection)
                return f"[`{shown}`][{path}]" if path else f"`{shown}`"

            doc.value = fence_doctests(LITERAL.sub(r"\1:\n\2", ROLE.sub(link, doc.value)))
