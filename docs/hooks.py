"""MkDocs hooks of the documentation site (``hooks:`` in ``mkdocs.yml``).

- The **API reference** is generated: one page per public module of ``wsdet`` (every module
  whose dotted path has no component starting with ``_``), laid out like the package
  (``api/wsdet/metrics/froc.md``), plus an overview. The pages exist only in the build;
  :func:`on_config` adds them to the navigation and :func:`on_files` creates them.
- The **home page** is ``README.md``: :func:`on_page_markdown` puts its text in place of
  ``docs/index.md`` and turns its Markdown links to the site (``[text](SITE_URL...)``) into
  links between pages, so that the strict build checks them (bare ``<SITE_URL>`` stays).
- After the build, :func:`on_post_build` fails it when a public class or function of
  ``wsdet`` has no entry in the API reference (or no docstring).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe
from griffe_roles import SphinxRoles, is_public_path, rendered_path
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "wsdet"
SITE_URL = "https://wsdet.github.io/wsdet/"
API = "API reference"


def public_modules(root: Path = ROOT) -> list[str]:
    """Dotted names of the public modules and packages of wsdet, sorted."""
    names = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if is_public_path(name):
            names.append(name)
    return sorted(names)


def page_uri(module: str, packages: set[str]) -> str:
    """``api/wsdet/metrics/index.md`` for a package, ``api/wsdet/metrics/froc.md`` else."""
    parts = module.split(".")
    if module in packages:
        return "/".join(["api", *parts, "index.md"])
    return "/".join(["api", *parts]) + ".md"


def _packages(modules: list[str]) -> set[str]:
    return {m for m in modules if (ROOT / Path(*m.split(".")) / "__init__.py").is_file()}


_GRIFFE: dict[str, Any] = {}


def _api() -> Any:
    """wsdet as griffe sees it (static analysis, the same loader as mkdocstrings)."""
    if "pkg" not in _GRIFFE:
        loader = griffe.GriffeLoader(
            extensions=griffe.load_extensions(SphinxRoles),
            search_paths=[str(ROOT)],
            docstring_parser="numpy",
        )
        _GRIFFE["pkg"] = loader.load(PACKAGE)
        loader.resolve_aliases(implicit=False, external=False)
        _GRIFFE["collection"] = loader.modules_collection
    return _GRIFFE["collection"]


def _summary(obj: Any) -> str:
    target = obj.final_target if obj.is_alias else obj
    text = target.docstring.value.strip() if target.docstring else ""
    first = text.split("\n\n", 1)[0].replace("\n", " ")
    return first.replace("|", "\\|")


def _nav(modules: list[str], packages: set[str]) -> list[Any]:
    def entries(prefix: str) -> list[Any]:
        out: list[Any] = []
        children = [m for m in modules if m.rsplit(".", 1)[0] == prefix and m != prefix]
        for child in children:
            if child in packages:
                out.append({child: [page_uri(child, packages), *entries(child)]})
            else:
                out.append({child: page_uri(child, packages)})
        return out

    return ["api/index.md", {PACKAGE: page_uri(PACKAGE, packages)}, *entries(PACKAGE)]


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    modules = public_modules()
    nav = [item for item in config.nav or [] if not (isinstance(item, dict) and API in item)]
    position = next(
        (i for i, item in enumerate(nav) if isinstance(item, dict) and "Benchmarks" in item),
        len(nav),
    )
    nav.insert(position, {API: _nav(modules, _packages(modules))})
    config.nav = nav
    return config


def _package_page(module: str, collection: Any, packages: set[str]) -> str:
    """The package's docstring, the objects it defines or re-exports from private modules,
    and a table of the names it re-exports from its public modules."""
    pkg = collection[module]
    here, elsewhere = [], []
    for name, member in pkg.members.items():
        if not member.is_public or (member.is_alias and member.target_path.startswith("typing")):
            continue
        path = rendered_path(f"{module}.{name}", collection)
        if path == f"{module}.{name}":
            here.append(name)
        elif path is not None and not member.is_module:
            elsewhere.append((name, path, member))
    lines = [f"::: {module}", "    options:", f"      members: {here or 'false'}", ""]
    if elsewhere:
        lines += [
            f"Names exported by `{module}` and documented in its modules:",
            "",
            "| name | summary |",
            "| --- | --- |",
        ]
        lines += [f"| [`{n}`][{path}] | {_summary(member)} |" for n, path, member in elsewhere]
    subs = [m for m in sorted(packages | set(public_modules())) if m.rsplit(".", 1)[0] == module]
    if subs:
        lines += ["", "Modules:", ""]
        lines += [f"- [`{m}`][{m}]: {_summary(collection[m])}" for m in subs if m != module]
    return "\n".join(lines) + "\n"


def _overview(modules: list[str], collection: Any) -> str:
    lines = [
        "# API reference",
        "",
        "One page per public module, generated from the numpydoc docstrings (by",
        "`docs/hooks.py` and mkdocstrings). Modules whose names start with `_` are private;",
        "packages list the names they re-export, so `from wsdet.metrics import fauc` and",
        "`wsdet.metrics.froc.fauc` lead to the same entry.",
        "",
        "| module | summary |",
        "| --- | --- |",
    ]
    lines += [f"| [`{m}`][{m}] | {_summary(collection[m])} |" for m in modules]
    return "\n".join(lines) + "\n"


def on_files(files: Files, config: MkDocsConfig) -> Files:
    modules = public_modules()
    packages = _packages(modules)
    collection = _api()
    files.append(File.generated(config, "api/index.md", content=_overview(modules, collection)))
    for module in modules:
        if module in packages:
            content = _package_page(module, collection, packages)
        else:
            content = f"::: {module}\n"
        files.append(File.generated(config, page_uri(module, packages), content=content))
    return files


_SITE_LINK = re.compile(r"\]\(" + re.escape(SITE_URL) + r"([^)\s]*)\)")  # [text](SITE_URL...)


def site_link_to_page(target: str, docs_dir: Path) -> str:
    """A link into the site (the part after :data:`SITE_URL`) as a link between pages."""
    path, hash_, anchor = target.partition("#")
    if path == "" or path.endswith("/"):
        stem = path.rstrip("/")
        page = f"{stem}.md" if stem and (docs_dir / f"{stem}.md").is_file() else None
        if page is None:
            page = f"{stem}/index.md" if stem else "index.md"
        path = page
    return f"{path}{hash_}{anchor}"


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    docs_dir = Path(config.docs_dir)
    return _SITE_LINK.sub(lambda m: f"]({site_link_to_page(m.group(1), docs_dir)})", readme)


def public_objects(collection: Any | None = None) -> dict[str, str | None]:
    """Every public class and function of every public module, by the path a user imports
    it from, mapped to the identifier of its API entry (None: nothing renders it)."""
    collection = collection if collection is not None else _api()
    found: dict[str, str | None] = {}
    for module in public_modules():
        for name, member in collection[module].members.items():
            if not member.is_public:
                continue
            try:
                target = member.final_target if member.is_alias else member
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue  # an import from outside wsdet
            if not target.path.startswith(PACKAGE + ".") or not (
                target.is_class or target.is_function
            ):
                continue
            found[f"{module}.{name}"] = rendered_path(f"{module}.{name}", collection)
    return found


def on_post_build(config: MkDocsConfig) -> None:
    site = Path(config.site_dir)
    ids: set[str] = set()
    for html in (site / "api").rglob("*.html"):
        ids.update(re.findall(r'id="(wsdet[\w.]*)"', html.read_text(encoding="utf-8")))
    missing = sorted(
        name for name, entry in public_objects().items() if entry is None or entry not in ids
    )
    if missing:
        raise PluginError(
            f"{len(missing)} public objects are missing from the API reference (no docstring, "
            f"or not rendered): {', '.join(missing)}"
        )
