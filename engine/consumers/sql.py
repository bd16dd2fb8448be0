"""One small interface over the two SQL stores the consumers write: SQLite and PostgreSQL.

The consumers write one schema to both (``engine/consumers/FORMAT.md``); what
differs is how to connect, the parameter style, bulk inserts and which errors
mean "the server went away, try again". :func:`connect` takes a URL:

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (or a
  bare path): the standard library's ``sqlite3``, ``journal_mode=WAL`` and
  ``synchronous=FULL`` (a commit is on disk when it returns: the settlement's
  transaction is its write-ahead log);
- ``postgresql://user@host:port/db``: a real server through psycopg 3
  (``pip install 'evengine[postgres]'``); each transaction is committed with
  the server's defaults (``fsync`` on, ``synchronous_commit`` on).

SQL is written once with ``?`` placeholders; :class:`PostgresDatabase`
rewrites them to ``%s``. Both run the statements of one :meth:`transaction`
atomically: on an exception nothing of it stays.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any, Iterable, Iterator, Optional
from urllib.parse import urlparse

__all__ = ["Database", "SqliteDatabase", "PostgresDatabase", "connect", "describe_url", "TransientDatabaseError"]


class TransientDatabaseError(Exception):
    """The database could not be reached or dropped the connection (a
    server restart, a network fault): nothing of the transaction stayed; try
    again after :meth:`Database.reconnect`."""


class Database:
    """A connection to one store. ``dialect``: ``"sqlite"`` or ``"postgresql"``."""

    dialect = ""
    url = ""

    def transaction(self) -> contextlib.AbstractContextManager:
        """A context in which statements run atomically; commits on a clean
        exit (durably: see the module docstring), rolls back on an exception.

        Raises:
            TransientDatabaseError: the connection failed; nothing was committed.
        """
        raise NotImplementedError

    def execute(self, sql: str, params: Iterable[Any] = ()) -> None:
        raise NotImplementedError

    def executescript(self, sql: str) -> None:
        """Run ``;``-separated statements (schema set-up), committed on return."""
        raise NotImplementedError

    def executemany(self, sql: str, rows: list) -> None:
        raise NotImplementedError

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        raise NotImplementedError

    def insert_rows(self, table: str, columns: tuple, rows: list) -> None:
        """Insert ``rows`` (tuples in ``columns`` order) into ``table``: the
        fastest bulk path of the store (PostgreSQL: ``COPY``)."""
        if rows:
            marks = ", ".join("?" for _ in columns)
            self.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)

    def reconnect(self) -> None:
        """Open the connection again (after a :class:`TransientDatabaseError`)."""

    def close(self) -> None:
        raise NotImplementedError


class SqliteDatabase(Database):
    """A SQLite file (created when missing); ``path`` ``":memory:"`` for tests."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.url = f"sqlite:///{path}"
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self._depth = 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``).

        Raises:
            TransientDatabaseError: the file system is full or failed
                (``SQLITE_FULL``, ``SQLITE_IOERR``): rolled back, nothing
                committed; a consumer reconnects and applies the batch again.
        """
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            yield
            self.conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):   # SQLite may have rolled back already
                self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and _sqlite_io_error(exc):
                raise TransientDatabaseError(f"{self.url}: {exc} ({_free_space(self.path)} free)") from None
            raise

    def execute(self, sql: str, params: Iterable[Any] = ()) -> None:
        self.conn.execute(sql, tuple(params))

    def executescript(self, sql: str) -> None:
        self.conn.executescript(sql)

    def executemany(self, sql: str, rows: list) -> None:
        self.conn.executemany(sql, rows)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        self.conn.close()


def _sqlite_io_error(exc: sqlite3.Error) -> bool:
    """A full or failing disk (``SQLITE_FULL``, ``SQLITE_IOERR`` and its extended codes)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)


def _free_space(path: str) -> str:
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return "unknown"
    return f"{st.f_bavail * st.f_frsize:,} bytes"


class PostgresDatabase(Database):
    """A PostgreSQL database at ``url`` (psycopg 3). Dropped connections are
    reported as :class:`TransientDatabaseError`; :meth:`reconnect` retries."""

    dialect = "postgresql"

    def __init__(self, url: str, connect_timeout_s: float = 5.0) -> None:
        try:
            import psycopg
        except ImportError as exc:   # pragma: no cover - the extra is part of the test install
            raise RuntimeError("PostgreSQL needs psycopg 3: pip install 'evengine[postgres]'") from exc
        self._psycopg = psycopg
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.conn: Optional[Any] = None
        self._open()

    def _open(self) -> None:
        psycopg = self._psycopg
        try:
            self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s)))
        except psycopg.OperationalError as exc:
            raise TransientDatabaseError(f"cannot connect to {describe_url(self.url)}: {exc}".strip()) from None

    def reconnect(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None
        self._open()

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        psycopg = self._psycopg
        if self.conn is None:
            self._open()
        try:
            with self.conn.transaction():
                yield
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
            raise self._lost(exc) from None

    def execute(self, sql: str, params: Iterable[Any] = ()) -> None:
        self.conn.execute(self._sql(sql), tuple(params))

    def _lost(self, exc: Exception) -> TransientDatabaseError:
        return TransientDatabaseError(f"{describe_url(self.url)}: {exc}".strip())

    def executescript(self, sql: str) -> None:
        psycopg = self._psycopg
        try:
            with self.conn.transaction():
                for statement in sql.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
            raise self._lost(exc) from None

    def executemany(self, sql: str, rows: list) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(self._sql(sql), rows)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        psycopg = self._psycopg
        try:
            with self.conn.cursor() as cur:
                cur.execute(self._sql(sql), tuple(params))
                return cur.fetchall()
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
            raise self._lost(exc) from None

    def insert_rows(self, table: str, columns: tuple, rows: list) -> None:
        if rows:
            with self.conn.cursor() as cur:
                with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


def describe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    p = urlparse(url)
    if p.password:
        return url.replace(f":{p.password}@", ":***@")
    return url


def connect(url: str) -> Database:
    """A :class:`Database` for ``url`` (see the module docstring).

    Raises:
        ValueError: an unknown scheme.
        TransientDatabaseError: a PostgreSQL server that cannot be reached.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    if url.startswith("sqlite:///"):
        return SqliteDatabase(url[len("sqlite:///"):])
    if "://" in url:
        raise ValueError(f"unknown database URL {describe_url(url)!r}: use sqlite:///PATH or postgresql://...")
    return SqliteDatabase(url)
