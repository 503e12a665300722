"""The import graph of the core: the CLI sits on top, nothing below imports it, and BentoML's
private modules are reached through one adapter only.

Parsed from the source with :mod:`ast`, so imports inside functions count as much as the ones
at the top of a module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "seqrec"

#: modules that may import the CLI: the CLI itself (and ``python -m seqrec``), and the docs
#: generator, which renders the CLI reference page from the click commands (it sits above the
#: CLI, never below)
ABOVE_THE_CLI = ("seqrec/cli.py", "seqrec/commands/", "seqrec/docsgen.py", "seqrec/__main__.py")
CLI_MODULES = ("seqrec.cli", "seqrec.commands")

BENTOML_ADAPTER = "seqrec/compat/bentoml_private.py"
BENTOML_PRIVATE = ("bentoml._", "_bentoml_sdk", "_bentoml_impl")


def _sources(root: Path) -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        yield rel, ast.parse(path.read_text(), filename=rel)


def _module_name(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(rel: str, tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every import in a module, relative ones resolved, and
    ``from pkg import name`` also as ``pkg.name`` (it may be a submodule)."""
    package = _module_name(rel).split(".")
    if not rel.endswith("__init__.py"):
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _is_under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_imported_modules_sees_imports_inside_functions_and_relative_ones() -> None:
    source = "def f():\n    from ..commands import serve\n    import seqrec.cli\n"
    found = {m for _, m in imported_modules("seqrec/x/y.py", ast.parse(source))}
    assert {"seqrec.commands", "seqrec.commands.serve", "seqrec.cli"} <= found


def test_no_core_module_imports_the_cli() -> None:
    """Only the CLI (``seqrec/cli.py``, ``seqrec/commands/``) imports the CLI."""
    bad = [
        f"{rel}:{line} imports {module}"
        for rel, tree in _sources(PACKAGE)
        if not rel.startswith(ABOVE_THE_CLI)
        for line, module in imported_modules(rel, tree)
        if _is_under(module, CLI_MODULES)
    ]
    assert not bad, "core modules must not import the CLI:\n" + "\n".join(bad)


def _private_bentoml_uses(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in [*names, getattr(node, "module", None) or ""]:
                if name.startswith(BENTOML_PRIVATE):
                    yield node.lineno, f"import {name}"
        elif isinstance(node, ast.keyword) and node.arg == "_model_store":
            yield node.value.lineno, "keyword _model_store"
        elif isinstance(node, ast.Constant) and node.value == "_model_store":
            yield node.lineno, "the string '_model_store'"


def test_private_bentoml_apis_only_through_the_adapter() -> None:
    """``bentoml._internal`` and the private ``_model_store`` keyword appear in
    seqrec/compat/bentoml_private.py and nowhere else (core and built-in plugins)."""
    trees = [*_sources(PACKAGE), *_sources(ROOT / "plugins"), *_sources(ROOT / "serving")]
    bad = [
        f"{rel}:{line}: {what}"
        for rel, tree in trees
        if rel != BENTOML_ADAPTER and "/tests/" not in rel
        for line, what in _private_bentoml_uses(tree)
    ]
    assert not bad, f"use {BENTOML_ADAPTER} instead:\n" + "\n".join(bad)


def test_the_adapter_is_what_the_layering_check_would_flag() -> None:
    """The check above is not vacuous: the adapter itself names a private module."""
    tree = ast.parse((ROOT / BENTOML_ADAPTER).read_text())
    assert any("_model_store" in what for _, what in _private_bentoml_uses(tree))


@pytest.mark.parametrize(
    "module",
    ["seqrec.cli", "seqrec.labels", "seqrec.bento", "seqrec.compat.bentoml_private"],
)
def test_light_modules_do_not_import_bentoml_or_torch(module: str) -> None:
    """The CLI and the label, Bento and adapter modules import BentoML and torch only when
    a command needs them (``seqrec --help`` stays fast)."""
    code = (
        f"import sys, {module}; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'bentoml', 'torch'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"
