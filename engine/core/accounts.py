"""Accounts, balances and pre-trade risk: no order without the money behind it.

Every account has, per asset, an **available** and a **held** balance
(integers in the asset's smallest unit, ``10**-scale``; never negative).
Only three things change them, all inside the matcher, all derived from WAL
commands and so replayed exactly:

- a :class:`~engine.core.commands.Deposit` or
  :class:`~engine.core.commands.Withdraw` (idempotent by ``transfer_id``);
- an order in a book with ``risk`` on: it **holds** what it can cost when it
  enters, its fills move held funds to the counterparty, and what it no
  longer needs is **released** (cancel, IOC/FOK remainder, amend, price
  improvement, unused fee reserve, a market buy's unspent budget);
- the fees of those fills, credited to the book's ``fee_account``.

What an open order holds (its *need*), with ``P`` its limit price (ticks),
``L`` its leaves (lots) and the book's ``quote_per_tick`` (q),
``base_per_lot`` (b) and ``taker_fee_ppm`` (t):

- a sell: ``L * b`` base units;
- a buy: ``L * unit(P)`` quote units, ``unit(P) = P*q + ceil(P*q*t / 10**6)``:
  the notional of one lot plus the most taker fee one lot can pay, rounded
  up per lot. A fill's fee is ``ceil(notional * fee_ppm / 10**6)`` per fill
  (``fee_ppm`` the maker or the taker rate), which is never more than the
  reserve of the lots it fills, so a hold always covers its fills and the
  account's held balance always equals the sum of its open orders' needs;
- a market buy holds its budget ``max_quote`` while it matches, pays each
  fill's exact cost out of it and releases the rest at once.

Per asset, available + held over all accounts (the fee account included)
equals deposits minus withdrawals after every command: a trade moves value,
it creates none. Every change is a :class:`~engine.core.events.BalanceChanged`
with a gap-free ``ledger_seq``, the engine's ledger.

Source: exchange-core's risk engine (holds on entry, release on cancel),
viabtc's matchengine (frozen balances), TigerBeetle (idempotent transfer
ids; a repeat answers with the first outcome).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, Optional

import msgpack

from ._mypyc import mypyc_attr
from .events import BalanceChanged, OrderRejected, TransferDone
from .types import MAX_AMOUNT, Kind, LedgerReason, RejectReason

__all__ = ["SymbolSpec", "Accounts"]

_BALANCE: Final = Kind.BALANCE_CHANGED.value
_REJECTED: Final = Kind.REJECTED.value
_DEPOSIT: Final = Kind.DEPOSIT.value
_WITHDRAW: Final = Kind.WITHDRAW.value
_FILL: Final = LedgerReason.FILL.value
_FEE: Final = LedgerReason.FEE.value
_HOLD: Final = LedgerReason.HOLD.value
_RELEASE: Final = LedgerReason.RELEASE.value
_PPM: Final = 1_000_000
_INT64_MAX: Final = 2**63 - 1
_new: Final = tuple.__new__
R = RejectReason


@mypyc_attr(serializable=True, allow_interpreted_subclasses=True)   # copy and pickle when compiled
class SymbolSpec:
    """What one price unit and one lot of a book are worth (see
    :class:`~engine.core.commands.AddSymbol` for the fields and units)."""

    __slots__ = ("base", "quote", "quote_per_tick", "base_per_lot", "maker_fee_ppm", "taker_fee_ppm",
                 "risk", "fee_account")

    def __init__(self, base: Optional[str], quote: Optional[str], quote_per_tick: int, base_per_lot: int,
                 maker_fee_ppm: int, taker_fee_ppm: int, risk: bool, fee_account: int) -> None:
        self.base = base
        self.quote = quote
        self.quote_per_tick = quote_per_tick
        self.base_per_lot = base_per_lot
        self.maker_fee_ppm = maker_fee_ppm
        self.taker_fee_ppm = taker_fee_ppm
        self.risk = risk
        self.fee_account = fee_account

    def as_list(self) -> list:
        """``[base, quote, quote_per_tick, base_per_lot, maker_fee_ppm, taker_fee_ppm, risk, fee_account]``."""
        return [self.base, self.quote, self.quote_per_tick, self.base_per_lot, self.maker_fee_ppm,
                self.taker_fee_ppm, self.risk, self.fee_account]

    def is_default(self) -> bool:
        """No assets, unit sizes, no fees, risk off: a book of market data."""
        return self.as_list() == [None, None, 1, 1, 0, 0, False, 0]

    def unit(self, price: int) -> int:
        """Quote units one lot of a buy at ``price`` holds: notional plus the
        taker fee, rounded up."""
        n = price * self.quote_per_tick
        return n - (-n * self.taker_fee_ppm // _PPM)

    def cost(self, price: int, qty: int) -> int:
        """Quote units a buying taker pays for one fill: notional plus the
        taker fee, rounded up."""
        n = price * qty * self.quote_per_tick
        return n - (-n * self.taker_fee_ppm // _PPM)

    def need(self, side: int, price: int, qty: int) -> int:
        """What an open order of ``qty`` lots at ``price`` holds: quote units
        for a buy, base units for a sell."""
        return qty * self.unit(price) if side == 1 else qty * self.base_per_lot


class Accounts:
    """Balances, transfers and the ledger of one engine.

    Attributes:
        assets: ``asset -> scale``.
        balances: ``account -> {asset: [available, held]}``.
        transfers: ``transfer_id -> (kind, account, asset, amount, reason, detail)``,
            reason 0 for an applied transfer, else the reject code it got.
        supply: ``asset -> deposits - withdrawals``.
        ledger_seq: the last :class:`BalanceChanged`'s number (0 before any).
    """

    def __init__(self) -> None:
        self.assets: dict[str, int] = {}
        self.balances: dict[int, dict[str, list]] = {}
        self.transfers: dict[int, tuple] = {}
        self.supply: dict[str, int] = {}
        self.ledger_seq = 0

    # ------------------------------------------------------------- balances
    def balance(self, account: int, asset: str) -> list:
        """``[available, held]`` of ``account`` in ``asset`` (a new zero pair if none)."""
        per = self.balances.get(account)
        if per is None:
            per = self.balances[account] = {}
        b = per.get(asset)
        if b is None:
            b = per[asset] = [0, 0]
        return b

    def available(self, account: int, asset: str) -> int:
        per = self.balances.get(account)
        b = per.get(asset) if per is not None else None
        return b[0] if b is not None else 0

    def change(self, out: list, cmd_seq: int, account: int, asset: str, d_available: int, d_held: int,
               reason: int, ref: int) -> None:
        """Apply one balance change and append its :class:`BalanceChanged`."""
        per = self.balances.get(account)
        if per is None:
            per = self.balances[account] = {}
        b = per.get(asset)
        if b is None:
            b = per[asset] = [0, 0]
        b[0] += d_available
        b[1] += d_held
        self.ledger_seq += 1
        out.append(_new(BalanceChanged, (_BALANCE, self.ledger_seq, cmd_seq, account, asset, d_available,
                                         d_held, b[0], b[1], reason, ref)))

    def pair(self, account: int, asset: str) -> Optional[list]:
        """The ``[available, held]`` list itself, or ``None`` (nothing is created)."""
        per = self.balances.get(account)
        return per.get(asset) if per is not None else None

    def hold(self, out: list, cmd_seq: int, account: int, asset: str, amount: int, order_id: int) -> None:
        """Move ``amount`` from available to held (a ``HOLD`` entry; none for 0)."""
        if amount:
            self.change(out, cmd_seq, account, asset, -amount, amount, _HOLD, order_id)

    def hold_from(self, out: list, cmd_seq: int, account: int, asset: str, b: list, amount: int,
                  order_id: int) -> None:
        """:meth:`hold` on the pair ``b`` the caller has already looked up
        (:meth:`pair`) and checked to cover ``amount`` (> 0)."""
        b[0] -= amount
        b[1] += amount
        self.ledger_seq = lseq = self.ledger_seq + 1
        out.append(_new(BalanceChanged, (_BALANCE, lseq, cmd_seq, account, asset, -amount, amount, b[0], b[1],
                                         _HOLD, order_id)))

    def release(self, out: list, cmd_seq: int, account: int, asset: str, amount: int, order_id: int) -> None:
        """Move ``amount`` from held back to available (a ``RELEASE`` entry; none for 0)."""
        if amount:
            b = self.balances[account][asset]    # what is held has a pair
            b[0] += amount
            b[1] -= amount
            self.ledger_seq = lseq = self.ledger_seq + 1
            out.append(_new(BalanceChanged, (_BALANCE, lseq, cmd_seq, account, asset, amount, -amount, b[0], b[1],
                                             _RELEASE, order_id)))

    def settle(self, out: list, start: int, cmd_seq: int, spec: SymbolSpec, taker_unit: Optional[int]) -> int:
        """Move the funds of the trades ``out[start:]`` (one taker's fills in
        one book with risk on) and append their balance changes: per trade
        the taker's two (a buyer's quote then base, a seller's base then
        quote), the maker's two (the other way round), then the fee
        account's if any fee was due.

        ``taker_unit``: quote units the taker's hold reserves per lot (a limit
        buy: ``spec.unit(limit)``); ``None`` for a market buy, which pays each
        fill's exact cost out of its budget. Ignored for a sell taker.
        Returns the quote units a buying taker paid (notional + fees).
        Complexity: O(trades); the balance changes are inlined (this is the
        hot path of a book with risk on: five ledger entries a trade).
        """
        q, b_lot = spec.quote_per_tick, spec.base_per_lot
        mrate, trate = spec.maker_fee_ppm, spec.taker_fee_ppm
        base: str   # a book with risk on has both assets
        quote: str
        base, quote = spec.base, spec.quote  # type: ignore[assignment]
        balance = self.balance
        append = out.append
        end = len(out)
        first = out[start]
        taker: int = first[10]
        taker_side: int = first[6]
        t_quote = balance(taker, quote)     # the same lists all along: a self-trade stays exact
        t_base = balance(taker, base)
        fee_account = spec.fee_account
        fees = None
        lseq = self.ledger_seq
        paid = 0
        per_balances = self.balances
        for i in range(start, end):
            t = out[i]
            match_id: int
            price: int
            qty: int
            maker: int
            match_id, price, qty, maker = t[1], t[4], t[5], t[9]   # a Trade's fields
            n = price * qty * q
            fee_t = -(-n * trate // _PPM)
            fee_m = -(-n * mrate // _PPM)
            base_qty = qty * b_lot
            per = per_balances.get(maker)
            if per is None:
                per = per_balances[maker] = {}
            m_base = per.get(base)
            if m_base is None:
                m_base = per[base] = [0, 0]
            m_quote = per.get(quote)
            if m_quote is None:
                m_quote = per[quote] = [0, 0]
            if taker_side == 1:
                cost = n + fee_t
                paid += cost
                reserved = cost if taker_unit is None else qty * taker_unit
                t_quote[0] += reserved - cost
                t_quote[1] -= reserved
                append(_new(BalanceChanged, (_BALANCE, lseq + 1, cmd_seq, taker, quote, reserved - cost, -reserved,
                                             t_quote[0], t_quote[1], _FILL, match_id)))
                t_base[0] += base_qty
                append(_new(BalanceChanged, (_BALANCE, lseq + 2, cmd_seq, taker, base, base_qty, 0,
                                             t_base[0], t_base[1], _FILL, match_id)))
                m_base[1] -= base_qty
                append(_new(BalanceChanged, (_BALANCE, lseq + 3, cmd_seq, maker, base, 0, -base_qty,
                                             m_base[0], m_base[1], _FILL, match_id)))
                m_quote[0] += n - fee_m
                append(_new(BalanceChanged, (_BALANCE, lseq + 4, cmd_seq, maker, quote, n - fee_m, 0,
                                             m_quote[0], m_quote[1], _FILL, match_id)))
            else:
                reserved = qty * (price * q - (-price * q * trate // _PPM))    # the maker buy's hold
                t_base[1] -= base_qty
                append(_new(BalanceChanged, (_BALANCE, lseq + 1, cmd_seq, taker, base, 0, -base_qty,
                                             t_base[0], t_base[1], _FILL, match_id)))
                t_quote[0] += n - fee_t
                append(_new(BalanceChanged, (_BALANCE, lseq + 2, cmd_seq, taker, quote, n - fee_t, 0,
                                             t_quote[0], t_quote[1], _FILL, match_id)))
                m_quote[0] += reserved - n - fee_m
                m_quote[1] -= reserved
                append(_new(BalanceChanged, (_BALANCE, lseq + 3, cmd_seq, maker, quote, reserved - n - fee_m,
                                             -reserved, m_quote[0], m_quote[1], _FILL, match_id)))
                m_base[0] += base_qty
                append(_new(BalanceChanged, (_BALANCE, lseq + 4, cmd_seq, maker, base, base_qty, 0,
                                             m_base[0], m_base[1], _FILL, match_id)))
            lseq += 4
            if fee_t or fee_m:
                if fees is None:
                    fees = balance(fee_account, quote)
                fees[0] += fee_t + fee_m
                lseq += 1
                append(_new(BalanceChanged, (_BALANCE, lseq, cmd_seq, fee_account, quote, fee_t + fee_m, 0,
                                             fees[0], fees[1], _FEE, match_id)))
        self.ledger_seq = lseq
        return paid

    # ------------------------------------------------------------ transfers
    def add_asset(self, asset: str, scale: int) -> None:
        self.assets[asset] = scale
        self.supply.setdefault(asset, 0)

    def transfer(self, seq: int, cmd: Any, out: list) -> None:
        """Apply a deposit or withdrawal (see the commands' docstrings);
        append a :class:`TransferDone` and its :class:`BalanceChanged`, or
        an :class:`OrderRejected` whose ``order_id`` is the transfer_id.

        A malformed transfer (a field of the wrong type or out of range) is
        rejected and forgotten: the id may be sent again, corrected. A
        well-formed one is remembered under its ``transfer_id`` with its
        outcome, a rejection that depends on the state (``UNKNOWN_ASSET``,
        ``INSUFFICIENT_FUNDS``, a deposit past the asset's limit) included:
        a repeat gets that outcome again, even once the funds are there.
        Source: TigerBeetle, ``id_already_failed`` for transient errors.
        """
        kind, _ts, tid, account, asset, amount, _src, _pos = cmd
        malformed = self._malformed(tid, account, asset, amount)
        if malformed is not None:
            out.append(OrderRejected(_REJECTED, seq, tid if malformed[0] != R.INVALID_TRANSFER_ID.value else None,
                                     malformed[0], malformed[1]))
            return
        body = (kind, account, asset, amount)
        first = self.transfers.get(tid)
        if first is not None:
            if first[:4] != body:
                out.append(OrderRejected(_REJECTED, seq, tid, R.TRANSFER_CONFLICT.value,
                                         f"transfer {tid} was already used for another "
                                         f"{'deposit' if first[0] == _DEPOSIT else 'withdrawal'} "
                                         f"(account {first[1]}, {first[3]} {first[2]})"))
            elif first[4]:
                out.append(OrderRejected(_REJECTED, seq, tid, first[4], f"repeat of transfer {tid}: {first[5]}"))
            else:
                out.append(TransferDone(Kind.TRANSFER_DONE.value, tid, kind, account, asset, amount,
                                        self.available(account, asset), True))
            return
        reason, detail = self._refused(kind, account, asset, amount)
        self.transfers[tid] = (kind, account, asset, amount, reason, detail)
        if reason:
            out.append(OrderRejected(_REJECTED, seq, tid, reason, detail))
            return
        if kind == _DEPOSIT:
            self.supply[asset] += amount
            self.change(out, seq, account, asset, amount, 0, LedgerReason.DEPOSIT.value, tid)
        else:
            self.supply[asset] -= amount
            self.change(out, seq, account, asset, -amount, 0, LedgerReason.WITHDRAWAL.value, tid)
        out.insert(len(out) - 1, TransferDone(Kind.TRANSFER_DONE.value, tid, kind, account, asset, amount,
                                              self.available(account, asset), False))

    @staticmethod
    def _malformed(tid: Any, account: Any, asset: Any, amount: Any) -> Optional[tuple[int, str]]:
        if type(tid) is not int or not 0 < tid <= _INT64_MAX:
            return R.INVALID_TRANSFER_ID.value, "transfer_id must be an integer in 1..2**63-1"
        if type(account) is not int or not 0 <= account <= _INT64_MAX:
            return R.INVALID_ACCOUNT.value, "account must be an integer in 0..2**63-1"
        if type(asset) is not str or not 0 < len(asset) <= 16:
            return R.INVALID_ASSET.value, "asset must be a string of 1..16 characters"
        if type(amount) is not int or not 0 < amount <= MAX_AMOUNT:
            return R.INVALID_AMOUNT.value, "amount must be an integer in 1..2**63-1 (the asset's smallest units)"
        return None

    def _refused(self, kind: int, account: int, asset: str, amount: int) -> tuple[int, str]:
        if asset not in self.assets:
            return R.UNKNOWN_ASSET.value, f"unknown asset {asset!r}"
        if kind == _DEPOSIT:
            if self.supply[asset] + amount > MAX_AMOUNT:
                return R.INVALID_AMOUNT.value, f"deposits of {asset} would exceed 2**63-1 units in all"
        elif self.available(account, asset) < amount:
            return (R.INSUFFICIENT_FUNDS.value,
                    f"account {account} has {self.available(account, asset)} {asset} available, "
                    f"{amount} asked")
        return 0, ""

    # ------------------------------------------------------------ state I/O
    def export_state(self) -> dict:
        """Plain msgpack-able state::

            {"assets": [[asset, scale], ...],
             "balances": [[account, asset, available, held], ...],
             "transfers": [[transfer_id, kind, account, asset, amount, reason, detail], ...],
             "ledger_seq": int}

        every list sorted, so equal states export equal bytes.
        """
        return {
            "assets": sorted([a, s] for a, s in self.assets.items()),
            "balances": sorted([acc, asset, b[0], b[1]] for acc, per in self.balances.items()
                               for asset, b in per.items()),
            "transfers": [[tid, *rest] for tid, rest in sorted(self.transfers.items())],
            "ledger_seq": self.ledger_seq,
        }

    @classmethod
    def from_state(cls, state: Optional[dict]) -> "Accounts":
        """Rebuild from :meth:`export_state` output (``None``: empty, as a
        snapshot of format 2 has none)."""
        a = cls()
        if not state:
            return a
        for asset, scale in state["assets"]:
            a.add_asset(asset, scale)
        for acc, asset, avail, held in state["balances"]:
            a.balances.setdefault(acc, {})[asset] = [avail, held]
        for tid, kind, acc, asset, amount, reason, detail in state["transfers"]:
            a.transfers[tid] = (kind, acc, asset, amount, reason, detail)
            if not reason:
                a.supply[asset] += amount if kind == _DEPOSIT else -amount
        a.ledger_seq = state["ledger_seq"]
        return a

    def is_empty(self) -> bool:
        return not (self.assets or self.balances or self.transfers or self.ledger_seq)

    def hash_into(self, h: "hashlib._Hash", packer: msgpack.Packer) -> None:
        """Feed the state into a running hash (nothing when empty, so a
        matcher that never used accounts hashes as before)."""
        if not self.is_empty():
            st = self.export_state()
            h.update(packer.pack([st["assets"], st["balances"], st["transfers"], st["ledger_seq"]]))

    def totals(self) -> dict[str, tuple[int, int]]:
        """``asset -> (available, held)`` summed over every account."""
        out: dict[str, list] = {a: [0, 0] for a in self.assets}
        for per in self.balances.values():
            for asset, b in per.items():
                t = out.setdefault(asset, [0, 0])
                t[0] += b[0]
                t[1] += b[1]
        return {a: (t[0], t[1]) for a, t in out.items()}
