"""The matching core imports nothing but the standard library, sortedcontainers,
msgpack and itself (DESIGN.md invariant 7; STYLE.md, layout); the type checker
alone also reads ``mypy_extensions`` (mypyc's class options, under ``if TYPE_CHECKING``).

Imports are read with ``ast`` from the source files, so an import inside a
function or under ``if TYPE_CHECKING`` counts as well; calling ``__import__``
or ``importlib.import_module`` is refused outright, since it would hide one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import engine.core

CORE_DIR = Path(engine.core.__file__).parent
CORE_PACKAGE = "engine.core"
THIRD_PARTY_ALLOWED = {"sortedcontainers", "msgpack"}
# read by the type checker (mypyc's class options, engine/core/_mypyc.py) and never
# imported at run time: allowed only under ``if TYPE_CHECKING:``
TYPE_CHECKING_ONLY = {"mypy_extensions"}


def _resolve(module: str, level: int, package: str) -> str:
    """The absolute name of a ``from`` import written inside ``package``."""
    if level == 0:
        return module
    parts = package.split(".")
    if level - 1 > len(parts) - 1:
        return "." * level + module          # climbs above the top package: never allowed
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _allowed(name: str) -> bool:
    top = name.split(".")[0]
    if name == CORE_PACKAGE or name.startswith(CORE_PACKAGE + "."):
        return True
    return top in THIRD_PARTY_ALLOWED or top in sys.stdlib_module_names


def forbidden_imports(source: str, package: str = CORE_PACKAGE, filename: str = "<src>") -> list:
    """``["file:line: what", ...]`` for every import ``source`` must not make."""
    problems = []
    tree = ast.parse(source, filename)
    checking_only = {id(n) for top in ast.walk(tree)
                     if isinstance(top, ast.If) and isinstance(top.test, ast.Name) and top.test.id == "TYPE_CHECKING"
                     for stmt in top.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        names: list = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, package)
            # "from . import x" may import submodule x: check base.x as well
            names = [base] if node.module else [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called in ("__import__", "import_module"):
                problems.append(f"{filename}:{node.lineno}: dynamic import via {called}()")
        problems += [f"{filename}:{node.lineno}: imports {name}" for name in names
                     if not (_allowed(name) or id(node) in checking_only and name.split(".")[0] in TYPE_CHECKING_ONLY)]
    return problems


def core_files() -> list:
    return sorted(CORE_DIR.rglob("*.py"))


def test_core_has_modules_to_check():
    names = {p.name for p in core_files()}
    assert {"matcher.py", "order_book.py", "price_level.py", "commands.py", "events.py"} <= names


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_imports_only_stdlib_sortedcontainers_msgpack_and_itself(path):
    rel = path.relative_to(CORE_DIR.parent.parent)
    package = ".".join(rel.with_suffix("").parts[:-1]) if path.name != "__init__.py" else ".".join(rel.parent.parts)
    assert forbidden_imports(path.read_text(encoding="utf-8"), package, str(rel)) == []


@pytest.mark.parametrize("source", [
    "import eventstore",
    "from eventstore.writer import Writer",
    "from engine.io import base",
    "from engine import service",
    "from .. import io",
    "from ..service import engine",
    "from ... import anything",
    "import numpy",
    "import aiokafka.producer",
    "def f():\n    import requests",
    "import importlib\nimportlib.import_module('snapshot')",
    "__import__('recovery')",
    "from mypy_extensions import mypyc_attr",
    "if TYPE_CHECKING:\n    pass\nelse:\n    import mypy_extensions",
    "if TYPE_CHECKING:\n    import numpy",
])
def test_layering_check_catches_a_forbidden_import(source):
    assert forbidden_imports(source) != []


@pytest.mark.parametrize("source", [
    "import hashlib, os.path",
    "from collections import deque",
    "from __future__ import annotations",
    "import msgpack",
    "from sortedcontainers import SortedList",
    "from . import types",
    "from .order_book import OrderBook",
    "from engine.core.types import Kind",
    "if TYPE_CHECKING:\n    from mypy_extensions import mypyc_attr",
])
def test_layering_check_allows_what_the_core_may_use(source):
    assert forbidden_imports(source) == []
