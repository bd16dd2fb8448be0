"""Hypothesis: whatever events go into the WAL, in whatever batches and segment
sizes, come back out equal and in order, from any starting sequence number."""

from __future__ import annotations

import tempfile

from hypothesis import given, settings, strategies as st

from eventstore import WalReader, WalWriter

scalars = st.one_of(st.integers(-2**63, 2**64 - 1), st.text(max_size=20), st.booleans(), st.none(),
                    st.binary(max_size=20))
payloads = st.tuples(st.integers(1, 127), st.lists(scalars, max_size=6).map(tuple)).map(lambda t: (t[0], *t[1]))


@settings(max_examples=40, deadline=None)
@given(events=st.lists(payloads, min_size=1, max_size=300), cuts=st.lists(st.integers(1, 50), min_size=1),
       segment_size=st.integers(64, 4096), start=st.integers(1, 10**12), from_offset=st.integers(0, 299))
def test_wal_roundtrip(events, cuts, segment_size, start, from_offset):
    with tempfile.TemporaryDirectory() as d:
        w = WalWriter(d, start, segment_size_bytes=segment_size)
        i = 0
        k = 0
        for ev in events:
            w.append(ev)
            i += 1
            if i >= cuts[k % len(cuts)]:
                w.flush()
                i = 0
                k += 1
        w.close()
        reader = WalReader(d)
        assert reader.scan().last_seq == start + len(events) - 1
        got = list(reader.read(start))
        assert got == [(start + n, ev) for n, ev in enumerate(events)]
        f = start + min(from_offset, len(events) - 1)
        assert [s for s, _ in reader.read(f)] == list(range(f, start + len(events)))
