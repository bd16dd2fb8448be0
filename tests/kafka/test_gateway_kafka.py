"""The HTTP gateway with Kafka order entry, against the real broker: an order
answered 202 is on the ``orders`` topic and decodes to the same command; an
unreachable broker answers 503."""

from __future__ import annotations

import asyncio
import socket

import httpx

from engine.core.commands import AddSymbol, AmendOrder, CancelOrder, PlaceOrder
from engine.gateway import GatewayServer, KafkaEntry, create_app
from engine.io.messages import decode_order

DEADLINE_S = 20.0


async def read_records(bootstrap: str, topic: str, count: int) -> list:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        records: list = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_S
        while len(records) < count:
            assert loop.time() < deadline, f"only {len(records)} of {count} records arrived"
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def decoded(record) -> object:
    return decode_order(record.value, source=f"kafka:{record.topic}:{record.partition}", offset=record.offset,
                        ts_ns=record.timestamp * 1_000_000)


def test_orders_are_queued_on_the_topic_and_decode_to_the_same_commands(kafka_bootstrap, make_topics):
    topic = make_topics("orders")["orders"]

    async def main():
        entry = KafkaEntry(kafka_bootstrap, topic)
        app = create_app(entry, token="s3cret")
        auth = {"Authorization": "Bearer s3cret"}
        answers = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                     timeout=DEADLINE_S) as http:
            try:
                requests = [
                    ("POST", "/symbols", {"symbol": "AAPL", "tick_size": 5}),
                    ("POST", "/orders", {"symbol": "AAPL", "order_id": 17, "side": "buy", "price": 10050,
                                         "qty": 100, "account": 3}),
                    ("POST", "/orders", {"symbol": "AAPL", "side": "sell", "order_type": "market", "qty": 7,
                                         "tif": "fok"}),
                    ("POST", "/orders", {"symbol": "AAPL", "order_id": 18, "side": "sell", "price": 10100,
                                         "qty": 5, "post_only": True}),
                    ("PATCH", "/orders/AAPL/17", {"price": 10055, "qty": 60}),
                    ("DELETE", "/orders/AAPL/18", None),
                ]
                for method, url, body in requests:
                    r = await http.request(method, url, json=body, headers=auth)
                    assert r.status_code == 202, r.text
                    answers.append(r.json())
                assert (await http.post("/orders", json={"symbol": "AAPL", "side": "buy", "price": 1,
                                                         "qty": 1})).status_code == 401
                assert (await http.post("/orders", json={"symbol": "AAPL", "side": "buy", "qty": 1},
                                        headers=auth)).status_code == 422
                assert (await http.get("/books/AAPL")).status_code == 503      # no engine view here
                health = (await http.get("/health")).json()
                assert (health["status"], health["entry"]) == ("ok", "kafka")
            finally:
                await entry.stop()
        for i, a in enumerate(answers):
            assert (a["status"], a["topic"], a["partition"], a["offset"]) == ("queued", topic, 0, i)
        assigned = answers[2]["order_id"]
        assert 1 <= assigned <= 2**63 - 1

        records = await read_records(kafka_bootstrap, topic, len(answers))
        assert [r.key for r in records] == [b"AAPL"] * len(answers)
        assert [r.offset for r in records] == [a["offset"] for a in answers]
        src = f"kafka:{topic}:0"
        ts = [r.timestamp * 1_000_000 for r in records]
        assert [decoded(r) for r in records] == [
            AddSymbol.new("AAPL", 5, ts_ns=ts[0], source=src, source_pos=0),
            PlaceOrder.new("AAPL", 17, 1, 10050, 100, account=3, ts_ns=ts[1], source=src, source_pos=1),
            PlaceOrder.new("AAPL", assigned, 2, 0, 7, order_type=2, tif=3, ts_ns=ts[2], source=src, source_pos=2),
            PlaceOrder.new("AAPL", 18, 2, 10100, 5, post_only=True, ts_ns=ts[3], source=src, source_pos=3),
            AmendOrder.new("AAPL", 17, 10055, 60, ts_ns=ts[4], source=src, source_pos=4),
            CancelOrder.new("AAPL", 18, ts_ns=ts[5], source=src, source_pos=5),
        ]

    asyncio.run(main())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_broker_answers_503_and_the_gateway_keeps_serving():
    async def main():
        entry = KafkaEntry(f"127.0.0.1:{closed_port()}", "orders", request_timeout_ms=2000)
        app = create_app(entry)
        # A real server: its startup tries the broker, logs the failure and serves anyway.
        async with GatewayServer(app, "127.0.0.1", 0, grace_s=2.0) as server:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=DEADLINE_S) as http:
                for _ in range(2):
                    r = await http.post("/orders", json={"symbol": "AAPL", "order_id": 1, "side": "buy",
                                                         "price": 100, "qty": 1})
                    assert r.status_code == 503, r.text
                    assert "unreachable" in r.json()["detail"] and entry.bootstrap in r.json()["detail"]
                r = await http.delete("/orders/AAPL/1")
                assert r.status_code == 503
                assert (await http.get("/health")).status_code == 200

    asyncio.run(main())
