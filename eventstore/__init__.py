"""The write-ahead log: segments of checksummed batch frames, group commit,
readers from any sequence number, the in-memory event buffer.

Layout: ``segment`` (byte format, scanning, the torn-tail rule), ``writer``
(group commit; fsync in a syncer process; sealing), ``reader``, ``buffer``,
``fsio`` (atomic_write, fsync_dir), ``watermark`` (the durable seq for readers), ``retention`` (the prune record, whole-segment
removal), ``errors``. Format: ``FORMAT.md``.
May import: the standard library, msgpack, zstandard. Knows nothing of orders:
an event is a msgpack value with a sequence number.
"""

from .buffer import EventBuffer
from .errors import (AtomicWriteError, CorruptRecordError, EventStoreError, PrunedRangeError, WalSequenceError,
                     WalWriteError, WriterDiedError, describe_os_error)
from .fsio import atomic_write, free_bytes, fsync_dir
from .reader import WalReader, WalScan
from .retention import RetentionRecord, read_retention, retained_segments, retention_lock
from .segment import SegmentInfo, TornTail, list_segments
from .watermark import read_durable_seq
from .writer import CommitStats, WalWriter, seal_segment

__all__ = ["EventBuffer", "AtomicWriteError", "CorruptRecordError", "EventStoreError",
           "WalSequenceError", "WalWriteError", "WriterDiedError", "describe_os_error", "atomic_write",
           "free_bytes", "fsync_dir", "WalReader",
           "WalScan", "SegmentInfo", "TornTail", "list_segments", "CommitStats", "WalWriter",
           "seal_segment", "PrunedRangeError", "RetentionRecord", "read_retention", "retained_segments",
           "retention_lock", "read_durable_seq"]
