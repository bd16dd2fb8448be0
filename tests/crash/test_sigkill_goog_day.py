"""The issue's acceptance run: `evengine start` on the GOOG 2012-06-21 day with a
snapshot every 20,000 events, SIGKILLed at a random moment, started again: the
same state hash as an uninterrupted run, and a WAL that verifies."""

from __future__ import annotations

import os
import random

from recovery import verify
from tests.support.crash import kill_after, run_to_end, start

ARGS = ("--snapshot-every", "20000")


def test_goog_day_killed_and_restarted_matches_uninterrupted(tmp_path, goog_files):
    messages, orderbook = goog_files
    source = f"lobster:{messages}:{orderbook}"
    reference = run_to_end(tmp_path / "ref", source, *ARGS)
    assert reference["trades"] > 7_000

    seed = int(os.environ.get("EVENGINE_CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash seed {seed}")
    rng = random.Random(seed)
    data = tmp_path / "killed"
    kills = 0
    summary = None
    while summary is None:
        delay = rng.uniform(0.5, 0.5 + reference["seconds"] * 0.8) if kills < 2 else 600
        summary = kill_after(start(data, source, *ARGS), delay)
        kills += summary is None
    assert kills >= 1
    assert summary["state_hash"] == reference["state_hash"]
    assert summary["match_sequence"] == reference["match_sequence"]
    report = verify(str(data))
    assert report["mismatches"] == 0 and report["state_hash"] == reference["state_hash"]
