"""The `evengine` commands as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from tests.support.crash import ROOT, eventually, run_to_end

EV = [sys.executable, "-m", "engine.cli"]


def ev(*args, check=True, **kw):
    proc = subprocess.run([*EV, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_start_summary_then_restart_processes_nothing_more(tmp_path):
    first = run_to_end(tmp_path, "synthetic:20000:4")
    assert first["commands"] == 20001 and first["trades"] > 0 and first["durable_seq"] == first["last_seq"]
    again = run_to_end(tmp_path, "synthetic:20000:4")
    assert again["commands"] == 0 and again["state_hash"] == first["state_hash"]


def test_human_summary_names_the_figures(tmp_path):
    out = ev("start", "--source", "synthetic:3000", "--data-dir", str(tmp_path), "--no-progress").stdout
    for word in ("commands:", "trades:", "durable throughput:", "snapshots:", "fork pauses", "state hash:"):
        assert word in out


def test_replay_prints_json_lines_with_seq_and_type(tmp_path):
    run_to_end(tmp_path, "synthetic:2000:4")
    lines = ev("replay", "--data-dir", str(tmp_path), "--from-seq", "5", "--to-seq", "60").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["seq"] for e in events] == list(range(5, 61))
    assert {e["type"] for e in events} >= {"place", "trade"}


def test_inspect_time_travel_and_verify(tmp_path):
    summary = run_to_end(tmp_path, "synthetic:5000:4", "--snapshot-every", "1500")
    book = json.loads(ev("inspect", "--data-dir", str(tmp_path), "--at-seq", "3000", "--symbol", "SYN",
                         "--depth", "3", "--json").stdout)
    assert book["seq"] == 3000 and book["symbol"] == "SYN" and len(book["bids"]) == 3
    assert all(b[0] > a[0] for b, a in zip(book["bids"], book["bids"][1:]))
    report = json.loads(ev("verify", "--data-dir", str(tmp_path), "--json").stdout)
    assert report["mismatches"] == 0 and report["state_hash"] == summary["state_hash"]
    assert report["trades_checked"] > 0
    missing = ev("inspect", "--data-dir", str(tmp_path), "--at-seq", "10", "--symbol", "NOPE", check=False)
    assert missing.returncode == 1 and "NOPE" in missing.stderr
    future = ev("inspect", "--data-dir", str(tmp_path), "--at-seq", str(summary["last_seq"] + 1), "--symbol", "SYN",
                check=False)
    assert future.returncode == 2 and "beyond the end of the WAL" in future.stderr


def test_snapshot_now_without_engine_fails_clearly(tmp_path):
    proc = ev("snapshot", "--now", "--data-dir", str(tmp_path), check=False)
    assert proc.returncode == 1 and "no engine is running" in proc.stderr


def test_snapshot_now_against_running_engine_and_sigterm_stops_cleanly(tmp_path):
    # --speed paces the flow (1000x its 1 us clock: ~1 s), so the engine is still running.
    eng = subprocess.Popen([*EV, "start", "--source", "synthetic:1000000:2", "--data-dir", str(tmp_path), "--speed",
                            "0.001", "--json", "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        sock = tmp_path / "control.sock"
        eventually(sock.exists, timeout=60, what="the control socket")
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        state = json.loads(ev("status", "--data-dir", str(tmp_path)).stdout)
        assert state["ok"] and state["symbols"] == ["SYN"] and 0 < state["durable_seq"] <= state["last_seq"]
        answer = json.loads(ev("snapshot", "--now", "--data-dir", str(tmp_path)).stdout)
        assert answer["ok"] and answer["seq"] >= 1 and answer["fork_pause_ms"] > 0
        assert os.path.exists(answer["path"])
        eng.send_signal(signal.SIGTERM)
        out, err = eng.communicate(timeout=60)
    finally:
        if eng.poll() is None:
            eng.kill()
    assert eng.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped_by"] == "SIGTERM" and summary["snapshots"] >= 1
    assert summary["durable_seq"] == summary["last_seq"]
    assert not sock.exists()
    # what it logged is whole: a restart recovers and verify agrees
    report = json.loads(ev("verify", "--data-dir", str(tmp_path), "--json").stdout)
    assert report["mismatches"] == 0 and report["last_seq"] == summary["last_seq"]


def test_second_engine_on_same_data_dir_is_refused(tmp_path):
    eng = subprocess.Popen([*EV, "start", "--source", "synthetic:1000000:2", "--data-dir", str(tmp_path), "--speed",
                            "0.001", "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        eventually((tmp_path / "control.sock").exists, timeout=60, what="the first engine")
        second = ev("start", "--source", "synthetic:10", "--data-dir", str(tmp_path), check=False)
        assert second.returncode == 1 and "another engine is running" in second.stderr
    finally:
        eng.send_signal(signal.SIGTERM)
        eng.communicate(timeout=60)


def test_bad_source_spec_is_a_clear_error(tmp_path):
    for spec in ("nope:x", "lobster:/does/not/exist.csv", "synthetic:abc"):
        proc = ev("start", "--source", spec, "--data-dir", str(tmp_path), check=False)
        assert proc.returncode == 2 and "error:" in proc.stderr


def test_malformed_lobster_rows_are_logged_rejected_and_the_engine_goes_on(tmp_path):
    msgs = tmp_path / "TEST_2012-06-21_34200000_57600000_message_1.csv"
    msgs.write_text(
        "34200.1,1,11,100,5000000,1\n"
        "garbage line\n"
        "34200.2,1,12,abc,5000100,-1\n"
        "34200.3,9,13,100,5000100,-1\n"
        "34200.4,1,14,99999999999999999999999,5000100,-1\n"
        "34200.5,1,15,100,5000100,-1\n"
        "34200.6,3,11,100,5000000,1\n")
    summary = run_to_end(tmp_path / "d", f"lobster:{msgs}")
    assert summary["commands"] >= 6 and summary["rejects"] >= 3
    events = [json.loads(line) for line in ev("replay", "--data-dir", str(tmp_path / "d")).stdout.splitlines()]
    bad = [e for e in events if e["type"] == "bad_input"]
    rejected = [e for e in events if e["type"] == "rejected"]
    assert len(bad) >= 3 and len(rejected) >= 3
    assert all(e["error"] for e in bad)
    assert [e["type"] for e in events if e["type"] in ("place", "cancel")].count("place") == 2
    book = json.loads(ev("inspect", "--data-dir", str(tmp_path / "d"), "--at-seq", str(summary["last_seq"]),
                         "--symbol", "TEST", "--json").stdout)
    assert book["bids"] == [] and book["asks"] == [[5000100, 100]]


def test_corrupt_wal_refuses_to_start_naming_segment_and_offset(tmp_path):
    from eventstore import list_segments
    from tests.support.files import flip_byte
    run_to_end(tmp_path, "synthetic:5000:4", "--batch-max", "64")
    seg = list_segments(str(tmp_path / "wal"))[-1].path
    flip_byte(seg, 300, 0x08)
    proc = ev("start", "--source", "synthetic:6000:4", "--data-dir", str(tmp_path), "--json", check=False)
    assert proc.returncode == 1
    assert seg in proc.stderr and "Traceback" not in proc.stderr
    verify = ev("verify", "--data-dir", str(tmp_path), check=False)
    assert verify.returncode == 1 and seg in verify.stderr


def test_read_commands_on_an_empty_data_dir_say_so(tmp_path):
    for args in (("replay",), ("verify",), ("inspect", "--at-seq", "1", "--symbol", "X")):
        proc = ev(*args, "--data-dir", str(tmp_path / "none"), check=False)
        assert proc.returncode == 1 and "no evengine data" in proc.stderr


def test_inspect_at_time_at_level_l3_and_one_orders_life(tmp_path):
    from recovery import open_data_dir
    run_to_end(tmp_path, "synthetic:5000:4", "--snapshot-every", "1500")
    history = open_data_dir(str(tmp_path))
    # The synthetic flow stamps command i at i * 1,000 ns.
    seq = history.seq_at_time(3_000_000)
    at_time = json.loads(ev("inspect", "--data-dir", str(tmp_path), "--at-time", "3000000", "--symbol", "SYN",
                            "--depth", "5", "--json").stdout)
    assert at_time == history.book_at(seq, "SYN", 5)
    orders = json.loads(ev("inspect", "--data-dir", str(tmp_path), "--at-seq", str(seq), "--symbol", "SYN",
                           "--depth", "5", "--level", "L3", "--json").stdout)
    per_level: dict = {}
    for o in orders:
        per_level[o["side"], o["price"]] = per_level.get((o["side"], o["price"]), 0) + o["qty"]
    assert sorted(per_level.items()) == sorted([(("bid", p), q) for p, q in at_time["bids"]]
                                               + [(("ask", p), q) for p, q in at_time["asks"]])
    maker = int(history.trades(1, None, "SYN")["maker_order_id"].iloc[0])
    life = json.loads(ev("order", str(maker), "--data-dir", str(tmp_path), "--symbol", "SYN", "--json").stdout)
    assert life[0]["event"] in ("placed", "rested") and any(e["event"] == "fill" for e in life)
    both = ev("inspect", "--data-dir", str(tmp_path), "--at-seq", "5", "--at-time", "5", "--symbol", "SYN", check=False)
    assert both.returncode == 2 and "exactly one" in both.stderr
    unknown = ev("order", "999999999", "--data-dir", str(tmp_path), "--symbol", "SYN", check=False)
    assert unknown.returncode == 1 and "no order 999999999" in unknown.stderr


def test_funded_synthetic_run_balances_equal_deposits_and_survive_snapshot_recovery(tmp_path):
    """`start --accounts 1000` funds 1,000 accounts with risk on; `balances
    --json` gives per-asset totals equal to deposits minus withdrawals, now
    and at any earlier seq; a snapshot + WAL delta recovery gives the state
    (balances included) of a full replay."""
    full = run_to_end(tmp_path / "full", "synthetic:30000:3", "--accounts", "1000", "--snapshot-every", "0")
    snap = run_to_end(tmp_path / "snap", "synthetic:30000:3", "--accounts", "1000", "--snapshot-every", "7000")
    assert snap["state_hash"] == full["state_hash"] and snap["snapshots"] >= 3
    assert full["rejects"] > 0                        # some orders were not covered by their account
    report = json.loads(ev("balances", "--data-dir", str(tmp_path / "snap"), "--json").stdout)
    assert report["seq"] == full["last_seq"] and report["totals_equal_supply"]
    deposits = {"USD": 0, "BASE": 0}
    for line in ev("replay", "--data-dir", str(tmp_path / "snap"), "--to-seq", "3000").stdout.splitlines():
        e = json.loads(line)
        if e["type"] == "deposit":
            deposits[e["asset"]] += e["amount"]
    assert {a: t["total"] for a, t in report["totals"].items()} == deposits
    assert {a: t["deposits_minus_withdrawals"] for a, t in report["totals"].items()} == deposits
    assert all(t["held"] > 0 for t in report["totals"].values())      # resting orders hold funds
    assert {r["account"] for r in report["balances"]} == set(range(0, 1001))   # 0: the fee account
    # a restart from the snapshot reads the same balances
    again = run_to_end(tmp_path / "snap", "synthetic:30000:3", "--accounts", "1000")
    assert again["commands"] == 0 and again["state_hash"] == full["state_hash"]
    one = json.loads(ev("balances", "--data-dir", str(tmp_path / "snap"), "--account", "7", "--json",
                        "--at-seq", "1500").stdout)
    assert one["seq"] == 1500 and {r["account"] for r in one["balances"]} == {7}
    assert sum(r["held"] for r in one["balances"]) == 0   # seq 1500: still the deposits
    text = ev("balances", "--data-dir", str(tmp_path / "snap"), "--account", "7").stdout
    assert "deposits - withdrawals" in text and "USD" in text


def test_accounts_only_for_a_synthetic_source(tmp_path):
    messages = tmp_path / "AAPL_2012-06-21_34200000_57600000_message_1.csv"
    messages.write_text("34200.0,1,1,100,5850000,1\n")
    proc = ev("start", "--source", f"lobster:{messages}", "--accounts", "5", "--data-dir", str(tmp_path / "d"),
              check=False)
    assert proc.returncode == 2 and "--accounts applies to synthetic sources only" in proc.stderr


# ------------------------------------------------ names beside codes (engine.io.names)
def _replay(data_dir) -> list:
    return [json.loads(line) for line in ev("replay", "--data-dir", str(data_dir)).stdout.splitlines()]


def test_replay_names_every_kind_and_every_reject_reason(tmp_path):
    from engine.core import KIND_NAMES, RejectReason
    run_to_end(tmp_path, "synthetic:5000:3", "--accounts", "50")
    events = _replay(tmp_path)
    assert all(list(e)[:3] == ["seq", "kind", "type"] and e["type"] == KIND_NAMES[e["kind"]] for e in events)
    rejected = [e for e in events if e["type"] == "rejected"]
    assert rejected and all(e["kind"] == 65 for e in rejected)
    assert all(e["reason_name"] == RejectReason(e["reason"]).name for e in rejected)
    assert {e["reason_name"] for e in rejected} == {"UNKNOWN_ORDER", "INSUFFICIENT_FUNDS"}
    one = next(e for e in rejected if e["reason"] == 400)
    keys = list(one)
    assert keys[keys.index("reason") + 1] == "reason_name" and one["reason_name"] == "INSUFFICIENT_FUNDS"
    assert all("reason_name" not in e for e in events if e["type"] != "rejected")


def test_replay_names_a_malformed_rows_reject(tmp_path):
    msgs = tmp_path / "TEST_2012-06-21_34200000_57600000_message_1.csv"
    msgs.write_text("34200.1,1,11,100,5000000,1\ngarbage line\n34200.6,3,11,100,5000000,1\n")
    run_to_end(tmp_path / "d", f"lobster:{msgs}")
    (rej,) = [e for e in _replay(tmp_path / "d") if e["type"] == "rejected"]
    assert (rej["kind"], rej["reason"], rej["reason_name"]) == (65, 100, "MALFORMED")


def test_order_json_names_reject_and_cancel_reasons(tmp_path):
    run_to_end(tmp_path, "synthetic:5000:3", "--accounts", "50")
    events = _replay(tmp_path)
    refused = next(e for e in events if e["type"] == "rejected" and e["reason"] == 400)
    cancel = next(e for e in events if e["type"] == "cancel"
                  and not any(r["type"] == "rejected" and r["cmd_seq"] == e["seq"] for r in events))

    def life(order_id: int) -> list:
        return json.loads(ev("order", str(order_id), "--data-dir", str(tmp_path), "--symbol", "SYN",
                             "--json").stdout)
    rows = life(refused["order_id"])
    (rej,) = [r for r in rows if r["event"] == "rejected"]
    assert (rej["detail"], rej["reason"], rej["reason_name"]) == (400, 400, "INSUFFICIENT_FUNDS")
    rows = life(cancel["order_id"])
    (cxl,) = [r for r in rows if r["event"] == "cancelled"]
    assert (cxl["detail"], cxl["reason"], cxl["reason_name"]) == ("user", 1, "USER")
    assert all(r["reason"] is None and r["reason_name"] is None for r in rows
               if r["event"] not in ("rejected", "cancelled"))
    assert list(rows[0])[-3:] == ["detail", "reason", "reason_name"]


def test_print_trades_lines_carry_kind_and_type(tmp_path):
    out = ev("start", "--source", "synthetic:3000:4", "--data-dir", str(tmp_path), "--no-progress", "--json",
             "--print-trades").stdout.splitlines()
    summary, trades = json.loads(out[-1]), [json.loads(line) for line in out[:-1]]
    assert len(trades) == summary["trades"] > 0
    assert all(list(t)[:3] == ["seq", "kind", "type"] and (t["kind"], t["type"]) == (64, "trade") for t in trades)
    logged = {e["seq"]: e for e in _replay(tmp_path) if e["type"] == "trade"}
    assert {t["seq"]: t for t in trades} == logged


def test_index_writes_keyframes_that_later_inspects_start_from(tmp_path):
    from recovery import open_data_dir
    run_to_end(tmp_path, "synthetic:30000:4", "--snapshot-every", "0", "--segment-size-mb", "0.25")
    report = json.loads(ev("index", "--data-dir", str(tmp_path), "--every", "5000", "--json").stdout)
    last = report["last_seq"]
    assert report["written"] == report["keyframes"] >= last // 5000 - 1 and report["bytes"] > 0
    assert report["replayed_events"] == last
    again = json.loads(ev("index", "--data-dir", str(tmp_path), "--every", "5000", "--json").stdout)
    assert again["written"] == 0 and again["replayed_events"] < 5000 + 64     # only the tail after the last one
    for seq in (7_777, last - 3, 20_001):
        h = open_data_dir(str(tmp_path), max_replay=10**9)
        h.timeline.seek(seq)
        assert h.stats.last_base[0] == "keyframe file" and h.stats.last_replayed <= 5000 + 64
        truth = open_data_dir(str(tmp_path), max_replay=10**9)
        truth.timeline.files = None                   # from the empty state, no keyframe file
        want = truth.matcher_at(seq).state_hash()
        shown = json.loads(ev("inspect", "--data-dir", str(tmp_path), "--at-seq", str(seq), "--symbol", "SYN",
                              "--depth", "3", "--json").stdout)
        assert shown == h.book_at(seq, "SYN", 3) and h.state_hash(seq) == want
    bad = ev("index", "--data-dir", str(tmp_path), "--every", "0", check=False)
    assert bad.returncode == 2


@pytest.mark.parametrize("choice, expect", [(None, "uvloop"), ("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_a_service_runs_on_the_event_loop_chosen_and_says_which(tmp_path, choice, expect):
    import httpx
    env = {k: v for k, v in os.environ.items() if k != "EVENGINE_EVENT_LOOP"}
    if choice is not None:
        env["EVENGINE_EVENT_LOOP"] = choice
    proc = subprocess.Popen([*EV, "start", "--http", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
                             "--add-symbol", "AAA", "--snapshot-every", "0", "--no-verbose"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event_loop"] == expect
        r = httpx.post(f"http://127.0.0.1:{ready['http_port']}/orders", timeout=30,
                       json={"symbol": "AAA", "side": "buy", "price": 10, "qty": 1})
        assert r.status_code == 200 and r.json()["status"] == "resting"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()


def test_an_unknown_event_loop_is_refused_with_one_line(tmp_path):
    proc = ev("start", "--http", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"), check=False,
              env=dict(os.environ, EVENGINE_EVENT_LOOP="tokio"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: EVENGINE_EVENT_LOOP must be 'uvloop' or 'asyncio', got 'tokio'"
    assert not (tmp_path / "d").exists()
