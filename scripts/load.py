#!/usr/bin/env python3
"""Send an order flow to evengine: through Kafka (the ``orders`` topic) or the HTTP gateway.

    python scripts/load.py --source synthetic:200000:42 --symbols 8 \\
        --to kafka:127.0.0.1:9092:orders --stamp-now [--format msgpack] [--rate 50000]
    python scripts/load.py --source lobster:GOOG_..._message_10.csv:GOOG_..._orderbook_10.csv \\
        --to http://127.0.0.1:8080 --concurrency 16 [--token T]

Sources (``--source``):
  synthetic:N[:SEED]        N seeded orders (``engine.io.synthetic``: 70% limit, 25% cancel,
                            5% marketable); with ``--symbols K``, K interleaved flows on
                            SYN0..SYN{K-1} (seeds SEED, SEED+1, ...) with N/K orders each.
  lobster:MESSAGES[:ORDERBOOK]  a LOBSTER message file (``engine.io.lobster``, match mode).
  bitstamp:ORDERS           a Bitstamp L3 capture, either ob-analytics layout, plain/.gz/.xz/.bz2 (``engine.io.bitstamp``).
Each flow starts with its ``add_symbol``. The LOBSTER and Bitstamp sources decide some
commands from the book they see, so this script keeps a shadow ``Matcher`` of its own
and applies every command to it as it generates the flow. Commands that are not orders
(``BadInput`` rows of a file) are skipped and counted. The flow is prepared (and for
Kafka encoded) before the clock starts: the figures time the sending only.

Targets (``--to``):
  kafka:BOOTSTRAP[:TOPIC]   an idempotent aiokafka producer (acks=all), records keyed by
                            symbol, values in the ``orders`` format of engine/io/MESSAGES.md
                            (``--format json|msgpack``). TOPIC defaults to ``orders``; an empty
                            BOOTSTRAP (``kafka:`` or ``kafka::TOPIC``) means
                            $KAFKA_BOOTSTRAP_SERVERS. ``--stamp-now`` sets each record's
                            ``ts_ns`` to time.time_ns() just before it is handed to the
                            producer (the engine stamps the taker's ``ts_ns`` on its trades,
                            so a trades consumer can measure end-to-end latency); without it
                            the source's own ``ts_ns`` is sent.
  http://HOST:PORT          the HTTP gateway (``evengine start --http``): place -> POST /orders,
                            cancel -> DELETE /orders/{symbol}/{order_id}, amend -> PATCH
                            /orders/{symbol}/{order_id}, add_symbol -> POST /symbols, with
                            ``--concurrency`` requests in flight and the bearer token of
                            ``--token`` / $EVENGINE_TOKEN. ``ts_ns`` is not sent (the gateway
                            stamps it). With concurrency > 1 one symbol's requests can
                            overtake each other (a cancel before its place is rejected as
                            unknown): use --concurrency 1 for the exact sequence.

``--rate R`` paces the sending at R orders/s (0: as fast as possible). The summary gives
orders sent, seconds, orders/s and, for HTTP, the status-code counts and the p50/p99
request latency; ``--json`` prints it as one JSON line on stdout.
Exit status: 0 ok; 1 sending failed (broker unreachable, HTTP transport errors); 2 bad usage.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import typer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.core import Matcher  # noqa: E402
from engine.io.messages import encode_order, order_from_command  # noqa: E402

FORMATS = ("json", "msgpack")
DEFAULT_TOPIC = "orders"


class UsageError(ValueError):
    """A bad --source / --to / option combination (exit status 2)."""


# --------------------------------------------------------------------------- sources


def synthetic_flow(n: int, seed: int, symbols: int = 1, base: str = "SYN") -> Iterator[dict]:
    """``n`` seeded orders over ``symbols`` interleaved books (round robin), each
    flow its own :class:`SyntheticSource` (seed ``seed + i``) and first an
    ``add_symbol``. One symbol is called ``base``; several ``base0``, ``base1``, ..."""
    from engine.io.synthetic import SyntheticSource
    if symbols < 1:
        raise UsageError("--symbols must be >= 1")
    names = [base] if symbols == 1 else [f"{base}{i}" for i in range(symbols)]
    flows = []
    for i, name in enumerate(names):
        count = n // symbols + (1 if i < n % symbols else 0)
        flows.append(SyntheticSource(count, seed + i, symbol=name).commands(Matcher(), None))
    for group in itertools.zip_longest(*flows):
        for cmd in group:
            if cmd is not None:
                yield order_from_command(cmd)


def _shadowed(src: Any, skipped: list) -> Iterator[dict]:
    """A file source's commands as order dicts; every command is applied to a
    shadow matcher first, because these sources read the book to decide what
    comes next. ``skipped[0]`` counts commands that are not orders."""
    m = Matcher()
    for cmd in src.commands(m, None):
        m.apply(m.last_seq + 1, cmd)
        try:
            yield order_from_command(cmd)
        except ValueError:
            skipped[0] += 1


def parse_source(spec: str, symbols: int = 1, symbol: Optional[str] = None,
                 skipped: Optional[list] = None) -> Iterator[dict]:
    """``--source`` -> an iterator of order dicts (the fields of MESSAGES.md).

    Raises:
        UsageError: an unknown kind, a malformed spec, a missing file, or
            ``--symbols`` with a file source.
    """
    skipped = skipped if skipped is not None else [0]
    kind, sep, rest = spec.partition(":")
    if kind not in ("synthetic", "lobster", "bitstamp"):
        raise UsageError(f"--source {spec!r}: unknown kind {kind!r}; use synthetic:N[:SEED], "
                         "lobster:MESSAGES[:ORDERBOOK] or bitstamp:ORDERS")
    if not sep or not rest:
        raise UsageError(f"--source {spec!r}: missing its argument after '{kind}:'")
    if kind != "synthetic" and symbols != 1:
        raise UsageError("--symbols applies to a synthetic source only")
    if kind == "synthetic":
        parts = rest.split(":")
        try:
            if len(parts) > 2:
                raise ValueError
            n = int(parts[0])
            seed = int(parts[1]) if len(parts) == 2 else 1
        except ValueError:
            raise UsageError(f"--source {spec!r}: expected synthetic:N[:SEED] with integers") from None
        if n < 0:
            raise UsageError(f"--source {spec!r}: N must be >= 0")
        return synthetic_flow(n, seed, symbols, symbol or "SYN")
    from engine.cli import make_source   # the same file sources as `evengine start --source`
    try:
        src = make_source(spec, symbol)
    except Exception as exc:  # noqa: BLE001 - a bad spec, file name or file: a usage error
        raise UsageError(f"--source {spec!r}: {exc}") from None
    return _shadowed(src, skipped)


# --------------------------------------------------------------------------- values


_MSGPACK_U64_MAX = b"\xcf" + b"\xff" * 8


def value_template(order: dict, fmt: str = "json") -> bytes:
    """The order's encoded value without the ``ts_ns`` digits, ``ts_ns`` moved
    last: :func:`stamp` completes it with a time in a few hundred ns, so records
    can be stamped at the moment they are sent without encoding them then."""
    import msgpack
    d = {k: v for k, v in order.items() if k != "ts_ns"}
    if fmt == "msgpack":
        enc = msgpack.packb({**d, "ts_ns": 2**64 - 1})
        assert enc.endswith(_MSGPACK_U64_MAX)
        return enc[:-8]                        # ends with 0xcf: a big-endian uint64 follows
    return encode_order(d)[:-1] + b',"ts_ns":'


def stamp(template: bytes, ts_ns: int, fmt: str = "json") -> bytes:
    """A :func:`value_template` completed with ``ts_ns``: a valid ``orders`` value."""
    if fmt == "msgpack":
        return template + ts_ns.to_bytes(8, "big")
    return template + b"%d}" % ts_ns


def percentile(sorted_values: list, q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


# --------------------------------------------------------------------------- targets


def parse_target(spec: str) -> dict:
    """``--to`` -> ``{"kind": "kafka", "bootstrap", "topic"}`` or ``{"kind": "http", "url"}``.

    Raises:
        UsageError: anything else.
    """
    if spec.startswith(("http://", "https://")):
        u = urllib.parse.urlsplit(spec)
        if not u.hostname:
            raise UsageError(f"--to {spec!r}: no host in the URL")
        try:
            u.port
        except ValueError:
            raise UsageError(f"--to {spec!r}: bad port") from None
        return {"kind": "http", "url": spec.rstrip("/")}
    kind, sep, rest = spec.partition(":")
    if kind == "kafka":
        topic = DEFAULT_TOPIC
        boot = rest
        if rest:
            head, colon, last = rest.rpartition(":")
            if colon and not last.isdigit():       # the last part is not a port: it is the topic
                boot, topic = head, last
        if not topic:
            raise UsageError(f"--to {spec!r}: empty topic")
        if not boot:
            boot = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
            if not boot:
                raise UsageError(f"--to {spec!r}: no bootstrap servers, and KAFKA_BOOTSTRAP_SERVERS is unset")
        for hp in boot.split(","):
            host, colon, port = hp.rpartition(":")
            if not colon or not host or not port.isdigit():
                raise UsageError(f"--to {spec!r}: bootstrap {hp!r} is not HOST:PORT")
        return {"kind": "kafka", "bootstrap": boot, "topic": topic}
    raise UsageError(f"--to {spec!r}: use kafka:BOOTSTRAP[:TOPIC] or http://HOST:PORT")


class _Pacer:
    """``await pace(i)``: hold order ``i`` until ``t0 + i / rate`` (no-op at rate 0)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0 = time.perf_counter()

    async def __call__(self, i: int) -> None:
        if self.rate > 0:
            delay = self.t0 + i / self.rate - time.perf_counter()
            if delay > 0.0005:
                await asyncio.sleep(delay)


class _Progress:
    """A rich progress bar on stderr (or nothing)."""

    def __init__(self, enabled: bool, total: int, what: str) -> None:
        self.bar = None
        if enabled and total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(what, total=total)

    def __enter__(self) -> "_Progress":
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)


async def send_kafka(orders: list, bootstrap: str, topic: str, *, fmt: str = "json", stamp_now: bool = False,
                     rate: float = 0.0, linger_ms: int = 5, progress: bool = False) -> dict:
    """Produce ``orders`` (dicts) in order, keyed by symbol; wait for every ack."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError
    if stamp_now:
        prepared = [(o["symbol"].encode(), value_template(o, fmt)) for o in orders]
    else:
        prepared = [(o["symbol"].encode(), encode_order(o, fmt)) for o in orders]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                                linger_ms=linger_ms, max_batch_size=1 << 20, request_timeout_ms=30_000)
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise ConnectionError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    try:
        await producer.partitions_for(topic)    # metadata (auto-creates the topic if the broker does)
        pace = _Pacer(rate)
        last: dict = {}
        time_ns = time.time_ns
        send = producer.send
        futures = []
        with _Progress(progress, len(prepared), f"-> {topic}") as bar:
            t0 = time.perf_counter()
            pace.t0 = t0
            for i, (key, value) in enumerate(prepared):
                if rate and not i & 15:
                    await pace(i)
                if stamp_now:
                    value = stamp(value, time_ns(), fmt)
                fut = await send(topic, value, key=key)
                futures.append(fut)
                last[key] = fut
                if progress and not i % 2000:
                    bar.update(i)
            await asyncio.gather(*last.values(), return_exceptions=True)
            await producer.flush()
            seconds = time.perf_counter() - t0
        failed = [f for f in futures if not f.done() or f.cancelled() or f.exception() is not None]
        if failed:
            f = failed[0]
            why = "not acknowledged" if not f.done() or f.cancelled() else repr(f.exception())
            raise ConnectionError(f"{len(failed):,} of {len(futures):,} records were not acknowledged by "
                                  f"{bootstrap} (first: {why})")
        offsets: dict = {}
        for fut in last.values():
            meta = fut.result()
            offsets[meta.partition] = max(offsets.get(meta.partition, -1), meta.offset)
    except KafkaError as exc:
        raise ConnectionError(f"sending to {topic} at {bootstrap} failed: {exc!r}") from None
    finally:
        await producer.stop()
    n = len(prepared)
    return {"target": f"kafka:{bootstrap}:{topic}", "format": fmt, "orders": n, "seconds": round(seconds, 3),
            "orders_per_s": round(n / seconds) if seconds > 0 else 0,
            "last_offsets": {str(p): o for p, o in sorted(offsets.items())}}


def http_request(order: dict) -> tuple[str, str, Optional[dict]]:
    """An order dict as ``(method, path, json body)`` of the gateway."""
    kind = order["type"]
    q = urllib.parse.quote
    if kind == "place":
        body = {k: v for k, v in order.items() if k not in ("type", "ts_ns")}
        return "POST", "/orders", body
    if kind == "cancel":
        return "DELETE", f"/orders/{q(order['symbol'], safe='')}/{order['order_id']}", None
    if kind == "amend":
        return "PATCH", f"/orders/{q(order['symbol'], safe='')}/{order['order_id']}", \
            {"price": order["price"], "qty": order["qty"]}
    if kind == "add_symbol":
        return "POST", "/symbols", {"symbol": order["symbol"], "tick_size": order.get("tick_size", 1)}
    raise ValueError(f"not an order type: {kind!r}")


async def send_http(orders: list, url: str, *, concurrency: int = 8, rate: float = 0.0, token: Optional[str] = None,
                    timeout_s: float = 30.0, progress: bool = False) -> dict:
    """Send ``orders`` with ``concurrency`` requests in flight; count status codes, time each request."""
    import httpx
    requests = [http_request(o) for o in orders]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    codes: dict = {}
    latencies: list = []
    errors: dict = {}
    counter = itertools.count()
    n = len(requests)
    pace = _Pacer(rate)
    done = [0]
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout_s) as client:
        async def worker(bar: _Progress) -> None:
            perf = time.perf_counter
            while True:
                i = next(counter)
                if i >= n:
                    return
                await pace(i)
                method, path, body = requests[i]
                t = perf()
                try:
                    resp = await client.request(method, path, json=body)
                except httpx.HTTPError as exc:
                    name = type(exc).__name__
                    errors[name] = errors.get(name, 0) + 1
                    if name in ("ConnectError",) and errors[name] >= concurrency and not codes:
                        raise ConnectionError(f"cannot connect to {url}: {exc}") from None
                    continue
                latencies.append(perf() - t)
                codes[resp.status_code] = codes.get(resp.status_code, 0) + 1
                done[0] += 1
                if progress and not done[0] % 200:
                    bar.update(done[0])

        with _Progress(progress, n, f"-> {url}") as bar:
            t0 = time.perf_counter()
            pace.t0 = t0
            tasks = [asyncio.ensure_future(worker(bar)) for _ in range(max(1, min(concurrency, n or 1)))]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
            seconds = time.perf_counter() - t0
    latencies.sort()
    sent = sum(codes.values())
    return {"target": url, "orders": sent, "seconds": round(seconds, 3),
            "orders_per_s": round(sent / seconds) if seconds > 0 else 0, "concurrency": concurrency,
            "status_codes": {str(k): v for k, v in sorted(codes.items())}, "errors": errors,
            "latency_p50_ms": round(percentile(latencies, 50) * 1000, 3),
            "latency_p99_ms": round(percentile(latencies, 99) * 1000, 3)}


# --------------------------------------------------------------------------- CLI


def _human(summary: dict) -> str:
    lines = [f"orders sent: {summary['orders']:,}   seconds: {summary['seconds']:.3f}   "
             f"orders/s: {summary['orders_per_s']:,}   -> {summary['target']}"]
    if summary.get("skipped"):
        lines.append(f"skipped (not orders: BadInput rows of the file): {summary['skipped']:,}")
    if "last_offsets" in summary:
        lines.append(f"format: {summary['format']}   last offset per partition: "
                     + ", ".join(f"{p}: {o}" for p, o in summary["last_offsets"].items()))
    if "status_codes" in summary:
        lines.append("status codes: " + (", ".join(f"{c}: {k:,}" for c, k in summary["status_codes"].items())
                                          or "none"))
        if summary["status_codes"].get("401") and set(summary["status_codes"]) == {"401"}:
            lines.append("hint: every request answered 401: the gateway wants a token (--token / EVENGINE_TOKEN)")
        if summary["errors"]:
            lines.append("transport errors: " + ", ".join(f"{e}: {k:,}" for e, k in summary["errors"].items()))
        lines.append(f"request latency: p50 {summary['latency_p50_ms']} ms   p99 {summary['latency_p99_ms']} ms   "
                     f"(concurrency {summary['concurrency']})")
    return "\n".join(lines)


def main(
    source: str = typer.Option(..., "--source", "-s", help="synthetic:N[:SEED], lobster:MESSAGES[:ORDERBOOK] or bitstamp:ORDERS"),
    to: str = typer.Option(..., "--to", "-t", help="kafka:BOOTSTRAP[:TOPIC] or http://HOST:PORT"),
    symbols: int = typer.Option(1, "--symbols", help="Synthetic only: K interleaved symbols SYN0..SYN{K-1}."),
    symbol: Optional[str] = typer.Option(None, "--symbol", help="Symbol (LOBSTER: default from the file name; Bitstamp: BTCUSD; synthetic: base name, SYN)."),
    limit: int = typer.Option(0, "--limit", help="Send only the first N orders of the flow (0: all)."),
    rate: float = typer.Option(0.0, "--rate", help="Orders per second (0: as fast as possible)."),
    fmt: str = typer.Option("json", "--format", help="Kafka value format: json or msgpack."),
    stamp_now: bool = typer.Option(False, "--stamp-now", help="Kafka: set ts_ns to time.time_ns() at send time."),
    linger_ms: int = typer.Option(5, "--linger-ms", help="Kafka producer linger."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", help="HTTP: requests in flight."),
    token: Optional[str] = typer.Option(None, "--token", envvar="EVENGINE_TOKEN", help="HTTP: bearer token."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: when stderr is a terminal)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON line."),
) -> None:
    """Send an order flow to evengine (Kafka orders topic or HTTP gateway) and print what it took."""
    try:
        target = parse_target(to)
        if fmt not in FORMATS:
            raise UsageError(f"--format {fmt!r}: use json or msgpack")
        if rate < 0 or concurrency < 1 or limit < 0:
            raise UsageError("--rate and --limit must be >= 0 and --concurrency >= 1")
        if target["kind"] == "http" and (fmt != "json" or stamp_now):
            raise UsageError("--format and --stamp-now apply to a Kafka target only")
        skipped = [0]
        flow: Iterable[dict] = parse_source(source, symbols, symbol, skipped)
        t = time.perf_counter()
        orders = list(itertools.islice(flow, limit) if limit else flow)
    except UsageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    show = sys.stderr.isatty() if progress is None else progress
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)   # "Topic X not found" while auto-creating
    if not json_out:
        typer.echo(f"prepared {len(orders):,} orders from {source} in {time.perf_counter() - t:.2f} s", err=True)
    try:
        if target["kind"] == "kafka":
            summary = asyncio.run(send_kafka(orders, target["bootstrap"], target["topic"], fmt=fmt,
                                             stamp_now=stamp_now, rate=rate, linger_ms=linger_ms, progress=show))
        else:
            summary = asyncio.run(send_http(orders, target["url"], concurrency=concurrency, rate=rate,
                                            token=token, progress=show))
    except ConnectionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    summary["source"] = source
    summary["skipped"] = skipped[0]
    typer.echo(json.dumps(summary) if json_out else _human(summary))
    if summary.get("errors"):
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
