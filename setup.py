"""Build: the matching core compiled with mypyc when a C compiler works, else pure Python.

The ``.py`` files of ``engine/core`` stay the source of truth: mypyc compiles
those same files to C extension modules (``COMPILED`` below), which Python
imports in preference to the ``.py`` next to them. ``EVENGINE_PURE_PYTHON=1``
forces the pure-Python build; so does a missing or broken C compiler (one
warning line, the install goes on). Everything else (metadata, packages) is in
``pyproject.toml``. ``engine.core.COMPILED`` tells which build is imported.
"""

from __future__ import annotations

import functools
import glob
import os
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The modules that pay for being compiled: the hot path of matching and risk.
# The others stay interpreted (README, "Two builds"): types.py (IntEnum classes),
# commands.py and events.py (NamedTuple classes: nothing for mypyc to speed up),
# codec.py and errors.py (not on the hot path).
COMPILED = [
    "engine/core/price_level.py",
    "engine/core/order_book.py",
    "engine/core/accounts.py",
    "engine/core/matcher.py",
]
# One shared library for the group, inside the package (not a top-level module of
# a hashed name): engine/core/_native__mypyc.<abi>.so
GROUP = "engine.core._native"


def _warn(msg: str) -> None:
    print(f"evengine: {msg}; building pure Python", file=sys.stderr)


def _remove_stale_extensions() -> None:
    """A pure build must not leave an earlier compiled build's modules in the
    source tree (an editable install imports them before the .py files)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    here = os.path.dirname(os.path.abspath(__file__))
    names = [os.path.splitext(os.path.basename(p))[0] for p in COMPILED] + ["_native__mypyc"]
    for name in names:
        for path in glob.glob(os.path.join(here, "engine", "core", name + ".*" + suffix.rsplit(".", 1)[-1])):
            os.remove(path)


def _compiler_works() -> bool:
    """Whether the C compiler setuptools would use builds a Python extension."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.errors import CCompilerError, DistutilsError
    from setuptools._distutils.sysconfig import customize_compiler

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write("#include <Python.h>\nint evengine_probe(void) { return 0; }\n")
        cc = new_compiler()
        customize_compiler(cc)
        try:
            cc.compile([src], output_dir=tmp, include_dirs=[sysconfig.get_paths()["include"]])
        except (CCompilerError, DistutilsError, OSError):
            return False
    return True


_METADATA_ONLY = {"egg_info", "dist_info", "sdist"}


class _BuildExt(build_ext):
    """Generates the C code with mypyc at build time (not when pip only asks for
    metadata), then compiles it; falls back to pure Python when that fails."""

    def finalize_options(self) -> None:
        # the placeholder (not a pure build), and a build, not pip asking for metadata
        # (egg_info finalizes build_ext too, to list the sources)
        if self.distribution.ext_modules and not set(self.distribution.commands) <= _METADATA_ONLY:
            self.distribution.ext_modules = list(_mypyc_extensions())
        super().finalize_options()

    def run(self) -> None:
        if self.extensions:
            try:
                super().run()
                return
            except Exception as exc:  # CompileError, LinkError, a compiler that vanished
                _warn(f"compiling the mypyc extensions failed ({type(exc).__name__}: {str(exc)[:120]})")
                self.extensions = []
        _remove_stale_extensions()


@functools.lru_cache(maxsize=None)   # build_ext is finalized more than once per build
def _mypyc_extensions() -> list:
    if not _compiler_works():
        _warn("no working C compiler")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc (mypy) is not installed")
        return []
    # type errors in these modules fail the build (fix them, or set EVENGINE_PURE_PYTHON=1)
    return mypycify(["--ignore-missing-imports", *COMPILED], opt_level="3", group_name=GROUP)


if os.environ.get("EVENGINE_PURE_PYTHON", "") not in ("", "0"):
    _remove_stale_extensions()
    ext_modules = []
else:
    # a placeholder: the real list is mypyc's, made when build_ext is finalized for a build
    ext_modules = [Extension(GROUP + "__mypyc", sources=[])]

setup(ext_modules=ext_modules, cmdclass={"build_ext": _BuildExt})
