"""OrderBook and PriceLevel: one symbol's bids and asks, price-time priority.

Books are drawn as ladders (``tests/support/ladder.py``); every test checks
the book's invariants after each step.
"""

from __future__ import annotations

import pytest

from engine.core import BookIntegrityError, Kind, OrderBook, PriceLevel, RestingOrder
from tests.support.ladder import book_from_ladder, ladder, ladder_of, parse_ladder

BUY, SELL = 1, 2


def book_of(text: str, tick_size: int = 1) -> OrderBook:
    book = book_from_ladder(text, tick_size=tick_size).books["X"]
    book.check_invariants()
    return book


def match(book: OrderBook, side: int, limit, qty: int, taker_id: int = 100, match_id: int = 0):
    out: list = []
    leaves, last = book.match(side, limit, qty, taker_id, 7, 123, 55, match_id, out)
    book.check_invariants()
    return leaves, last, out


# ------------------------------------------------------------------ ladder
def test_ladder_ids_follow_reading_order_and_skip_explicit_ids():
    drawn = "bid|price|ask\n  |1600|7 1#2\n 4|1550| \n 5,6|1500|"
    assert parse_ladder(drawn) == [(1, SELL, 1600, 7), (2, SELL, 1600, 1), (3, BUY, 1550, 4),
                                   (4, BUY, 1500, 5), (5, BUY, 1500, 6)]
    assert ladder_of(book_of(drawn), ids=True) == "bid|price|ask\n|1600|7#1 1#2\n4#3|1550|\n5#4 6#5|1500|"


def test_ladder_round_trips_through_a_book():
    assert ladder("bid|price|ask\n  |1600|7\n 4|1550| ") == "bid|price|ask\n|1600|7\n4|1550|"


def test_ladder_that_crosses_is_refused():
    with pytest.raises(ValueError):
        book_from_ladder("bid|price|ask\n 4|1600|\n  |1550|7")


def test_ladder_without_header_is_refused():
    with pytest.raises(ValueError):
        parse_ladder("  |1600|7")


# ---------------------------------------------------------------- queries
def test_empty_book_has_no_best_prices():
    book = OrderBook("X")
    assert book.best_bid() is None and book.best_ask() is None
    assert book.depth(BUY) == [] and book.depth(SELL) == []
    assert not book.crosses(BUY, 10**12) and not book.crosses(SELL, 1)
    assert not book.fillable(BUY, None, 1)
    book.check_invariants()


def test_best_prices_and_depth_are_best_first():
    book = book_of("bid|price|ask\n |1700|1\n |1600|7 3\n4 1|1550|\n2|1500|")
    assert book.best_bid() == 1550 and book.best_ask() == 1600
    assert book.depth(BUY) == [[1550, 5], [1500, 2]]
    assert book.depth(SELL) == [[1600, 10], [1700, 1]]
    assert book.depth(SELL, max_levels=1) == [[1600, 10]]
    assert [lv.price for lv in book.levels(BUY)] == [1550, 1500]


def test_crosses_at_and_through_the_touch():
    book = book_of("bid|price|ask\n |1600|7\n4|1550|")
    assert book.crosses(BUY, 1600) and book.crosses(BUY, 1700) and not book.crosses(BUY, 1599)
    assert book.crosses(SELL, 1550) and book.crosses(SELL, 1) and not book.crosses(SELL, 1551)


def test_fillable_counts_only_acceptable_prices():
    book = book_of("bid|price|ask\n |1700|5\n |1600|7\n4|1550|\n6|1500|")
    assert book.fillable(BUY, 1600, 7) and not book.fillable(BUY, 1600, 8)
    assert book.fillable(BUY, 1700, 12) and not book.fillable(BUY, 1700, 13)
    assert book.fillable(BUY, None, 12) and not book.fillable(BUY, None, 13)
    assert book.fillable(SELL, 1500, 10) and not book.fillable(SELL, 1501, 5)


# -------------------------------------------------------------- mutations
def test_rest_appends_to_the_tail_of_its_level():
    book = book_of("bid|price|ask\n4#1|1550|")
    book.rest(RestingOrder(2, BUY, 1550, 3, 0))
    book.check_invariants()
    assert ladder_of(book, ids=True) == "bid|price|ask\n4#1 3#2|1550|"


def test_remove_last_order_drops_the_level():
    book = book_of("bid|price|ask\n |1600|7\n4|1550|")
    book.remove(book.orders[1])
    book.check_invariants()
    assert book.best_ask() is None and 1600 not in book.ask_levels
    assert ladder_of(book) == "bid|price|ask\n4|1550|"


def test_reduce_keeps_place_in_queue():
    book = book_of("bid|price|ask\n |1600|7 5")
    book.reduce(book.orders[1], 2)
    book.check_invariants()
    assert ladder_of(book, ids=True) == "bid|price|ask\n|1600|2#1 5#2"
    assert book.depth(SELL) == [[1600, 7]]


# ------------------------------------------------------------------ match
def test_match_takes_oldest_first_at_makers_price():
    book = book_of("bid|price|ask\n |1600|3 4\n4|1550|")
    leaves, last, trades = match(book, BUY, 1700, 5, match_id=10)
    assert leaves == 0 and last == 12
    assert [(t.match_id, t.price, t.qty, t.maker_order_id, t.taker_order_id) for t in trades] == [
        (11, 1600, 3, 1, 100), (12, 1600, 2, 2, 100)]
    assert all(t.kind == Kind.TRADE and t.cmd_seq == 55 and t.taker_side == BUY for t in trades)
    assert ladder_of(book) == "bid|price|ask\n|1600|2\n4|1550|"


def test_match_stops_at_the_limit():
    book = book_of("bid|price|ask\n |1700|5\n |1600|7")
    leaves, last, trades = match(book, BUY, 1650, 10)
    assert leaves == 3 and last == 1 and [t.qty for t in trades] == [7]
    assert ladder_of(book) == "bid|price|ask\n|1700|5"


def test_match_without_limit_sweeps_every_level():
    book = book_of("bid|price|ask\n5|1550|\n2|1500|\n9|1400|")
    leaves, last, trades = match(book, SELL, None, 10)
    assert leaves == 0 and [(t.price, t.qty) for t in trades] == [(1550, 5), (1500, 2), (1400, 3)]
    assert ladder_of(book) == "bid|price|ask\n6|1400|"


def test_match_on_empty_side_leaves_everything():
    book = book_of("bid|price|ask\n4|1550|")
    assert match(book, SELL, 1600, 3) == (3, 0, [])


def test_lazy_removed_orders_never_trade():
    book = book_of("bid|price|ask\n |1600|1 2 3 4")
    book.remove(book.orders[1])          # the head
    book.remove(book.orders[3])          # the middle
    book.check_invariants()
    assert book.depth(SELL) == [[1600, 6]]
    _, _, trades = match(book, BUY, 1600, 6)
    assert [(t.maker_order_id, t.qty) for t in trades] == [(2, 2), (4, 4)]
    assert book.orders == {} and book.best_ask() is None


def test_lazy_removed_orders_are_compacted_and_priority_kept():
    book = OrderBook("X")
    for order_id in range(1, 101):
        book.rest(RestingOrder(order_id, SELL, 1600, 1, 0))
    for order_id in range(1, 100, 2):    # remove every odd id: forces compaction
        book.remove(book.orders[order_id])
        book.check_invariants()
    level = book.ask_levels[1600]
    assert len(level.queue) <= 2 * level.count + 33
    assert [o.order_id for o in level.live()] == list(range(2, 101, 2))
    _, _, trades = match(book, BUY, 1600, 3)
    assert [t.maker_order_id for t in trades] == [2, 4, 6]


def test_id_reused_after_remove_does_not_revive_the_old_entry():
    book = book_of("bid|price|ask\n |1600|5#1 2#2")
    book.remove(book.orders[1])
    book.rest(RestingOrder(1, SELL, 1600, 3, 0))
    book.check_invariants()
    assert ladder_of(book, ids=True) == "bid|price|ask\n|1600|2#2 3#1"
    _, _, trades = match(book, BUY, 1600, 5)
    assert [(t.maker_order_id, t.qty) for t in trades] == [(2, 2), (1, 3)]


def test_export_orders_is_bids_then_asks_best_first_oldest_first():
    book = book_of("bid|price|ask\n |1700|1\n |1600|7 3\n4 1|1550|\n2|1500|")
    assert book.export_orders() == [
        [4, BUY, 1550, 4, 0], [5, BUY, 1550, 1, 0], [6, BUY, 1500, 2, 0],
        [2, SELL, 1600, 7, 0], [3, SELL, 1600, 3, 0], [1, SELL, 1700, 1, 0]]


def test_price_level_live_skips_removed_orders():
    level = PriceLevel(1600)
    a, b = RestingOrder(1, SELL, 1600, 0, 0), RestingOrder(2, SELL, 1600, 3, 0)
    level.queue.extend([a, b])
    assert list(level.live()) == [b]


# ------------------------------------------------------ check_invariants
def corrupted(how):
    book = book_of("bid|price|ask\n |1700|1\n |1600|7 3\n4 1|1550|")
    how(book)
    return book


@pytest.mark.parametrize("how", [
    pytest.param(lambda b: setattr(b.ask_levels[1600], "qty", 11), id="level-qty"),
    pytest.param(lambda b: setattr(b.bid_levels[1550], "count", 1), id="level-count"),
    pytest.param(lambda b: b.bid_prices.add(1400), id="price-without-level"),
    pytest.param(lambda b: b.ask_prices.remove(1700), id="level-without-price"),
    pytest.param(lambda b: b.orders.pop(2), id="order-not-indexed"),
    pytest.param(lambda b: b.orders.__setitem__(99, RestingOrder(99, BUY, 1550, 1, 0)), id="indexed-not-on-book"),
    pytest.param(lambda b: setattr(b.orders[2], "price", 1650), id="order-at-wrong-price"),
    pytest.param(lambda b: setattr(b.orders[4], "side", SELL), id="order-on-wrong-side"),
    pytest.param(lambda b: b.rest(RestingOrder(50, BUY, 1700, 1, 0)), id="crossed"),
    pytest.param(lambda b: b.rest(RestingOrder(2, SELL, 1600, 1, 0)), id="duplicate-id"),
    pytest.param(lambda b: setattr(b.ask_levels[1700], "price", 1701), id="mislabelled-level"),
    pytest.param(lambda b: b.ask_levels[1700].queue.clear(), id="empty-level"),
    pytest.param(lambda b: setattr(b.orders[4], "qty", -1), id="negative-qty"),
])
def test_check_invariants_catches_a_corrupted_book(how):
    with pytest.raises(BookIntegrityError) as info:
        corrupted(how).check_invariants()
    assert info.value.symbol == "X" and info.value.detail


def test_load_orders_builds_the_same_book_as_resting_one_by_one():
    import random as _random
    _Book, _Order = OrderBook, RestingOrder
    rng = _random.Random(5)
    one = _Book("X", 1)
    for oid in range(1, 2001):
        side = rng.choice((1, 2))
        price = rng.randint(90, 99) if side == 1 else rng.randint(100, 110)
        one.rest(_Order(oid, side, price, rng.randint(1, 9), rng.randint(1, 5)))
    for oid in rng.sample(range(1, 2001), 500):      # lazily removed orders stay in their queues
        one.remove(one.orders[oid])
    bulk = _Book("X", 1)
    bulk.load_orders(one.export_orders())
    bulk.check_invariants()
    assert bulk.export_orders() == one.export_orders()
    assert (bulk.top_bid, bulk.top_ask, list(bulk.bid_prices), list(bulk.ask_prices)) == \
        (one.top_bid, one.top_ask, list(one.bid_prices), list(one.ask_prices))
    assert [(lv.price, lv.qty, lv.count) for lv in bulk.levels(1)] == [(lv.price, lv.qty, lv.count) for lv in one.levels(1)]
    with pytest.raises(BookIntegrityError):
        bulk.load_orders([[9999, 1, 95, 1, 1]])
