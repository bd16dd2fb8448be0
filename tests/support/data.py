"""Where the real order flow lives, and the rule that tests needing it skip
with the reason on a laptop but fail under CI (``EVENGINE_REQUIRE_DATA=1``,
set by ``.ci/run``).

:func:`data_path` looks in two places, in this order:

1. the shared data, ``../shared/data`` beside the repository (CI and dev
   machines; ``../shared/data/README.md``): any file or folder there;
2. the samples ``scripts/fetch_sample_data.py`` fetches into
   ``data/samples/`` of the repository (the README's first command, so a
   fresh clone has them): only what that script fetches (:data:`SAMPLES`, today
   ``bitstamp/orders.csv.gz``, ``bitstamp/trades.csv`` and
   ``bitstamp/meta.json``; it fetches no LOBSTER day), each file only when its
   SHA-256 is the one the script records (a partial or stale fetch is not
   used), a folder only when every sample file of it checks out.

Anything else (the LOBSTER days on a fresh clone) skips, or fails under
``EVENGINE_REQUIRE_DATA=1``, with a reason naming both places and how to get
the file. Nothing is downloaded here.

Environment (read at each call, so a test can ``monkeypatch.setenv``):
    EVENGINE_SHARED_DATA: the shared data folder instead of ``../shared/data``.
    EVENGINE_SAMPLES_DIR: the samples folder instead of ``data/samples``
        (relative paths: to the repository root).
    EVENGINE_REQUIRE_DATA: ``1`` turns every skip into a failure.
"""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLES_DIR = ROOT / "data" / "samples"
FETCH_SCRIPT = ROOT / "scripts" / "fetch_sample_data.py"

__all__ = ["data_path", "locate", "shared_root", "samples_root", "SAMPLES", "ROOT", "SHARED_DATA", "SAMPLES_DIR"]


def _fetched_files(script: Path = FETCH_SCRIPT) -> dict[str, str]:
    """``{file name: SHA-256}`` of the Bitstamp sample, as the fetch script
    records it in its ``FILES`` literal (one table for both: the script checks
    what it writes, this module what it reads). Read with ``ast``, never run;
    empty if the script or the literal is gone."""
    try:
        tree = ast.parse(script.read_text(encoding="utf-8"), str(script))
    except (OSError, SyntaxError):
        return {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "FILES" for t in node.targets):
            try:
                files = ast.literal_eval(node.value)
            except ValueError:
                return {}
            return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}
    return {}


SAMPLES: dict[tuple[str, str], str] = {("bitstamp", name): sha for name, sha in _fetched_files().items()}
"""``{(vendor folder, file name): SHA-256}``: what ``data/samples/`` may stand in for."""


def shared_root() -> Path:
    """The shared data folder: ``$EVENGINE_SHARED_DATA``, else ``../shared/data``."""
    env = os.environ.get("EVENGINE_SHARED_DATA")
    return Path(env) if env else SHARED_DATA


def samples_root() -> Path:
    """The samples folder: ``$EVENGINE_SAMPLES_DIR`` (relative: to the
    repository root), else ``data/samples``."""
    env = os.environ.get("EVENGINE_SAMPLES_DIR")
    return (ROOT / env) if env else SAMPLES_DIR


_digests: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _digests[key] = h.hexdigest()
    return _digests[key]


def _sample_problem(rel: tuple[str, ...], root: Path) -> str | None:
    """Why ``root/rel`` cannot stand in for the shared file or folder ``rel``
    (``None``: it can)."""
    if len(rel) == 2 and rel in SAMPLES:
        wanted = {rel: SAMPLES[rel]}
    elif len(rel) == 1 and any(v == rel[0] for v, _ in SAMPLES):
        wanted = {k: sha for k, sha in SAMPLES.items() if k[0] == rel[0]}
    else:
        return f"{root} holds no sample of {'/'.join(rel)} (scripts/fetch_sample_data.py fetches only " \
               f"{', '.join('/'.join(k) for k in sorted(SAMPLES)) or 'nothing'})"
    for k, sha in sorted(wanted.items()):
        path = root.joinpath(*k)
        if not path.is_file():
            return f"no sample at {path} (run `python scripts/fetch_sample_data.py`, README)"
        digest = _sha256(path)
        if digest != sha:
            return (f"the sample {path} has SHA-256 {digest}, not the {sha} scripts/fetch_sample_data.py "
                    f"records (run it again)")
    return None


def locate(*parts: str) -> tuple[Path | None, str]:
    """``(path, "")`` of a file or folder of the real order flow by its path
    under ``../shared/data`` (``"bitstamp", "orders.csv.gz"``): the shared
    one if it exists, else the checked sample standing in for it; or
    ``(None, reason)`` when neither place has it. Never skips."""
    if not parts:
        raise ValueError("data_path needs a path under the data folder, e.g. ('bitstamp', 'orders.csv.gz')")
    shared = shared_root().joinpath(*parts)
    if shared.exists():
        return shared, ""
    root = samples_root()
    problem = _sample_problem(tuple(parts), root)
    if problem is None:
        return root.joinpath(*parts), ""
    return None, (f"real order flow not found at {shared} (see README: Data, and ../shared/data/README.md), "
                  f"and {problem}")


def data_path(*parts: str) -> Path:
    """A file or folder of the real order flow (:func:`locate`); skips the
    test with the reason when neither place has it, fails instead under
    ``EVENGINE_REQUIRE_DATA=1``."""
    path, reason = locate(*parts)
    if path is None:
        if os.environ.get("EVENGINE_REQUIRE_DATA") == "1":
            pytest.fail(reason + "; EVENGINE_REQUIRE_DATA=1 forbids skipping")
        pytest.skip(reason)
    return path
