"""Accounts through the HTTP gateway against a real engine: assets, deposits,
withdrawals, balances and pre-trade risk. As ``test_gateway.py``: a real
Engine on tmp_path (real WAL, real fsync), an EngineRuntime, the FastAPI app
in process (httpx ASGITransport), one asyncio loop per test; every answer is
checked against the engine and, where it matters, against the WAL on disk.

Amounts are in the asset's smallest unit: USD has scale 2 (cents), BTC scale
8 (satoshi).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import httpx

from engine.core.commands import Deposit, PlaceOrder, Withdraw
from engine.core.events import OrderRejected
from engine.core.types import RejectReason
from engine.gateway import EmbeddedEntry, create_app
from engine.service.engine import Engine, EngineConfig
from engine.service.runtime import EngineRuntime
from recovery.time_travel import open_data_dir

DEADLINE_S = 15.0
R = RejectReason


@dataclass
class Gw:
    rt: EngineRuntime
    http: httpx.AsyncClient
    data_dir: str

    @property
    def engine(self) -> Engine:
        return self.rt.engine


@contextlib.asynccontextmanager
async def gateway(tmp_path, *, with_view: bool = True):
    """A running engine and its gateway (in process); yields a :class:`Gw`.
    Engine options as in ``test_gateway.py`` (no GC pause, no CPU pinning)."""
    data_dir = str(tmp_path / "data")
    engine = Engine(EngineConfig(data_dir=data_dir, snapshot_every=0, control_socket=False,
                                 pause_cyclic_gc=False, pin_cpus=False))
    engine.open()
    rt = EngineRuntime(engine)
    try:
        await rt.start()
        app = create_app(EmbeddedEntry(rt), rt if with_view else None)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                   timeout=DEADLINE_S)
        async with client:
            yield Gw(rt, client, data_dir)
    finally:
        await rt.stop()
        engine.close()


async def send(gw: Gw, method: str, url: str, body: Any = None, status: int = 200) -> dict:
    r = await gw.http.request(method, url, json=body)
    assert r.status_code == status, (method, url, body, r.status_code, r.text)
    return r.json()


async def post_ok(gw: Gw, url: str, body: dict, status: int = 200) -> dict:
    return await send(gw, "POST", url, body, status)


async def balances(gw: Gw, account: int) -> dict:
    """``asset -> (available, held)`` from ``GET /accounts/{account}``."""
    body = await send(gw, "GET", f"/accounts/{account}")
    assert body["account"] == account
    return {b["asset"]: (b["available"], b["held"]) for b in body["balances"]}


def transfer(transfer_id: int, amount: int, *, account: int = 7, asset: str = "USD") -> dict:
    return {"transfer_id": transfer_id, "account": account, "asset": asset, "amount": amount}


async def setup_assets(gw: Gw) -> None:
    usd = await post_ok(gw, "/assets", {"asset": "USD", "scale": 2})
    assert (usd["status"], usd["asset"], usd["scale"], usd["reject"]) == ("added", "USD", 2, None)
    assert gw.engine.wal.durable_seq >= usd["seq"]
    await post_ok(gw, "/assets", {"asset": "BTC", "scale": 8})


RISK_BOOK = {"symbol": "BTCUSD", "tick_size": 1, "base": "BTC", "quote": "USD", "quote_per_tick": 1,
             "base_per_lot": 1, "maker_fee_ppm": 500, "taker_fee_ppm": 1000, "risk": True, "fee_account": 1}


def assert_reject(answer: dict, reason: RejectReason) -> None:
    assert answer["status"] == "rejected", answer
    assert (answer["reject"]["code"], answer["reject"]["reason"]) == (reason.value, reason.name), answer
    assert answer["reject"]["detail"]


# ------------------------------------------------------------------ transfers


def test_a_deposit_is_durable_and_its_balance_reads_back_equal_to_the_disk(tmp_path):
    async def main():
        async with gateway(tmp_path) as gw:
            await setup_assets(gw)
            again = await post_ok(gw, "/assets", {"asset": "USD", "scale": 4}, status=409)
            assert_reject(again, R.ASSET_EXISTS)
            assert gw.engine.matcher.accounts.assets == {"USD": 2, "BTC": 8}

            dep = await post_ok(gw, "/deposits", transfer(1, 100_000))
            assert gw.engine.wal.durable_seq >= dep["seq"]
            assert dep == {"seq": dep["seq"], "durable_seq": dep["durable_seq"], "type": "deposit",
                           "transfer_id": 1, "account": 7, "asset": "USD", "amount": 100_000,
                           "status": "applied", "duplicate": False, "available": 100_000, "reject": None}
            await post_ok(gw, "/deposits", transfer(2, 5 * 10**8, asset="BTC"))

            body = await send(gw, "GET", "/accounts/7")
            m = gw.engine.matcher
            assert body == {"account": 7, "seq": m.last_seq,
                            "balances": [{"asset": "BTC", "scale": 8, "available": 5 * 10**8, "held": 0},
                                         {"asset": "USD", "scale": 2, "available": 100_000, "held": 0}]}
            on_disk = open_data_dir(gw.data_dir).balance_report(body["seq"], 7)["balances"]
            assert [(b["asset"], b["available"], b["held"]) for b in on_disk] == [
                (b["asset"], b["available"], b["held"]) for b in body["balances"]]

            # an account exists once it has a balance: before that, 200 and nothing
            assert await send(gw, "GET", "/accounts/8") == {"account": 8, "seq": m.last_seq, "balances": []}
            assert 8 not in m.accounts.balances          # the read did not create it
            await send(gw, "GET", "/accounts/-1", status=422)
            await send(gw, "GET", f"/accounts/{2**63}", status=422)

    asyncio.run(main())


def test_a_withdrawal_beyond_the_available_balance_is_rejected_and_changes_nothing(tmp_path):
    answers: list = []

    async def main():
        async with gateway(tmp_path) as gw:
            await setup_assets(gw)
            await post_ok(gw, "/deposits", transfer(1, 500))
            ledger_seq = gw.engine.matcher.accounts.ledger_seq

            short = await post_ok(gw, "/withdrawals", transfer(2, 501), status=409)
            answers.append(short)
            assert_reject(short, R.INSUFFICIENT_FUNDS)
            assert short["reject"]["code"] == 400
            assert (short["type"], short["duplicate"], short["available"]) == ("withdraw", False, 500)
            assert gw.engine.wal.durable_seq >= short["seq"] + 1     # the reject is durable too
            assert await balances(gw, 7) == {"USD": (500, 0)}
            assert gw.engine.matcher.accounts.ledger_seq == ledger_seq

            unknown = await post_ok(gw, "/withdrawals", transfer(3, 1, asset="EUR"), status=409)
            answers.append(unknown)
            assert_reject(unknown, R.UNKNOWN_ASSET)
            assert unknown["available"] == 0

            ok = await post_ok(gw, "/withdrawals", transfer(4, 200))
            answers.append(ok)
            assert (ok["status"], ok["duplicate"], ok["available"], ok["reject"]) == ("applied", False, 300, None)
            assert await balances(gw, 7) == {"USD": (300, 0)}

    asyncio.run(main())

    events = dict(open_data_dir(str(tmp_path / "data")).events())
    for ans in answers:
        cmd = events[ans["seq"]]
        assert isinstance(cmd, Withdraw) and (cmd.transfer_id, cmd.amount) == (ans["transfer_id"], ans["amount"])
        if ans["status"] == "rejected":
            rej = events[ans["seq"] + 1]
            assert isinstance(rej, OrderRejected) and rej.reason == ans["reject"]["code"]
            assert rej.order_id == ans["transfer_id"]


def test_a_repeated_transfer_id_with_the_same_body_answers_the_first_outcome(tmp_path):
    async def main():
        async with gateway(tmp_path) as gw:
            m = gw.engine.matcher
            await setup_assets(gw)
            first = await post_ok(gw, "/deposits", transfer(1, 1_000))
            ledger_seq = m.accounts.ledger_seq
            repeat = await post_ok(gw, "/deposits", transfer(1, 1_000))
            assert repeat["seq"] > first["seq"]                       # a command of its own in the WAL
            assert repeat["duplicate"] is True and first["duplicate"] is False
            same = ("type", "transfer_id", "account", "asset", "amount", "status", "available", "reject")
            assert {k: repeat[k] for k in same} == {k: first[k] for k in same}
            assert m.accounts.ledger_seq == ledger_seq                # no balance change
            assert await balances(gw, 7) == {"USD": (1_000, 0)}

            # a rejected transfer is remembered with its reject: once the funds are
            # there, its repeat still gets the first outcome
            short = await post_ok(gw, "/withdrawals", transfer(2, 5_000), status=409)
            assert_reject(short, R.INSUFFICIENT_FUNDS)
            assert short["duplicate"] is False
            await post_ok(gw, "/deposits", transfer(3, 10_000))
            again = await post_ok(gw, "/withdrawals", transfer(2, 5_000), status=409)
            assert_reject(again, R.INSUFFICIENT_FUNDS)
            assert again["duplicate"] is True
            assert again["available"] == 11_000
            assert await balances(gw, 7) == {"USD": (11_000, 0)}

            # and a later repeat of the applied deposit still reads as a duplicate
            later = await post_ok(gw, "/deposits", transfer(1, 1_000))
            assert (later["status"], later["duplicate"], later["available"]) == ("applied", True, 11_000)

    asyncio.run(main())


def test_the_same_transfer_id_with_another_body_is_a_transfer_conflict(tmp_path):
    async def main():
        async with gateway(tmp_path) as gw:
            await setup_assets(gw)
            await post_ok(gw, "/deposits", transfer(1, 1_000))
            for url, body in [("/deposits", transfer(1, 2_000)),
                              ("/deposits", transfer(1, 1_000, account=8)),
                              ("/deposits", transfer(1, 1_000, asset="BTC")),
                              ("/withdrawals", transfer(1, 1_000))]:
                ans = await post_ok(gw, url, body, status=409)
                assert_reject(ans, R.TRANSFER_CONFLICT)
                assert ans["duplicate"] is False, (url, body)
                assert ans["transfer_id"] == 1
            assert await balances(gw, 7) == {"USD": (1_000, 0)}
            assert await balances(gw, 8) == {}

    asyncio.run(main())


# ------------------------------------------------------------------ risk


def test_a_funded_limit_buy_holds_quote_and_a_cancel_releases_it(tmp_path):
    async def main():
        async with gateway(tmp_path) as gw:
            m = gw.engine.matcher
            await setup_assets(gw)
            added = await post_ok(gw, "/symbols", RISK_BOOK)
            assert (added["status"], added["reject"]) == ("added", None)
            spec = m.books["BTCUSD"].spec
            assert spec.as_list() == ["BTC", "USD", 1, 1, 500, 1000, True, 1]

            await post_ok(gw, "/deposits", transfer(1, 10_000))
            await post_ok(gw, "/deposits", transfer(2, 50, account=8, asset="BTC"))

            # 10 lots at 100: notional 100 per lot plus the taker fee, 0.1% rounded up: 101 per lot
            bid = await post_ok(gw, "/orders", {"symbol": "BTCUSD", "order_id": 1, "side": "buy", "price": 100,
                                                "qty": 10, "account": 7})
            assert (bid["status"], bid["leaves_qty"]) == ("resting", 10)
            assert await balances(gw, 7) == {"USD": (10_000 - 1_010, 1_010)}

            ask = await post_ok(gw, "/orders", {"symbol": "BTCUSD", "order_id": 2, "side": "sell", "price": 105,
                                                "qty": 30, "account": 8})
            assert ask["status"] == "resting"
            assert await balances(gw, 8) == {"BTC": (20, 30)}

            cancel = await send(gw, "DELETE", "/orders/BTCUSD/1")
            assert (cancel["status"], cancel["cancelled_qty"]) == ("cancelled", 10)
            assert await balances(gw, 7) == {"USD": (10_000, 0)}

            # held funds cannot be withdrawn: 20 of account 8's 50 BTC units are free
            short = await post_ok(gw, "/withdrawals", transfer(3, 21, account=8, asset="BTC"), status=409)
            assert_reject(short, R.INSUFFICIENT_FUNDS)
            assert short["available"] == 20
            m.check_invariants()

    asyncio.run(main())


def test_an_unfunded_order_in_a_risk_book_is_rejected_insufficient_funds(tmp_path):
    answers: dict = {}

    async def main():
        async with gateway(tmp_path) as gw:
            m = gw.engine.matcher
            await setup_assets(gw)
            await post_ok(gw, "/symbols", RISK_BOOK)
            await post_ok(gw, "/deposits", transfer(1, 1_000, account=7))

            bid = await post_ok(gw, "/orders", {"symbol": "BTCUSD", "order_id": 1, "side": "buy", "price": 100,
                                                "qty": 10, "account": 7}, status=409)   # needs 1,010
            answers["bid"] = bid
            assert_reject(bid, R.INSUFFICIENT_FUNDS)
            assert (bid["fills"], bid["filled_qty"], bid["leaves_qty"]) == ([], 0, 0)
            assert gw.engine.wal.durable_seq >= bid["seq"] + 1
            ask = await post_ok(gw, "/orders", {"symbol": "BTCUSD", "order_id": 2, "side": "sell", "price": 100,
                                                "qty": 1, "account": 9}, status=409)
            assert_reject(ask, R.INSUFFICIENT_FUNDS)
            assert m.books["BTCUSD"].depth(1) == [] and m.books["BTCUSD"].depth(2) == []
            assert await balances(gw, 7) == {"USD": (1_000, 0)}
            assert await balances(gw, 9) == {}

            # max_quote reaches the engine: a market buy in a risk book needs one
            nobudget = await post_ok(gw, "/orders", {"symbol": "BTCUSD", "side": "buy", "order_type": "market",
                                                     "qty": 1, "account": 7}, status=422)
            assert_reject(nobudget, R.INVALID_BUDGET)
            over = await post_ok(gw, "/orders", {"symbol": "BTCUSD", "side": "buy", "order_type": "market",
                                                 "qty": 1, "account": 7, "max_quote": 1_001}, status=409)
            answers["over"] = over
            assert_reject(over, R.INSUFFICIENT_FUNDS)
            funded = await post_ok(gw, "/orders", {"symbol": "BTCUSD", "side": "buy", "order_type": "market",
                                                   "qty": 1, "account": 7, "max_quote": 1_000})
            assert (funded["status"], funded["cancelled_qty"]) == ("cancelled", 1)    # no liquidity
            assert await balances(gw, 7) == {"USD": (1_000, 0)}                         # budget released

    asyncio.run(main())

    events = dict(open_data_dir(str(tmp_path / "data")).events())
    cmd = events[answers["over"]["seq"]]
    assert isinstance(cmd, PlaceOrder) and (cmd.account, cmd.max_quote) == (7, 1_001)
    rej = events[answers["bid"]["seq"] + 1]
    assert isinstance(rej, OrderRejected) and rej.reason == R.INSUFFICIENT_FUNDS.value


# ------------------------------------------------------------------ bodies


BAD_BODIES = [
    ("/deposits", "negative amount", transfer(1, -5), "amount"),
    ("/deposits", "zero amount", transfer(1, 0), "amount"),
    ("/deposits", "amount as a string", transfer(1, "5"), "amount"),
    ("/deposits", "amount as a float", transfer(1, 1.5), "amount"),
    ("/deposits", "amount beyond 2**63-1", transfer(1, 2**63), "amount"),
    ("/deposits", "missing asset", {"transfer_id": 1, "account": 7, "amount": 5}, "asset"),
    ("/deposits", "asset of 17 characters", transfer(1, 5, asset="A" * 17), "asset"),
    ("/deposits", "transfer_id 0", transfer(0, 5), "transfer_id"),
    ("/deposits", "negative account", transfer(1, 5, account=-1), "account"),
    ("/deposits", "account as a bool", transfer(1, 5, account=True), "account"),
    ("/deposits", "extra field", {**transfer(1, 5), "memo": "x"}, "memo"),
    ("/withdrawals", "negative amount", transfer(1, -5), "amount"),
    ("/withdrawals", "missing asset", {"transfer_id": 1, "account": 7, "amount": 5}, "asset"),
    ("/withdrawals", "missing transfer_id", {"account": 7, "asset": "USD", "amount": 5}, "transfer_id"),
    ("/assets", "scale 19", {"asset": "USD", "scale": 19}, "scale"),
    ("/assets", "negative scale", {"asset": "USD", "scale": -1}, "scale"),
    ("/assets", "missing asset", {"scale": 2}, "asset"),
    ("/symbols", "base without quote", {"symbol": "S", "base": "BTC"}, "quote"),
    ("/symbols", "base equal to quote", {"symbol": "S", "base": "USD", "quote": "USD"}, "quote"),
    ("/symbols", "maker fee above taker fee", {"symbol": "S", "maker_fee_ppm": 2, "taker_fee_ppm": 1},
     "taker_fee_ppm"),
    ("/symbols", "fee above 100%", {"symbol": "S", "taker_fee_ppm": 1_000_001}, "taker_fee_ppm"),
    ("/symbols", "risk without assets", {"symbol": "S", "risk": True}, "risk"),
    ("/symbols", "quote_per_tick 0", {"symbol": "S", "quote_per_tick": 0}, "quote_per_tick"),
    ("/symbols", "negative fee_account", {"symbol": "S", "fee_account": -1}, "fee_account"),
    ("/orders", "max_quote on a limit order",
     {"symbol": "BTCUSD", "side": "buy", "price": 100, "qty": 1, "max_quote": 5}, "max_quote"),
    ("/orders", "max_quote on a market sell",
     {"symbol": "BTCUSD", "side": "sell", "order_type": "market", "qty": 1, "max_quote": 5}, "max_quote"),
    ("/orders", "negative max_quote",
     {"symbol": "BTCUSD", "side": "buy", "order_type": "market", "qty": 1, "max_quote": -1}, "max_quote"),
]


def test_malformed_bodies_are_422_per_field_and_never_reach_the_wal(tmp_path):
    async def main():
        async with gateway(tmp_path) as gw:
            await setup_assets(gw)
            await post_ok(gw, "/deposits", transfer(1, 100))
            last, next_seq = gw.engine.matcher.last_seq, gw.engine.wal.next_seq
            for url, name, body, field in BAD_BODIES:
                r = await gw.http.post(url, json=body)
                assert r.status_code == 422, (url, name, r.text)
                locs = [e["loc"] for e in r.json()["detail"]]
                assert ["body", field] in locs, (url, name, locs)
            r = await gw.http.post("/deposits", content=b"{not json", headers={"content-type": "application/json"})
            assert r.status_code == 422
            assert (gw.engine.matcher.last_seq, gw.engine.wal.next_seq) == (last, next_seq)
            assert await balances(gw, 7) == {"USD": (100, 0)}
            return last

    last = asyncio.run(main())
    events = dict(open_data_dir(str(tmp_path / "data")).events())
    assert max(events) == last
    assert [type(e) for e in events.values()].count(Deposit) == 1


def test_account_reads_need_an_engine_view_and_the_api_documents_units(tmp_path):
    async def main():
        async with gateway(tmp_path, with_view=False) as gw:
            r = await gw.http.get("/accounts/7")
            assert r.status_code == 503 and "order entry" in r.json()["detail"]
            api = (await gw.http.get("/openapi.json")).json()
            for path, method in [("/assets", "post"), ("/deposits", "post"), ("/withdrawals", "post"),
                                 ("/accounts/{account}", "get")]:
                assert method in api["paths"].get(path, {}), path
            schemas = api["components"]["schemas"]
            assert "10**-scale" in schemas["TransferBody"]["properties"]["amount"]["description"]
            assert "10**-scale" in schemas["BalanceOut"]["properties"]["available"]["description"]
            assert set(schemas["SymbolBody"]["properties"]) >= {
                "base", "quote", "quote_per_tick", "base_per_lot", "maker_fee_ppm", "taker_fee_ppm", "risk",
                "fee_account"}
            assert "max_quote" in schemas["PlaceBody"]["properties"]
            assert "not 404" in api["paths"]["/accounts/{account}"]["get"]["description"]

    asyncio.run(main())
