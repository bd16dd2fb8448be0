"""The simulated LOBSTER market (``tests/support/lobster_market.py``) itself.

These tests check the generator, not the engine: its files are LOBSTER's
format, its book is a valid book, each written row follows from the one
before it and its message, the same seed writes the same bytes, and a
smaller level count is the top of a larger one from the same simulation.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.lobster_market import (DUMMY_ASK_PRICE, DUMMY_BID_PRICE, ID_LIMIT, MarketConfig,
                                          derive_levels, write_day, write_days)

LEVELS = (1, 2, 5, 10, 50)
SEED = 7
TIME_RE = re.compile(r"\d{5}\.\d{1,9}")


def read_messages(path: Path) -> list[tuple[str, list[int]]]:
    """``[(raw line, [time_ns, type, order_id, size, price, direction])]``."""
    out = []
    for line in path.read_text(encoding="ascii").splitlines():
        cols = line.split(",")
        assert len(cols) == 6, line
        assert TIME_RE.fullmatch(cols[0]), line
        seconds, _, frac = cols[0].partition(".")
        out.append((line, [int(seconds) * 10**9 + int(frac.ljust(9, "0"))] + [int(c) for c in cols[1:]]))
    return out


def read_books(path: Path, levels: int) -> list[tuple[str, list, list]]:
    """``[(raw line, asks, bids)]``, each side ``[(price, size)]`` best first, dummies dropped."""
    out = []
    for line in path.read_text(encoding="ascii").splitlines():
        vals = [int(c) for c in line.split(",")]
        assert len(vals) == 4 * levels, line
        asks = [(p, s) for p, s in zip(vals[0::4], vals[1::4]) if p != DUMMY_ASK_PRICE]
        bids = [(p, s) for p, s in zip(vals[2::4], vals[3::4]) if p != DUMMY_BID_PRICE]
        for k in range(levels):
            if k >= len(asks):
                assert (vals[4 * k], vals[4 * k + 1]) == (DUMMY_ASK_PRICE, 0), line
            if k >= len(bids):
                assert (vals[4 * k + 2], vals[4 * k + 3]) == (DUMMY_BID_PRICE, 0), line
        out.append((line, asks, bids))
    return out


@pytest.fixture(scope="module", params=[100, 1], ids=["cent", "subpenny"])
def days(request, tmp_path_factory) -> dict:
    """One simulation per tick, written at every level count of ``LEVELS``."""
    tick = request.param
    config = MarketConfig(seed=SEED, rows=6000, levels=10, tick=tick)
    print(f"seed {SEED}, tick {tick}")
    written = write_days(tmp_path_factory.mktemp(f"market{tick}"), config, levels=LEVELS)
    return {lv: (day, read_messages(day.messages), read_books(day.orderbook, lv))
            for lv, day in written.items()}


def small_config(**knobs) -> MarketConfig:
    return MarketConfig(**{"seed": SEED, "rows": 1500, "levels": 5, **knobs})


# ----------------------------------------------------------- determinism
def test_same_config_writes_identical_bytes_and_another_seed_does_not(tmp_path):
    a = write_day(tmp_path / "a", small_config())
    b = write_day(tmp_path / "b", small_config())
    c = write_day(tmp_path / "c", small_config(seed=SEED + 1))
    assert a.messages.read_bytes() == b.messages.read_bytes()
    assert a.orderbook.read_bytes() == b.orderbook.read_bytes()
    assert a.counts == b.counts
    assert a.messages.read_bytes() != c.messages.read_bytes()
    assert a.orderbook.read_bytes() != c.orderbook.read_bytes()


def test_write_day_is_write_days_at_the_reference_level(tmp_path):
    one = write_day(tmp_path / "one", small_config())
    many = write_days(tmp_path / "many", small_config(), levels=(50, 5, 2))[5]
    assert one.messages.read_bytes() == many.messages.read_bytes()
    assert one.orderbook.read_bytes() == many.orderbook.read_bytes()
    assert one.rows == many.rows == 1500
    assert one.messages.name == "SIM_2012-06-21_34200000_57600000_message_5.csv"
    assert one.orderbook.name == "SIM_2012-06-21_34200000_57600000_orderbook_5.csv"


def test_the_reference_level_gets_exactly_rows_and_the_others_their_own(days):
    for lv, (day, messages, books) in days.items():
        assert day.rows == len(messages) == len(books)
    assert days[10][0].rows == 6000
    assert [days[lv][0].rows for lv in LEVELS] == sorted(days[lv][0].rows for lv in LEVELS)


# ------------------------------------------------------------ well formed
@pytest.mark.parametrize("lv", LEVELS)
def test_every_row_is_well_formed(days, lv):
    day, messages, books = days[lv]
    tick = day.tick
    last_ns = 34_200 * 10**9
    for line, (ns, mtype, order_id, size, price, direction) in messages:
        assert 34_200 * 10**9 < ns < 57_600 * 10**9 and ns >= last_ns, line
        last_ns = ns
        assert 1 <= mtype <= 7, line
        if mtype == 7:
            assert (order_id, size, direction) == (0, 0, -1) and price in (-1, 0, 1), line
            continue
        assert size > 0 and direction in (1, -1) and price > 0 and price % tick == 0, line
        assert (order_id == 0) == (mtype in (5, 6)), line
        assert order_id < ID_LIMIT, line
        if tick < 100:
            assert price < 10_000, line
    for line, asks, bids in books:
        assert all(p % tick == 0 and s > 0 for p, s in asks + bids), line
        assert all(a[0] < b[0] for a, b in zip(asks, asks[1:])), line
        assert all(a[0] > b[0] for a, b in zip(bids, bids[1:])), line
        if asks and bids:
            assert bids[0][0] < asks[0][0], line


@pytest.mark.parametrize("lv", LEVELS)
def test_hidden_cross_and_halt_rows_leave_the_book_unchanged(days, lv):
    _, messages, books = days[lv]
    seen = set()
    for k in range(1, len(messages)):
        mtype = messages[k][1][1]
        if mtype >= 5:
            seen.add(mtype)
            assert books[k][0] == books[k - 1][0], (k, messages[k][0])
    assert seen == {5, 6, 7}


@pytest.mark.parametrize("lv", LEVELS)
def test_new_orders_never_cross_and_executions_hit_the_resting_best(days, lv):
    _, messages, books = days[lv]
    for k in range(1, len(messages)):
        _, mtype, _, size, price, direction = messages[k][1]
        _, asks, bids = books[k - 1]
        if mtype == 1:
            opposite = asks if direction == 1 else bids
            if opposite:
                assert (price < opposite[0][0]) if direction == 1 else (price > opposite[0][0]), messages[k][0]
        elif mtype == 4:
            own = bids if direction == 1 else asks
            assert own and own[0][0] == price and own[0][1] >= size, messages[k][0]


@pytest.mark.parametrize("lv", LEVELS)
def test_each_row_is_the_previous_one_changed_by_its_message(days, lv):
    """Unwritten events are outside the window: between two rows the top L
    changes only by the message, plus levels scrolling in at the bottom."""
    _, messages, books = days[lv]
    scrolled = 0
    for k in range(1, len(messages)):
        _, mtype, _, size, price, direction = messages[k][1]
        _, prev_asks, prev_bids = books[k - 1]
        _, asks, bids = books[k]
        for side, prev, now in ((-1, prev_asks, asks), (1, prev_bids, bids)):
            levels = dict(prev)
            if direction == side and mtype in (1, 2, 3, 4):
                if mtype == 1:  # written iff in the top L after it
                    assert price in dict(now), (k, messages[k][0])
                    levels[price] = levels.get(price, 0) + size
                else:  # written iff in the top L before it
                    assert levels.get(price, 0) >= size, (k, messages[k][0])
                    levels[price] -= size
                    if not levels[price]:
                        del levels[price]
            expected = sorted(levels.items(), reverse=side == 1)[:lv]
            assert now[:len(expected)] == expected, (k, messages[k][0])
            if len(now) > len(expected):
                assert len(prev) == len(now) == lv == len(expected) + 1, (k, messages[k][0])
                scrolled += 1
    if lv > 1:
        assert scrolled > 0


@pytest.mark.parametrize("lv", LEVELS)
def test_sweeps_take_better_prices_first_and_displayed_before_hidden(days, lv):
    """A sweep's rows share a timestamp; prices only get worse for the
    aggressor, and at one price displayed (type 4) fills come before hidden
    (type 5) ones (Nasdaq's rule, the generator's documented choice)."""
    _, messages, _ = days[lv]
    hidden_after_displayed = 0
    for k in range(1, len(messages)):
        ns, mtype, _, _, price, direction = messages[k][1]
        pns, ptype, _, _, pprice, pdirection = messages[k - 1][1]
        if mtype in (4, 5) and ptype in (4, 5) and ns == pns:
            assert direction == pdirection, messages[k][0]
            # direction is the resting side: bids are swept downwards, asks upwards.
            assert (price <= pprice) if direction == 1 else (price >= pprice), messages[k][0]
            if price == pprice:
                assert (ptype, mtype) != (5, 4), messages[k][0]
                hidden_after_displayed += (ptype, mtype) == (4, 5)
    assert hidden_after_displayed > 0


@pytest.mark.parametrize("lv", LEVELS)
def test_halts_freeze_the_book_and_stop_executions_until_resume(days, lv):
    _, messages, _ = days[lv]
    state = "trading"
    for k, (line, (_, mtype, _, _, price, _)) in enumerate(messages):
        if state == "halted":  # at most the resume's cross trade before the next type 7
            assert mtype == 6 or (mtype == 7 and price in (0, 1)), (k, line)
        if state == "quoting":
            assert mtype not in (4, 5), (k, line)
        if mtype == 7:
            state = {-1: "halted", 0: "quoting", 1: "trading"}[price]
    assert state == "trading"


@pytest.mark.parametrize("lv", LEVELS)
def test_new_order_ids_increase_with_time(days, lv):
    _, messages, _ = days[lv]
    ids = [m[2] for _, m in messages if m[1] == 1]
    assert ids == sorted(set(ids)) and ids[-1] < ID_LIMIT


# ------------------------------------------------- one simulation, many L
@pytest.mark.parametrize("small,large", [(1, 50), (2, 5), (5, 50), (10, 50), (1, 2)])
def test_smaller_level_count_is_the_top_of_the_larger_at_the_same_events(days, small, large):
    _, small_msgs, small_books = days[small]
    _, large_msgs, large_books = days[large]
    columns = 4 * small
    j = 0
    top = None
    for i, (line, message) in enumerate(large_msgs):
        cut = ",".join(large_books[i][0].split(",")[:columns])
        if j < len(small_msgs) and small_msgs[j][0] == line:
            assert small_books[j][0] == cut, (i, line)
            j += 1
        else:
            # Outside the small window: a type 1-4 event that leaves its top unchanged.
            assert message[1] <= 4 and top in (None, cut), (i, line)
        top = cut
    assert j == len(small_msgs)


@pytest.mark.parametrize("lv", LEVELS)
def test_every_level_count_has_sweeps_hidden_fills_halts_and_thin_sides(days, lv):
    day, messages, books = days[lv]
    counts = day.counts
    for mtype in range(1, 8):
        assert counts[f"type_{mtype}"] == sum(1 for _, m in messages if m[1] == mtype) > 0, mtype
    sweeps_of_many = sum(1 for k in range(1, len(messages)) if messages[k][1][1] == 4
                         and messages[k - 1][1][1] == 4 and messages[k - 1][1][0] == messages[k][1][0])
    assert sweeps_of_many > 0 and counts["multi_row_sweeps"] > 0
    assert counts["halts"] > 0 and counts["trading_resumed"] == counts["halts"]
    thin = sum(1 for _, asks, bids in books if len(asks) < lv or len(bids) < lv)
    assert counts["thin_rows"] == thin > 0
    assert counts["empty_side_rows"] == sum(1 for _, asks, bids in books if not asks or not bids) > 0
    assert counts["scroll_ins"] > 0 and counts["unseen_ids"] > 0


def test_sub_penny_tick_writes_prices_off_the_cent(days):
    day, messages, books = days[10]
    prices = [m[4] for _, m in messages if m[1] != 7]
    if day.tick == 100:
        assert all(p % 100 == 0 for p in prices)
    else:
        assert any(p % 100 for p in prices) and max(prices) < 10_000
        assert all(p < 10_000 for _, asks, bids in books for p, _ in asks + bids)


# --------------------------------------------------------- derive_levels
def test_derive_levels_keeps_the_first_4k_columns_and_every_message(days, tmp_path):
    day, messages, books = days[10]
    msg_k, ob_k = derive_levels(day.messages, day.orderbook, 5, tmp_path)
    assert msg_k.name == day.messages.name.replace("_message_10", "_message_5")
    assert ob_k.name == day.orderbook.name.replace("_orderbook_10", "_orderbook_5")
    assert msg_k.read_bytes() == day.messages.read_bytes()
    derived = ob_k.read_text(encoding="ascii").splitlines()
    assert derived == [",".join(line.split(",")[:20]) for line, _, _ in books]
    # The real level-5 file is the derived one without the rows between levels 6 and 10.
    real = [line for line, _, _ in days[5][2]]
    it = iter(zip((line for line, _ in messages), derived))
    assert all(any(pair == (m, b) for pair in it) for (m, _), b in zip(days[5][1], real))


def test_derive_levels_refuses_more_levels_than_the_file(days, tmp_path):
    day, _, _ = days[5]
    with pytest.raises(ValueError):
        derive_levels(day.messages, day.orderbook, 6, tmp_path)
    with pytest.raises(ValueError):
        derive_levels(day.messages, day.orderbook, 0, tmp_path)
