"""The OpenAPI document is the gateway's contract, checked against a live one.

A real Engine on tmp_path (real WAL, real fsync) and its gateway, served by
the project's GatewayServer (uvicorn) on 127.0.0.1 and a free port, in a
thread of its own; schemathesis, in a subprocess, reads ``/openapi.json``
over HTTP and sends what the document allows and what it does not
(``--mode all``: coverage, fuzzing and stateful phases) with every check
(``--checks all``), positive data acceptance being the document-aware
variant of ``schemathesis_hooks.py``. A fixed seed (``EVENGINE_CONTRACT_SEED``
to try another) and a bound on the examples per operation
(``EVENGINE_CONTRACT_EXAMPLES``) keep a run reproducible and about a
minute long on 2 cores. Any failure or error fails the test, with
schemathesis's report (each failure with a curl line to reproduce it).

schemathesis is in the ``test`` extra: this never skips.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import httpx
import jsonschema_rs   # schemathesis's own validator
import pytest
import schemathesis  # noqa: F401 - the test extra has it; an ImportError fails the run, it never skips

from engine.gateway import EmbeddedEntry, GatewayServer, KafkaEntry, create_app
from engine.gateway.metrics import HttpMetrics
from engine.gateway.app import SCHEMA_VALID_422
from engine.service.engine import Engine, EngineConfig
from engine.service.runtime import EngineRuntime

HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
SEED = int(os.environ.get("EVENGINE_CONTRACT_SEED", "20240607"))
MAX_EXAMPLES = int(os.environ.get("EVENGINE_CONTRACT_EXAMPLES", "60"))
TIMEOUT_S = 300
TOKEN = "s3cret"

ENTRY_ROUTES = {("/orders", "post"), ("/orders/{symbol}/{order_id}", "delete"),
                ("/orders/{symbol}/{order_id}", "patch"), ("/symbols", "post"), ("/assets", "post"),
                ("/deposits", "post"), ("/withdrawals", "post")}
BATCH_ROUTE = ("/orders/batch", "post")
READ_ROUTES = {("/books/{symbol}", "get"), ("/trades", "get"), ("/accounts/{account}", "get"), ("/health", "get")}


class LiveGateway:
    """An engine on ``data_dir`` and its gateway on 127.0.0.1, port 0, served
    by :class:`GatewayServer` on an asyncio loop in a thread of its own (the
    subprocess that tests it shares nothing with it but the socket)."""

    def __init__(self, data_dir: Path, token: Optional[str] = None) -> None:
        self.data_dir = str(data_dir)
        self.token = token
        self.port: Optional[int] = None
        self.failed: Any = None
        self.last_seq = 0
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._thread = threading.Thread(target=self._run, name="contract-gateway", daemon=True)
        self.http_metrics = HttpMetrics()    # the middleware of --metrics is in the path being checked

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # As tests/unit/gateway: no GC pause (its gc.collect() walks the whole test process), no CPU pinning.
        engine = Engine(EngineConfig(data_dir=self.data_dir, snapshot_every=0, control_socket=False,
                                     pause_cyclic_gc=False, pin_cpus=False))
        engine.open()
        rt = EngineRuntime(engine)
        try:
            await rt.start()
            app = create_app(EmbeddedEntry(rt), rt, token=self.token, metrics=self.http_metrics)
            async with GatewayServer(app, "127.0.0.1", 0, grace_s=2.0) as server:
                self.port = server.port
                self._ready.set()
                await self._stop.wait()
            self.failed = rt.failed
            self.last_seq = engine.matcher.last_seq
        finally:
            await rt.stop()
            engine.close()

    def __enter__(self) -> "LiveGateway":
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the gateway did not start within 60 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the gateway did not stop"
        if self._error is not None:
            raise self._error


def run_schemathesis(gw: LiveGateway, workdir: Path, *headers: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{gw.url}/openapi.json",
           "--checks", "all", "--exclude-checks", "positive_data_acceptance",
           "--mode", "all", "--phases", "examples,coverage,fuzzing,stateful",
           "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--generation-database", "none",
           "--workers", "1", "--request-timeout", "20", "--no-color", "--output-truncate", "false",
           "--report", "junit", "--report-dir", str(workdir / "report")]
    for header in headers:
        cmd += ["--header", header]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "NO_COLOR": "1"}
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
def test_schemathesis_finds_no_contract_failure_against_a_live_gateway(tmp_path, token):
    with LiveGateway(tmp_path / "data", token) as gw:
        headers = [f"Authorization: Bearer {token}"] if token else []
        code, report = run_schemathesis(gw, tmp_path, *headers)
        health = httpx.get(f"{gw.url}/health", timeout=20)
    print(report)
    # Exit status 1: a failure or an error. Warnings (e.g. "mostly rejected generated data" where a
    # book's tick size refuses most random prices, a documented 422) are reported, not failed.
    assert code == 0 and "FAILURES" not in report and "ERRORS" not in report, \
        f"schemathesis found contract failures:\n{report}"
    tested = re.search(r"Tested:\s+(\d+)", report)
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert tested and int(tested.group(1)) == 12, report         # every operation of the document
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) > 500, report
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    assert gw.failed is None and gw.last_seq > 0                  # orders reached the engine, which never failed
    # Every request was counted under its route's template (bounded labels, whatever paths were fuzzed).
    counted = dict(gw.http_metrics.requests)
    templates = set(document(token)["paths"]) | {"/openapi.json", "unmatched"}
    assert sum(counted.values()) > int(cases.group(1)) and {r for r, _, _ in counted} <= templates, counted


# ------------------------------------------------------------------ the document itself


def document(token: Optional[str] = None, entry: Any = None, with_view: bool = True, metrics: Any = None) -> dict:
    """``/openapi.json`` of an app built without starting anything (no lifespan)."""
    app = create_app(entry if entry is not None else EmbeddedEntry(None), _FakeView() if with_view else None,
                     token=token, metrics=metrics)

    async def get() -> dict:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
            r = await http.get("/openapi.json")
            assert r.status_code == 200, r.text
            return r.json()
    return asyncio.run(get())


class _FakeView:
    """Enough of an EngineRuntime for create_app's market data hub (nothing is read here)."""

    class engine:   # noqa: N801 - attribute access like the runtime's
        class matcher:   # noqa: N801
            last_seq = 0

        class gate:   # noqa: N801
            held = 0

    @staticmethod
    def add_sink(_sink: Any) -> None:
        pass


def operations(doc: dict) -> dict:
    return {(path, method): op for path, ops in doc["paths"].items() for method, op in ops.items()}


def test_no_token_no_security_and_a_token_bearer_on_order_entry_only():
    open_doc = document()
    assert "securitySchemes" not in open_doc.get("components", {})
    for route, op in operations(open_doc).items():
        assert "security" not in op, route
        assert "401" not in op["responses"], route

    doc = document(TOKEN)
    schemes = doc["components"]["securitySchemes"]
    assert len(schemes) == 1
    (name, scheme), = schemes.items()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    ops = operations(doc)
    assert set(ops) == ENTRY_ROUTES | {BATCH_ROUTE} | READ_ROUTES
    for route in ENTRY_ROUTES | {BATCH_ROUTE}:
        assert ops[route]["security"] == [{name: []}], route
        unauthorized = ops[route]["responses"]["401"]
        assert "WWW-Authenticate" in unauthorized["headers"], route
    for route in READ_ROUTES:
        assert "security" not in ops[route] and "401" not in ops[route]["responses"], route


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}/{i}")


def test_the_document_is_exact_json_schema():
    doc = document()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        jsonschema_rs.meta.validate(schema)   # valid JSON Schema 2020-12 (OpenAPI 3.1)
    for where, node in _walk(doc):
        ref = node.get("$ref")
        if isinstance(ref, str):
            assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, (where, ref)
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                # a float bound is not exact: 2**63-1 as a float is 2**63
                assert type(node[key]) is int, (where, key, node[key])
        assert not {"ge", "le", "gt", "lt"} & set(node), where    # pydantic's names, unknown to JSON Schema

    ops = operations(doc)
    for (path, method), op in ops.items():
        for param in op.get("parameters", []):
            schema = param["schema"]
            assert "anyOf" not in schema and schema.get("type") != "null", (path, param["name"])
            if param["in"] == "path":
                assert param["required"] is True
                if param["name"] in ("order_id", "account"):
                    assert schema["type"] == "integer" and type(schema["minimum"]) is int, (path, param)
                    assert schema["maximum"] == 2**63 - 1, (path, param)
                    assert schema["minimum"] == (1 if param["name"] == "order_id" else 0)
                else:
                    assert (schema["type"], schema["minLength"], schema["maxLength"]) == ("string", 1, 32)
    # the limits the engine enforces are the document's
    place = schemas["PlaceBody"]["properties"]
    assert place["qty"]["maximum"] == 10**15 and place["price"]["anyOf"][0]["maximum"] == 10**12
    assert schemas["SymbolBody"]["properties"]["tick_size"]["maximum"] == 10**12


def test_every_status_is_documented_per_route_and_the_cross_field_rules_are_stated():
    ops = operations(document())
    for route in ENTRY_ROUTES:
        assert set(ops[route]["responses"]) == {"200", "409", "422", "503"}, route
        assert ops[route]["x-schema-valid-422"] == SCHEMA_VALID_422[route]
    assert set(ops[("/books/{symbol}", "get")]["responses"]) == {"200", "404", "422", "503"}
    assert set(ops[("/trades", "get")]["responses"]) == {"200", "404", "422", "503"}
    assert set(ops[("/accounts/{account}", "get")]["responses"]) == {"200", "422", "503"}
    assert set(ops[("/health", "get")]["responses"]) == {"200", "503"}
    # a batch answers 200 with one result per order (each a POST /orders status and body), or 422
    assert set(ops[BATCH_ROUTE]["responses"]) == {"200", "422"}
    assert set(operations(document(with_view=False))[("/health", "get")]["responses"]) == {"200"}
    # Kafka order entry answers 202, never 200 or 409 (the engine decides later)
    kafka = operations(document(entry=KafkaEntry("127.0.0.1:1")))
    for route in ENTRY_ROUTES:
        assert set(kafka[route]["responses"]) == {"202", "422", "503"}, route
    batch_item = kafka[BATCH_ROUTE]["responses"]["200"]["content"]["application/json"]["schema"]
    assert batch_item["allOf"][1]["properties"]["results"]["items"]["allOf"][1]["properties"]["status"] == \
        {"enum": [202, 503]}

    schemas = document()["components"]["schemas"]
    # the rules between fields, as JSON Schema: checked on bodies
    place = jsonschema_rs.Draft202012Validator(schemas["PlaceBody"])
    good = [{"symbol": "A", "side": "buy", "price": 1, "qty": 1},
            {"symbol": "A", "side": "buy", "order_type": "market", "qty": 1, "max_quote": 5},
            {"symbol": "A", "side": "sell", "order_type": "market", "qty": 1, "price": 0, "tif": "fok"},
            {"symbol": "A", "side": "sell", "price": 1, "qty": 1, "post_only": True}]
    bad = [{"symbol": "A", "side": "buy", "qty": 1},                                       # limit without price
           {"symbol": "A", "side": "buy", "price": 0, "qty": 1},
           {"symbol": "A", "side": "buy", "order_type": "market", "qty": 1, "tif": "gtc"},
           {"symbol": "A", "side": "buy", "order_type": "market", "qty": 1, "price": 5},
           {"symbol": "A", "side": "buy", "order_type": "market", "qty": 1, "post_only": True},
           {"symbol": "A", "side": "sell", "order_type": "market", "qty": 1, "max_quote": 5},
           {"symbol": "A", "side": "buy", "price": 1, "qty": 1, "max_quote": 5},
           {"symbol": "A", "side": "buy", "price": 1, "qty": 1, "post_only": True, "tif": "ioc"}]
    assert [place.is_valid(b) for b in good] == [True] * len(good)
    assert [place.is_valid(b) for b in bad] == [False] * len(bad)
    symbol = jsonschema_rs.Draft202012Validator(schemas["SymbolBody"])
    assert symbol.is_valid({"symbol": "S", "base": "BTC", "quote": "USD", "risk": True})
    for body in ({"symbol": "S", "base": "BTC"}, {"symbol": "S", "quote": "USD", "base": None},
                 {"symbol": "S", "risk": True}):
        assert not symbol.is_valid(body), body
    # and those it cannot state are in the descriptions
    description = schemas["SymbolBody"]["description"]
    assert "distinct_assets" in description and "fee_order" in description
    assert "PRICE_OFF_TICK" in schemas["PlaceBody"]["description"]


@pytest.mark.parametrize("token", [None, TOKEN], ids=["no-token", "token"])
def test_metrics_change_nothing_in_the_document(token):
    """--metrics counts requests in a middleware and serves /metrics on a port of its own."""
    metrics = HttpMetrics()
    doc = document(token, metrics=metrics)
    assert doc == document(token) and "/metrics" not in doc["paths"]
    assert metrics.requests == {("/openapi.json", "GET", "200"): 1}
