"""The import contract: modules import only their own layer and the layers below.

The flow of a run is policy -> plan -> spawn -> supervisor -> process/result
-> run/pipeline -> cli, over a kernel layer that knows nothing of anyio or
of the policy.  A module-level import of a higher layer (a back-edge) makes
the lower module load the upper one and tangles what each may assume, so
this test fails on one and names it.  Imports under ``if TYPE_CHECKING:``
and inside functions are not edges: they load nothing at import time.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import pytest

PACKAGE = "asyncsandlock"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE

#: Lowest first.  A name stands for the module and everything under it;
#: every module of the package must be in exactly one layer.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Enums and exceptions that every layer speaks; they import nothing of ours.
    ("vocabulary", ("_types", "_exceptions")),
    # Syscalls, BPF, Landlock, notification ioctls, capabilities: no anyio, no Sandbox.
    ("kernel", ("_core", "_ffi_build", "_kernel", "_holes", "_identity")),
    # anyio-aware primitives over fds and tasks, used by the runtime layers.
    ("support", ("_fd", "_background", "_standby", "_notify_loop", "_pacing", "_streams",
                 "_watch", "_cgroup", "_rtnl", "_publish")),
    # The policy as validated data, and what users hand it.
    ("policy", ("_validate", "_groups", "_handler", "_netspec", "_system_paths", "_refusal",
                "_inputs", "_filespec", "_limits", "_network", "_workdir", "_policy",
                "_profiles")),
    # The built-in guards a policy gets, and what they read of a trapped call.
    ("handlers", ("handlers", "_objects", "_netfast")),
    # Policy + this kernel -> the plan, and what each subsystem enforces of it.
    ("plan", ("_enforcement", "_plan")),
    # One confined child, and the refusals met on the way.
    ("spawn", ("_spawn", "_features", "_unavailable", "_reaper", "_netns", "_netpool",
               "_linksweep")),
    ("supervisor", ("_supervisor",)),
    ("process", ("_process", "_result", "_changes", "_snapshot", "_workspace", "_pinned")),
    ("run", ("_collect", "_run", "_pipeline")),
    ("cli", ("_cli", "_check", "__main__", "")),  # "": the package itself, the public API
    # The MCP server on top of it all (issue 13).
    ("mcp", ("mcp",)),
)


def layer_of(module: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS
             ) -> tuple[int, str] | None:
    """(rank, name) of the layer holding ``module`` (a dotted name), or None."""
    rel = module.removeprefix(PACKAGE).removeprefix(".")
    for rank, (name, members) in enumerate(layers):
        for member in members:
            if rel == member or (member and rel.startswith(member + ".")):
                return rank, name
    return None


def _module_name(path: pathlib.Path, root: pathlib.Path) -> tuple[str, bool]:
    """Dotted name of ``path`` under ``root``, and whether it is a package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions, not
    under ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(handler.body for handler in node.handlers)):
                yield from _module_level(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _module_level(node.body)


def imports_of(source: str, module: str, is_package: bool,
               known: frozenset[str]) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for each module-level import of the package in ``source``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in _module_level(ast.parse(source).body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
            continue
        if node.level:
            base = package.split(".")
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            # "from . import _notify_loop" imports the submodule itself.
            yield node.lineno, sub if sub in known else target


def back_edges(root: pathlib.Path = ROOT,
               layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    """Every import of a higher layer, and every module without a layer."""
    files = sorted(root.rglob("*.py"))
    names = {path: _module_name(path, root) for path in files}
    known = frozenset(name for name, _ in names.values()) | {f"{root.name}._core"}
    problems: list[str] = []
    for path, (module, is_package) in names.items():
        here = layer_of(module, layers)
        if here is None:
            problems.append(f"{module} has no layer in LAYERS")
            continue
        edges = dict.fromkeys(imports_of(path.read_text(), module, is_package, known))
        for line, target in edges:
            if target != root.name and not target.startswith(root.name + "."):
                continue  # the standard library, anyio, cffi
            there = layer_of(target, layers)
            if there is None:
                problems.append(f"{module}:{line} imports {target}, which has no layer")
            elif there[0] > here[0]:
                problems.append(f"{module}:{line} ({here[1]}) imports {target} ({there[1]}): "
                                "a back-edge")
    return problems


def test_imports_follow_the_layers() -> None:
    problems = back_edges()
    assert not problems, "\n".join(problems)


def test_every_layer_entry_names_a_module() -> None:
    modules = {_module_name(path, ROOT)[0] for path in ROOT.rglob("*.py")}
    modules |= {f"{PACKAGE}._core"}
    for _name, members in LAYERS:
        for member in members:
            full = f"{PACKAGE}.{member}" if member else PACKAGE
            assert full in modules, f"LAYERS names {member!r}, which is not a module"


# The checker itself: a contract test that cannot fail is worthless.

_TOY_LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("low", ("low",)), ("high", ("high",)))


def _toy(tmp_path: pathlib.Path, low: str) -> pathlib.Path:
    root = tmp_path / PACKAGE
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "high.py").write_text("from . import low\n")
    (root / "low.py").write_text(low)
    return root


def test_a_back_edge_is_reported_by_name(tmp_path: pathlib.Path) -> None:
    root = _toy(tmp_path, "from .high import thing\n")
    layers = (*_TOY_LAYERS, ("top", ("",)))
    assert back_edges(root, layers) == [
        f"{PACKAGE}.low:1 (low) imports {PACKAGE}.high (high): a back-edge"]
    # The control: the same module importing downward is clean.
    (root / "low.py").write_text("import os\n")
    assert back_edges(root, layers) == []


@pytest.mark.parametrize("source", [
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .high import thing\n",
    "def later():\n    from .high import thing\n",
])
def test_type_checking_and_function_imports_are_not_edges(tmp_path: pathlib.Path,
                                                          source: str) -> None:
    root = _toy(tmp_path, source)
    assert back_edges(root, (*_TOY_LAYERS, ("top", ("",)))) == []


def test_a_module_without_a_layer_is_reported(tmp_path: pathlib.Path) -> None:
    root = _toy(tmp_path, "")
    (root / "stray.py").write_text("")
    assert back_edges(root, (*_TOY_LAYERS, ("top", ("",)))) == [
        f"{PACKAGE}.stray has no layer in LAYERS"]
