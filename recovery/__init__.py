"""Recovery, replay, verification and time travel.

Layout: ``recover`` (startup: snapshot + WAL delta, torn tail), ``replay``
(apply WAL events, check logged trades), ``time_travel`` (books at any seq,
the notebook API), ``walindex`` (frame index: random access to the WAL),
``keyframes`` (bounded replay: keyframes, the last matcher, the time index),
``retention`` (WAL pruning: the floor, ``evengine wal prune``),
``history`` (the notebook API's pandas DataFrames; imports pandas, so it is
not imported here: ``History`` loads it on first use), ``verify`` (full
check), ``errors``.
May import: engine.core, eventstore (read side and fsio), snapshot. Never
writes the WAL (it only cuts a torn tail, at start, before any writer opens).
"""

from .errors import PrunedWalGapError, RecoveryError, ReplayMismatchError, WalGapError
from .recover import Recovery, recover, snapshot_dir, wal_dir
from .replay import Mismatch, Replayer
from .keyframes import Timeline
from .time_travel import History, open_data_dir
from .walindex import WalIndex
from .verify import verify

__all__ = ["PrunedWalGapError", "RecoveryError", "ReplayMismatchError", "WalGapError", "Recovery", "recover", "snapshot_dir",
           "wal_dir", "Mismatch", "Replayer", "History", "open_data_dir", "verify",
           "Timeline", "WalIndex"]
