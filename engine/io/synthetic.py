"""A seeded synthetic order flow, for benchmarks, tests and demos.

The mix of ``shared/PERFORMANCE.md``: 70% limit orders near a drifting mid
(size 1-100 lots), 25% cancels of recently placed orders, 5% marketable
orders (IOC limits through the touch). Roughly 0.5 trades per command.
Deterministic for a given ``seed``; the choice of what to cancel never looks
at the book, so a resumed source regenerates exactly the same commands.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Optional

from engine.core import AddSymbol, CancelOrder, Command, Matcher, PlaceOrder

__all__ = ["SyntheticSource"]


class SyntheticSource:
    """``n`` seeded commands on one symbol.

    Args:
        n: number of order commands (plus one ``AddSymbol`` if needed).
        seed: RNG seed; printed by tests and benchmarks.
        symbol: the book's symbol; prices around 100,000 ticks (tick 1).
    """

    def __init__(self, n: int, seed: int = 1, symbol: str = "SYN", mid: int = 100_000) -> None:
        self.n = n
        self.seed = seed
        self.symbol = symbol
        self.mid = mid
        self.name = f"synthetic:{symbol}:{seed}"
        self.total: Optional[int] = n

    def commands(self, matcher: Matcher, after: Optional[Any]) -> Iterator[Command]:
        name, symbol = self.name, self.symbol
        start = -1 if after is None else after
        if symbol not in matcher.books:
            yield AddSymbol(1, 0, symbol, 1, None, None)  # idempotent: guarded by the check above
        rng = random.Random(self.seed)
        rand = rng.random
        randint = rng.randint
        mid = self.mid
        pool: list[int] = []
        next_id = 1
        for i in range(self.n):
            r = rand()
            ts = i * 1000
            if r < 0.70:
                side = 1 if rand() < 0.5 else 2
                offset = randint(-4, 40)
                price = mid - offset if side == 1 else mid + offset
                cmd: Command = PlaceOrder(2, ts, symbol, next_id, side, 1, 1, price, randint(1, 100), False, 0, name, i)
                pool.append(next_id)
                next_id += 1
            elif r < 0.95 and pool:
                j = randint(0, len(pool) - 1)
                pool[j], pool[-1] = pool[-1], pool[j]
                cmd = CancelOrder(3, ts, symbol, pool.pop(), name, i)
            else:
                side = 1 if rand() < 0.5 else 2
                price = mid + 60 if side == 1 else mid - 60
                cmd = PlaceOrder(2, ts, symbol, next_id, side, 1, 2, price, randint(50, 400), False, 0, name, i)
                next_id += 1
            if rand() < 0.01:
                mid += randint(-3, 3)
            if i > start:
                yield cmd

    def close(self) -> None:
        pass
