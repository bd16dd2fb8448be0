"""Snapshots: the engine's state after a sequence number, written by a forked child.

Layout: ``codec`` (bytes, ``FORMAT.md``), ``catalog`` (list, choose, prune),
``fork_writer`` (fork, time the pause, reap), ``errors``.
May import: the standard library, msgpack, zstandard, ``eventstore.fsio``.
Must not run matching: it stores the plain state ``Matcher.export_state()`` gives.
"""

from .catalog import SnapshotInfo, list_snapshots, load_snapshot, newest_valid, prune, snapshot_name
from .codec import SNAPSHOT_VERSION, decode_snapshot, encode_snapshot
from .errors import SnapshotChecksumError, SnapshotError, SnapshotFailedError, SnapshotFormatError
from .fork_writer import SnapshotJob, SnapshotWriter

__all__ = ["SnapshotInfo", "list_snapshots", "load_snapshot", "newest_valid", "prune", "snapshot_name",
           "SNAPSHOT_VERSION", "decode_snapshot", "encode_snapshot", "SnapshotChecksumError",
           "SnapshotError", "SnapshotFailedError", "SnapshotFormatError", "SnapshotJob", "SnapshotWriter"]
