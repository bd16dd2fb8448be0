"""A seeded synthetic order flow, for benchmarks, tests and demos.

The mix of ``shared/PERFORMANCE.md``: 70% limit orders near a drifting mid
(size 1-100 lots), 25% cancels of recently placed orders, 5% marketable
orders (IOC limits through the touch). Roughly 0.5 trades per command.
Deterministic for a given ``seed``; the choice of what to cancel never looks
at the book, so a resumed source regenerates exactly the same commands.

With ``accounts=K`` the book has risk on (``engine/core/accounts.py``): the
source adds the assets ``BASE`` (scale 8) and ``USD`` (scale 2) and the symbol
with a lot of 0.01 BASE, a tick worth one cent per lot, fees of 100 ppm
(maker) and 250 ppm (taker) credited to account 0, deposits into accounts
1..K (each a random 200,000-2,000,000 USD and 2-20 BASE), then the same mix
with a random account per order, and a fifth of the marketable buys as
market orders with a budget. Accounts run short as their orders rest, so the
flow has realistic ``INSUFFICIENT_FUNDS`` rejects.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Optional

from engine.core import AddAsset, AddSymbol, CancelOrder, Command, Deposit, Matcher, PlaceOrder

__all__ = ["SyntheticSource"]


class SyntheticSource:
    """``n`` seeded commands on one symbol.

    Args:
        n: number of order commands (plus one ``AddSymbol`` if needed).
        seed: RNG seed; printed by tests and benchmarks.
        symbol: the book's symbol; prices around 100,000 ticks (tick 1).
        accounts: fund this many accounts and turn risk on (0: no accounts,
            risk off, account 0 on every order). The deposits come first, two
            per account, numbered as source positions like the orders.
    """

    BASE, QUOTE, BASE_PER_LOT = "BASE", "USD", 1_000_000

    def __init__(self, n: int, seed: int = 1, symbol: str = "SYN", mid: int = 100_000, accounts: int = 0) -> None:
        self.n = n
        self.accounts = accounts
        self.seed = seed
        self.symbol = symbol
        self.mid = mid
        self.name = f"synthetic:{symbol}:{seed}" + (f":{accounts}" if accounts else "")
        self.total: Optional[int] = n + 2 * accounts

    def commands(self, matcher: Matcher, after: Optional[Any]) -> Iterator[Command]:
        name, symbol = self.name, self.symbol
        start = -1 if after is None else after
        k = self.accounts
        if k:
            for asset, scale in ((self.BASE, 8), (self.QUOTE, 2)):
                if asset not in matcher.accounts.assets:
                    yield AddAsset.new(asset, scale)   # idempotent: guarded like the symbol
        if symbol not in matcher.books:
            yield (AddSymbol.new(symbol, 1, base=self.BASE, quote=self.QUOTE, base_per_lot=self.BASE_PER_LOT,
                                 maker_fee_ppm=100, taker_fee_ppm=250, risk=True) if k
                   else AddSymbol.new(symbol, 1))  # idempotent: guarded by the check above
        rng = random.Random(self.seed)
        rand = rng.random
        randint = rng.randint
        if k:
            funding = random.Random(self.seed + 1)
            for a in range(1, k + 1):
                quote = Deposit.new(2 * a - 1, a, self.QUOTE, funding.randint(2, 20) * 10**7, source=name,
                                    source_pos=2 * a - 2)
                base = Deposit.new(2 * a, a, self.BASE, funding.randint(200, 2000) * self.BASE_PER_LOT,
                                   source=name, source_pos=2 * a - 1)
                if 2 * a - 2 > start:
                    yield quote
                if 2 * a - 1 > start:
                    yield base
        mid = self.mid
        pool: list[int] = []
        next_id = 1
        for n_i in range(self.n):
            i = n_i + 2 * k
            r = rand()
            ts = n_i * 1000
            account = randint(1, k) if k else 0
            if r < 0.70:
                side = 1 if rand() < 0.5 else 2
                offset = randint(-4, 40)
                price = mid - offset if side == 1 else mid + offset
                cmd: Command = PlaceOrder(2, ts, symbol, next_id, side, 1, 1, price, randint(1, 100), False, account,
                                          0, name, i)
                pool.append(next_id)
                next_id += 1
            elif r < 0.95 and pool:
                j = randint(0, len(pool) - 1)
                pool[j], pool[-1] = pool[-1], pool[j]
                cmd = CancelOrder(3, ts, symbol, pool.pop(), name, i)
            else:
                side = 1 if rand() < 0.5 else 2
                price = mid + 60 if side == 1 else mid - 60
                qty = randint(50, 400)
                if k and side == 1 and rand() < 0.2:   # a market buy with a budget of about the notional
                    cmd = PlaceOrder(2, ts, symbol, next_id, 1, 2, 2, 0, qty, False, account, qty * mid, name, i)
                else:
                    cmd = PlaceOrder(2, ts, symbol, next_id, side, 1, 2, price, qty, False, account, 0, name, i)
                next_id += 1
            if rand() < 0.01:
                mid += randint(-3, 3)
            if i > start:
                yield cmd

    def close(self) -> None:
        pass
