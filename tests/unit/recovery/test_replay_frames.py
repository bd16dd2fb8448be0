"""The bulk replay (``Replayer.feed_frames``) is the per-event one (``feed``) in
other clothes: the same state, counts, pending events, mismatches and errors,
wherever the frame boundaries fall and whatever was tampered with."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from engine.core import LOGGED_KINDS, Matcher
from engine.io.synthetic import SyntheticSource
from recovery import ReplayMismatchError, Replayer


def wal_events(n: int, seed: int) -> list:
    """``(seq, payload)`` as the engine logs them: each command, then its trades
    or reject, as plain tuples (what msgpack gives back)."""
    m = Matcher()
    events = []
    for cmd in SyntheticSource(n, seed).commands(m, None):
        seq = m.last_seq + 1
        out = m.apply(seq, cmd)
        events.append((seq, tuple(cmd)))
        events += [(seq + 1 + i, tuple(e)) for i, e in enumerate(e for e in out if e[0] in LOGGED_KINDS)]
    return events


def frames_of(events: list, cuts: list) -> list:
    """Cut ``events`` into frames at the given positions: ``[(first seq, payloads)]``."""
    bounds = sorted({c % len(events) for c in cuts} | {0}) + [len(events)]
    return [(events[a][0], tuple(p for _, p in events[a:b])) for a, b in zip(bounds, bounds[1:]) if b > a]


def outcome(events: list, feed, strict: bool):
    rp = Replayer(Matcher(), strict=strict)
    try:
        feed(rp)
    except ReplayMismatchError as exc:
        return ("error", str(exc), rp.matcher.last_seq)
    return (rp.matcher.state_hash(), rp.events, rp.commands, rp.checked, list(rp.pending),
            [(x.seq, x.expected, x.actual) for x in rp.mismatches])


def tamper(events: list, at: int, how: str) -> list:
    events = list(events)
    seq, payload = events[at]
    if how == "change":
        events[at] = (seq, payload[:-1] + (payload[-1] + 1,) if type(payload[-1]) is int else payload + (0,))
    elif how == "drop":   # an event missing, the seqs after it consecutive again
        events = events[:at] + [(s - 1, p) for s, p in events[at + 1:]]
    return events


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(1, 10_000), cuts=st.lists(st.integers(0, 10**6), max_size=40),
       strict=st.booleans(), how=st.sampled_from(["none", "change", "drop"]), at=st.integers(0, 10**6))
def test_feed_frames_gives_what_feed_gives(seed, cuts, strict, how, at):
    events = wal_events(400, seed)
    if how != "none":
        logged = [i for i, (_, p) in enumerate(events) if p[0] in LOGGED_KINDS]
        target = logged[at % len(logged)] if how == "change" and logged else at % len(events)
        events = tamper(events, target, how)
    frames = frames_of(events, cuts)
    assert sum(len(p) for _, p in frames) == len(events)

    def per_event(rp):
        rp.feed_all(events)

    def bulk(rp):
        rp.feed_frames(frames)

    assert outcome(events, bulk, strict) == outcome(events, per_event, strict)


def test_a_command_whose_trades_wait_in_the_next_frame_is_checked():
    events = wal_events(2_000, 7)
    starts = [i for i, (_, p) in enumerate(events)
              if p[0] not in LOGGED_KINDS and i + 1 < len(events) and events[i + 1][1][0] in LOGGED_KINDS]
    assert starts, "the flow has trades"
    frames = frames_of(events, [starts[0] + 1, starts[len(starts) // 2] + 1])
    rp = Replayer(Matcher()).feed_frames(frames)
    assert rp.checked == sum(1 for _, p in events if p[0] in LOGGED_KINDS)
    assert not rp.pending and rp.events == len(events)


def test_a_changed_trade_in_the_middle_of_a_frame_stops_the_bulk_replay_at_its_seq():
    events = wal_events(2_000, 3)
    i = next(i for i, (_, p) in enumerate(events) if p[0] in LOGGED_KINDS and i > 100)
    events = tamper(events, i, "change")
    with pytest.raises(ReplayMismatchError) as err:
        Replayer(Matcher()).feed_frames(frames_of(events, []))
    assert err.value.seq == events[i][0]
