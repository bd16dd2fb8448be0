"""A data directory written by evengine 0.2 (WAL format 2, snapshot format 2)
still loads, replays and goes on under format 3 (eventstore/FORMAT.md and
snapshot/FORMAT.md, changelogs).

The old files are built byte by byte here, as 0.2 wrote them: segment and
snapshot headers with version 2, 6-field add-symbol and 13-field place
records, books of four fields and no accounts in the snapshot.
"""

from __future__ import annotations

import os
import struct
import zlib

import msgpack
import zstandard

from engine.core import Deposit, Kind, Matcher, PlaceOrder, decode_payload
from engine.service import Engine, EngineConfig
from eventstore import WalReader
from eventstore.segment import SEGMENT_MAGIC, encode_frame_header, list_segments, load_segment_bytes, segment_name
from recovery import open_data_dir, recover, verify
from snapshot.codec import HEADER_SIZE, SNAPSHOT_MAGIC

V2_ADD = [1, 0, "X", 1, None, None]
V2_PLACES = [[2, 1, "X", 10, 2, 1, 1, 100, 5, False, 7, "old", 1],     # sell 5 @ 100, rests
             [2, 2, "X", 11, 1, 1, 1, 100, 2, False, 8, "old", 2]]     # buy 2 @ 100: one trade


def v2_segment(first_seq: int, events: list) -> bytes:
    head = struct.pack("<8sHHIQ4x", SEGMENT_MAGIC, 2, 0, 32, first_seq)
    head += struct.pack("<I", zlib.crc32(head))
    payload = msgpack.packb(events)
    return head + encode_frame_header(payload, first_seq, len(events)) + payload


def v2_snapshot(state: dict) -> bytes:
    body = zstandard.ZstdCompressor(write_checksum=True).compress(msgpack.packb(state, use_bin_type=True))
    head = struct.pack("<8sHHIQQQI", SNAPSHOT_MAGIC, 2, 0, HEADER_SIZE, state["last_seq"],
                       state["match_sequence"], len(body), zlib.crc32(body))
    return head + struct.pack("<I", zlib.crc32(head)) + body


def write_v2_dir(data_dir: str, with_snapshot: bool) -> Matcher:
    """A 0.2 data directory of the three commands above; returns the state
    they give (computed by today's matcher from the upgraded records)."""
    m = Matcher()
    events = []
    for rec in [V2_ADD] + V2_PLACES:
        out = m.apply(m.last_seq + 1, rec)
        events.append(rec)
        events += [list(e) for e in out if e[0] in (Kind.TRADE.value, Kind.REJECTED.value)]
    os.makedirs(os.path.join(data_dir, "wal"))
    with open(os.path.join(data_dir, "wal", segment_name(1)), "wb") as f:
        f.write(v2_segment(1, events))
    if with_snapshot:
        os.makedirs(os.path.join(data_dir, "snapshots"))
        state = m.export_state()
        old = {"last_seq": state["last_seq"], "match_sequence": state["match_sequence"],
               "positions": state["positions"], "trades": state["trades"],
               "books": [b[:4] for b in state["books"]]}
        with open(os.path.join(data_dir, "snapshots", f"snap-{m.last_seq:020d}.evsnap"), "wb") as f:
            f.write(v2_snapshot(old))
    return m


def test_v2_records_decode_in_todays_layout():
    add = decode_payload(V2_ADD)
    assert add.symbol == "X" and add.tick_size == 1 and add.base is None and add.risk is False
    assert add.source is None and add.source_pos is None
    place = decode_payload(V2_PLACES[0])
    assert place.account == 7 and place.max_quote == 0 and place.source == "old" and place.source_pos == 1


def test_v2_wal_replays_to_the_same_state(tmp_path):
    d = str(tmp_path / "d")
    expected = write_v2_dir(d, with_snapshot=False)
    rec = recover(d)
    assert rec.snapshot is None and rec.matcher.match_sequence == 1
    assert rec.matcher.state_hash() == expected.state_hash()
    report = verify(d)
    assert report["mismatches"] == 0 and report["trades_checked"] == 1 and report["state_hash"] == expected.state_hash()
    h = open_data_dir(d)
    assert h.book_at(rec.matcher.last_seq, "X") is not None


def test_v2_snapshot_loads_and_the_engine_goes_on_in_format_3(tmp_path):
    d = str(tmp_path / "d")
    expected = write_v2_dir(d, with_snapshot=True)
    rec = recover(d)
    assert rec.snapshot is not None and rec.replayed_events == 0
    assert rec.matcher.state_hash() == expected.state_hash()
    assert rec.matcher.books["X"].spec is None and rec.matcher.accounts.is_empty()
    with Engine(EngineConfig(data_dir=d, control_socket=False)) as eng:
        eng.submit(PlaceOrder.new("X", 12, 1, 100, 3, account=9))     # takes the other 3 lots
        eng.submit(Deposit.new(1, 9, "USD", 5))                        # unknown asset: refused
        eng.end_batch()
        eng.snapshot_now()
    seqs = [seq for seq, _ in WalReader(os.path.join(d, "wal")).read(1)]
    assert seqs == list(range(1, seqs[-1] + 1))
    versions = [load_segment_bytes(info)[8] for info in list_segments(os.path.join(d, "wal"))]
    assert versions == [2, 3]                      # the old segment stays; new events go to a new one
    report = verify(d)
    assert report["mismatches"] == 0 and report["snapshot_mismatches"] == [] and report["snapshots_checked"] == 2
    again = recover(d)
    assert again.matcher.match_sequence == 2 and not again.matcher.books["X"].orders
    assert again.matcher.accounts.transfers[1][4] != 0    # the refused deposit is remembered
