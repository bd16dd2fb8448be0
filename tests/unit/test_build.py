"""The build of ``engine/core`` that is imported: compiled with mypyc (``setup.py``)
or pure Python, never a mix, and never a compiled module older than its source
(an editable install keeps running the old one until it is installed again)."""

from __future__ import annotations

import importlib
import importlib.machinery
from pathlib import Path

import engine.core

# setup.py's COMPILED list
COMPILED_MODULES = ["engine.core.price_level", "engine.core.order_book", "engine.core.accounts",
                    "engine.core.matcher"]


def _is_extension(module) -> bool:
    return module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_compiled_flag_says_what_the_matcher_is():
    assert engine.core.COMPILED is _is_extension(engine.core.matcher)


def test_either_every_module_of_the_build_is_compiled_or_none():
    kinds = {name: _is_extension(importlib.import_module(name)) for name in COMPILED_MODULES}
    assert set(kinds.values()) == {engine.core.COMPILED}, kinds


def test_the_other_core_modules_stay_interpreted():
    for name in ["types", "commands", "events", "codec", "errors"]:
        assert importlib.import_module(f"engine.core.{name}").__file__.endswith(".py")


def test_no_compiled_module_is_stale_or_left_behind():
    """Compiled: no extension module older than its ``.py``. Pure: no extension
    module left next to the sources at all (a pure reinstall removes them)."""
    core = Path(engine.core.__file__).parent
    for name in COMPILED_MODULES:
        stem = name.rsplit(".", 1)[1]
        src = core / f"{stem}.py"
        built = [core / f"{stem}{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES
                 if (core / f"{stem}{suffix}").exists()]
        if engine.core.COMPILED:
            ext = Path(importlib.import_module(name).__file__)
            assert ext.stat().st_mtime >= src.stat().st_mtime, \
                f"{ext.name} is older than {src.name}: install again (pip install -e ., EVENGINE_PURE_PYTHON=1 for the pure build)"
        else:
            assert built == [], f"{[p.name for p in built]} left next to {src.name} by an earlier compiled build"
