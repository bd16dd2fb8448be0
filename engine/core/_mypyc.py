"""mypyc's class options, for the compiled build (``setup.py``).

``mypyc_attr`` is read by mypyc when it compiles a module and is never called
by compiled code; at run time (pure Python) it is a decorator that returns the
class unchanged, so the core needs no ``mypy_extensions`` at run time.

``@mypyc_attr(serializable=True, allow_interpreted_subclasses=True)`` marks the
compiled classes whose ``__init__`` has required arguments: ``serializable``
lets ``copy.deepcopy`` and ``pickle`` make them without calling ``__init__``
(as for a Python class), and ``allow_interpreted_subclasses`` is what makes
mypyc 1.19 still run ``__init__`` when interpreted code calls the class (with
``serializable`` alone its ``tp_init`` does nothing). No class of the core is
subclassed. Classes whose ``__init__`` takes no required argument
(``Matcher``, ``Accounts``) copy and pickle without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr
else:
    def mypyc_attr(*_args: object, **_kwargs: object):
        return lambda cls: cls

__all__ = ["mypyc_attr"]
