"""PostgreSQL test helpers: one real server per test session, a fresh database per test,
and a way to crash the server and bring it back (``scripts/postgres.sh``).

Which server:

- ``EVENGINE_POSTGRES_URL`` set (CI: ``.ci/run`` starts one): that one. ``kill_server`` /
  ``restart_server`` then work only if ``POSTGRES_RUN_DIR`` is the run dir the script started
  it in (``.ci/run`` exports both).
- unset: :func:`server_url` starts one with ``scripts/postgres.sh start`` in a run dir of its
  own under /tmp and stops it at :func:`stop_server` (the session fixture's teardown) or at
  interpreter exit, whichever comes first. ``EVENGINE_NO_AUTO_POSTGRES=1`` forbids that.

No server (nor psycopg): the test is skipped with the reason, or fails under
``EVENGINE_REQUIRE_POSTGRES=1`` (CI), like ``EVENGINE_REQUIRE_KAFKA`` for Kafka.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "postgres.sh"

URL_ENV = "EVENGINE_POSTGRES_URL"
REQUIRE_ENV = "EVENGINE_REQUIRE_POSTGRES"
NO_AUTO_ENV = "EVENGINE_NO_AUTO_POSTGRES"
RUN_DIR_ENV = "POSTGRES_RUN_DIR"

_url: Optional[str] = None          # the session's server URL, once known
_run_dir: Optional[Path] = None     # the run dir, when we can drive the script on it
_started_here = False               # server_url() started it (and so stops it)
_failure: Optional[str] = None      # why the server could not be had (asked once per session)


def missing(why: str, what: str = "no PostgreSQL server"):
    """Skip the calling test, or fail it when CI requires PostgreSQL."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{what}, and CI requires one ({REQUIRE_ENV}=1): {why}", pytrace=False)
    pytest.skip(f"{what}: {why}")


def _script(cmd: str, run_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{RUN_DIR_ENV: str(run_dir)})
    return subprocess.run(["bash", str(SCRIPT), cmd], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _env_lines(out: str, run_dir: Path) -> dict:
    lines = out.splitlines()
    env_file = run_dir / "env"
    if env_file.exists():
        lines += env_file.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and line.split("=", 1)[0].isupper())


def _same_server(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.hostname, pa.port) == (pb.hostname, pb.port)


def _import_psycopg():
    try:
        import psycopg
    except ImportError as exc:
        missing(f"psycopg is not installed (pip install -e '.[test]'): {exc}")
    return psycopg


def server_url() -> str:
    """URL of the session's server, ``postgresql://postgres@127.0.0.1:PORT/evengine``;
    starts one on first use when ``EVENGINE_POSTGRES_URL`` is unset. Skips (or fails under
    ``EVENGINE_REQUIRE_POSTGRES=1``) when there is none."""
    global _url, _run_dir, _started_here, _failure
    if _url is not None:
        return _url
    if _failure is not None:
        missing(_failure)
    _import_psycopg()
    given = os.environ.get(URL_ENV)
    if given:
        try:
            with connect(database_url(given, "postgres")) as con:
                con.execute("SELECT 1")
        except Exception as exc:  # psycopg.OperationalError and friends
            _failure = f"{URL_ENV}={given} does not answer: {exc}"
            missing(_failure)
        _url = given
        rd = os.environ.get(RUN_DIR_ENV)
        if rd:
            env = _env_lines("", Path(rd))
            if env.get("POSTGRES_URL") and _same_server(env["POSTGRES_URL"], given):
                _run_dir = Path(rd)
        return _url
    if os.environ.get(NO_AUTO_ENV) == "1":
        _failure = f"{URL_ENV} is unset and {NO_AUTO_ENV}=1"
        missing(_failure)
    # Not pytest's tmp_path: its 0700 parents are closed to the postgres user the script
    # runs the server as. Short, too: the unix socket path lives in it.
    run_dir = Path(tempfile.mkdtemp(prefix="evengine-pg-", dir="/tmp"))
    try:
        out = _script("start", run_dir)
    except (OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        _failure = f"scripts/postgres.sh start failed: {exc}"
        missing(_failure)
    env = _env_lines(out.stdout, run_dir)
    if out.returncode != 0 or "POSTGRES_URL" not in env:
        _script("stop", run_dir, timeout=120)
        shutil.rmtree(run_dir, ignore_errors=True)
        _failure = (f"scripts/postgres.sh start exited {out.returncode}: stdout {out.stdout[-1000:]!r}, "
                    f"stderr {out.stderr[-2000:]!r}")
        missing(_failure)
    _url, _run_dir, _started_here = env["POSTGRES_URL"], run_dir, True
    atexit.register(stop_server)
    return _url


def stop_server() -> None:
    """Stop the server if :func:`server_url` started it (else leave it alone)."""
    global _url, _run_dir, _started_here
    if _started_here and _run_dir is not None:
        _script("stop", _run_dir, timeout=120)
        shutil.rmtree(_run_dir, ignore_errors=True)
        _url, _run_dir, _started_here = None, None, False


def can_control_server() -> bool:
    """Whether :func:`kill_server` / :func:`restart_server` can act on the session's server."""
    server_url()
    return _run_dir is not None


def _control(cmd: str) -> str:
    server_url()
    if _run_dir is None:
        missing(f"{URL_ENV} names a server this session did not start and {RUN_DIR_ENV} does not "
                f"point at its run dir", what=f"cannot {cmd} the PostgreSQL server")
    out = _script(cmd, _run_dir, timeout=300)
    if out.returncode != 0:
        raise AssertionError(f"scripts/postgres.sh {cmd} exited {out.returncode}: {out.stderr[-3000:]}")
    return out.stdout


def kill_server() -> None:
    """SIGKILL the postmaster and all its children (a crash; the data dir is kept)."""
    _control("kill")


def restart_server() -> str:
    """Start the server again on the same data dir and port (crash recovery after a kill);
    returns once it accepts connections. The URL stays the same."""
    env = _env_lines(_control("restart"), _run_dir)
    assert _same_server(env["POSTGRES_URL"], server_url()), (env, server_url())
    return server_url()


def database_url(url: str, dbname: str) -> str:
    """``url`` with its database replaced by ``dbname``."""
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + dbname, p.query, p.fragment))


def connect(url: str, **kw):
    """``psycopg.connect(url)`` with a short connect timeout."""
    psycopg = _import_psycopg()
    return psycopg.connect(url, connect_timeout=10, **kw)


def fresh_database(url: str, prefix: str = "t") -> str:
    """CREATE DATABASE with a unique name on ``url``'s server; return its URL.
    Drop it with :func:`drop_database` (the ``postgres_db`` fixture does)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with connect(database_url(url, "postgres"), autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return database_url(url, name)


def drop_database(db_url: str) -> None:
    """DROP DATABASE ``db_url``'s database, closing whatever still uses it."""
    name = urlsplit(db_url).path.lstrip("/")
    assert name and name not in ("postgres", "template0", "template1"), name
    with connect(database_url(db_url, "postgres"), autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
