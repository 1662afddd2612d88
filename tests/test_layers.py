"""Imports follow the data flow: lower layers never import higher ones, results/ depends only
on the bottom modules, and the bundled sandbox uses nothing of the client. Read from the source
with ast, so a new import that breaks the layering fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "bulk_unenroll"
BOTTOM = {"models", "errors", "events", "keys", "limits", "config", "scrub", "text", "platforms"}
"""Modules every layer may use: data, the root exception, events, settings, formatters."""
MAY_IMPORT = {
    "bottom": {"bottom"},
    "input": {"bottom", "input"},
    "results": {"bottom", "results"},
    "api": {"bottom", "api"},
    "plan": {"bottom", "input", "results"},
    "send": {"bottom", "input", "plan", "results", "api", "send"},
    # restore and verify read a results file through results/ (records.latest), as report does.
    "restore": {"bottom", "input", "plan", "results", "api", "send", "restore"},
    "verify": {"bottom", "api", "results", "page", "verify"},
    "report": {"bottom", "input", "plan", "results"},
    # The report page (report --html): figures from a results file, written whole by report.
    "page": {"bottom", "results", "report", "page"},
    "sandbox": {"bottom", "input"},
    "render": {"bottom", "input", "plan", "results", "api", "send", "report", "restore", "render"},
}
"""Each layer and the layers it may import. `cli/` and the package's `__init__`/`__main__`
sit on top and may import anything."""
TOP = {"cli", "__init__", "__main__"}


PRESENTATION = {"restore.show"}
"""Modules inside an operation's folder that show it on the terminal: render's layer."""


def layer_of(module: str) -> str:
    """`api.session` -> `api`; a bottom module's layer is `bottom`."""
    if module in PRESENTATION:
        return "render"
    first = module.split(".")[0]
    return "bottom" if first in BOTTOM else first


def imported(path: Path) -> set[str]:
    """The package's modules `path` imports, relative to the package (`api.client`)."""
    here = path.relative_to(PACKAGE).parent.parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[: len(here) - (node.level - 1)])
            if node.module:
                found.add(".".join([*base, node.module]))
            else:  # `from . import client`
                found.update(".".join([*base, alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bulk_unenroll"):
            found.add((node.module or "").removeprefix("bulk_unenroll").lstrip("."))
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("bulk_unenroll.")
                for a in node.names
                if a.name != "bulk_unenroll" and a.name.startswith("bulk_unenroll")
            )
    return {name for name in found if name}


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found.append((".".join(parts), path))
    return found


@pytest.mark.parametrize(("module", "path"), modules(), ids=[name for name, _ in modules()])
def test_a_module_imports_only_its_own_and_lower_layers(module: str, path: Path) -> None:
    layer = layer_of(module)
    if layer in TOP:
        return  # the top may import anything
    allowed = MAY_IMPORT[layer]
    wrong = sorted(name for name in imported(path) if layer_of(name) not in allowed)
    assert not wrong, f"{module} ({layer}) imports {wrong}; it may import only {sorted(allowed)}"


def test_the_reader_of_imports_sees_every_kind_of_import_statement() -> None:
    """The check above is only as good as `imported`: relative, absolute and package imports."""
    nested = PACKAGE / "send" / "runner.py"
    assert {"api", "api.session", "results.journal", "send.claims"} <= imported(nested)
    assert "api.client" not in imported(PACKAGE / "report.py")
    assert {"cli"} == imported(PACKAGE / "__main__.py")


def test_every_layer_of_the_package_is_known() -> None:
    """A new folder or top-level module gets a place in MAY_IMPORT before it gets code."""
    unknown = {layer_of(m) for m, _ in modules()} - set(MAY_IMPORT) - TOP
    assert not unknown, f"add {sorted(unknown)} to MAY_IMPORT"
