"""The shard id of a data directory (engine/io/shard.py) and its place in every published record."""

from __future__ import annotations

import json

import pytest

from engine.core import BalanceChanged, Trade
from engine.io.messages import decode_ledger, decode_trade, encode_ledger, encode_trade
from engine.io.shard import DEFAULT_SHARD, SHARD_FILE, claim_shard, is_shard_id, read_shard
from engine.service.engine import Engine, EngineConfig
from engine.io.synthetic import SyntheticSource


def test_a_directory_without_a_shard_file_is_shard_0_and_gets_no_file(tmp_path):
    assert read_shard(str(tmp_path)) == DEFAULT_SHARD
    assert claim_shard(str(tmp_path), None) == DEFAULT_SHARD
    assert not (tmp_path / SHARD_FILE).exists()


def test_the_first_start_writes_the_shard_and_later_starts_must_agree(tmp_path):
    assert claim_shard(str(tmp_path), "eu-1") == "eu-1"
    assert json.loads((tmp_path / SHARD_FILE).read_text()) == {"format": 1, "shard": "eu-1"}
    assert claim_shard(str(tmp_path), None) == "eu-1"
    assert claim_shard(str(tmp_path), "eu-1") == "eu-1"
    with pytest.raises(ValueError, match="belongs to shard 'eu-1'"):
        claim_shard(str(tmp_path), "us-1")


@pytest.mark.parametrize("bad", ["", "x" * 33, "a b", "é", "a/b"])
def test_invalid_shard_ids_are_refused(tmp_path, bad):
    assert not is_shard_id(bad)
    with pytest.raises(ValueError, match="invalid shard id"):
        claim_shard(str(tmp_path), bad)


def test_a_damaged_shard_file_is_named(tmp_path):
    (tmp_path / SHARD_FILE).write_text('{"format": 1, "shard": 7}')
    with pytest.raises(ValueError, match=SHARD_FILE):
        read_shard(str(tmp_path))


def test_an_engine_that_published_as_shard_0_cannot_be_renamed(tmp_path):
    engine = Engine(EngineConfig(data_dir=str(tmp_path), snapshot_every=0, control_socket=False, pin_cpus=False,
                                 pause_cyclic_gc=False))
    engine.open()
    engine.run(SyntheticSource(200, 1))
    assert engine.shard == DEFAULT_SHARD
    with pytest.raises(ValueError, match="already holds a WAL"):
        claim_shard(str(tmp_path), "b")


def test_records_carry_the_shard_and_old_records_read_as_shard_0():
    trade = Trade(64, 1, 5, "X", 10, 2, 1, 3, 4, 5, 6, 7, 8)
    assert decode_trade(encode_trade(9, trade, "s", 3, "b"))["shard"] == "b"
    change = BalanceChanged(72, 1, 2, 3, "USD", 5, 0, 5, 0, 1, 9)
    assert decode_ledger(encode_ledger(change, 100, "b"))["shard"] == "b"
    old = json.loads(encode_trade(9, trade, "s", 3))
    del old["shard"]
    assert decode_trade(json.dumps(old).encode())["shard"] == DEFAULT_SHARD
    with pytest.raises(ValueError):
        decode_trade(json.dumps(dict(old, shard="a b")).encode())


def test_a_ledger_record_is_compact_json_and_owns_no_spare_buffer():
    import sys

    from engine.io.messages import ledger_message
    change = BalanceChanged(72, 12, 4, 9, "BTC", 0, -5, 100, 0, 5, 77)
    value = encode_ledger(change, 1_700_000_000_000_000_000, "eu-1")
    assert value == json.dumps(ledger_message(change, 1_700_000_000_000_000_000, "eu-1"), separators=(",", ":")).encode()
    assert sys.getsizeof(value) < 2 * len(value)      # orjson's bytes kept a 4 KiB buffer each
