"""The ``evengine`` command line (typer)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="evengine: an event-sourced, durable order matching engine.")

EXIT_IO = 74   # sysexits.h EX_IOERR: the WAL or a data file could not be written (a full disk, EIO)

DataDir = typer.Option("data", "--data-dir", "-d", help="The engine's data directory (WAL, snapshots, control socket).")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


PRUNED_EXIT = 3
"""Exit code of a command asked about seqs a WAL prune removed (``evengine wal prune``)."""


def _fail_pruned(exc: Exception) -> None:
    _fail(f"{type(exc).__name__}: {exc}", PRUNED_EXIT)


MetricsOpt = typer.Option(None, "--metrics", help="Serve Prometheus metrics on HOST:PORT at /metrics (port 0: any "
                                                   "free port; the address is printed to stderr as 'metrics on URL').")


def _metrics_addr(addr: Optional[str]) -> Optional[tuple[str, int]]:
    """Check ``--metrics HOST:PORT`` early (exit 2 when malformed)."""
    if addr is None:
        return None
    from engine.prom import parse_metrics_addr
    try:
        return parse_metrics_addr(addr)
    except ValueError as exc:
        _fail(str(exc), 2)
    return None


def _serve_metrics(addr: Optional[str], *collectors: Any) -> Any:
    """Start the ``/metrics`` server of ``--metrics`` (None without one); exit 1 when the address cannot be bound."""
    if addr is None:
        return None
    from engine.prom import MetricsBindError, start_metrics_server
    try:
        return start_metrics_server(addr, *collectors)
    except MetricsBindError as exc:
        _fail(str(exc))
    return None


def _require_data(data_dir: str) -> None:
    if not os.path.isdir(os.path.join(data_dir, "wal")):
        _fail(f"no evengine data in {data_dir} (no wal/ directory); run `evengine start --data-dir {data_dir} ...` first")


def make_source(spec: str, symbol: Optional[str] = None, *, price_decimals: Optional[int] = None,
                size_decimals: Optional[int] = None, accounts: int = 0) -> Any:
    """Build a source from ``lobster:MESSAGES[:ORDERBOOK]``, ``bitstamp:ORDERS``
    or ``synthetic:N[:SEED]`` (the seeded benchmark flow).

    ``price_decimals``/``size_decimals`` (Bitstamp only; ``None``: measured
    from the file) fix the units, see ``engine.io.bitstamp.BitstampSource``.
    ``accounts`` (synthetic only) funds that many accounts and turns risk on
    (``engine.io.synthetic.SyntheticSource``); replayed market data has no
    known balances, so its books keep risk off.

    Raises:
        ValueError: unknown kind, missing file, a wrong Bitstamp header, or
            decimals given for a source other than Bitstamp.
    """
    kind, _, rest = spec.partition(":")
    if not rest:
        raise ValueError(f"source {spec!r}: expected lobster:MESSAGES[:ORDERBOOK] or bitstamp:ORDERS")
    if accounts and kind != "synthetic":
        raise ValueError(f"source {spec!r}: --accounts applies to synthetic sources only (the balances of a "
                         "file's participants are unknown)")
    if kind == "lobster":
        parts = rest.split(":")
        if len(parts) > 2:
            raise ValueError(f"source {spec!r}: expected lobster:MESSAGES[:ORDERBOOK]")
        for p in parts:
            if not os.path.isfile(p):
                raise ValueError(f"no such file: {p}")
        from engine.io.lobster import LobsterSource
        return LobsterSource(parts[0], parts[1] if len(parts) == 2 else None, symbol=symbol)
    if kind == "bitstamp":
        if not os.path.isfile(rest):
            raise ValueError(f"no such file: {rest}")
        from engine.io.bitstamp import BitstampSource
        return BitstampSource(rest, symbol=symbol or "BTCUSD", price_decimals=price_decimals,
                              size_decimals=size_decimals)
    if price_decimals is not None or size_decimals is not None:
        raise ValueError(f"source {spec!r}: --price-decimals/--size-decimals apply to bitstamp sources only")
    if kind == "synthetic":
        parts = rest.split(":")
        try:
            n = int(parts[0])
            seed = int(parts[1]) if len(parts) > 1 else 1
        except ValueError:
            raise ValueError(f"source {spec!r}: expected synthetic:N[:SEED]") from None
        from engine.io.synthetic import SyntheticSource
        return SyntheticSource(n, seed, symbol=symbol or "SYN", accounts=accounts)
    raise ValueError(f"unknown source kind {kind!r} (known: lobster, bitstamp, synthetic)")


@app.command()
def start(
    source: Optional[str] = typer.Option(None, "--source", "-s", help="lobster:MESSAGES[:ORDERBOOK], bitstamp:ORDERS (.csv, .gz, .xz or .bz2; R or PyPI ob-analytics layout) or synthetic:N[:SEED]."),
    data_dir: str = DataDir,
    symbol: Optional[str] = typer.Option(None, help="Symbol for a LOBSTER file (default: the ticker in its name)."),
    speed: float = typer.Option(0.0, help="Pace: X times the file's own clock (1 = real time); 0 = as fast as possible."),
    snapshot_every: int = typer.Option(1_000_000, help="Snapshot every N WAL events (0: only on demand)."),
    snapshot_retain: int = typer.Option(3, help="Snapshots kept."),
    wal_retain: Optional[str] = typer.Option(None, "--wal-retain", help="After each snapshot remove sealed WAL segments no longer needed, keeping at least K events and/or a duration by ts_ns (e.g. 1000000, 7d, 1000000,7d); default: keep the WAL forever."),
    batch_max: int = typer.Option(256, help="Most commands per group-commit batch."),
    batch_linger_ms: float = typer.Option(0.25, help="A batch also ends once open this long (ms): Kafka, HTTP and --speed runs."),
    bulk_linger_ms: float = typer.Option(50.0, help="The same bound for a file run as fast as possible (ms; full frames); 0: use --batch-linger-ms."),
    segment_size_mb: float = typer.Option(64.0, help="WAL segment size before it is sealed (MiB)."),
    print_trades: bool = typer.Option(False, help="Print each trade as a JSON line once it is durable."),
    progress: Optional[bool] = typer.Option(None, help="Progress bar (default: when stderr is a terminal)."),
    json_summary: bool = typer.Option(False, "--json", help="Print the summary as one JSON line."),
    verbose: bool = typer.Option(True, help="Log recovery, snapshots and fork pauses to stderr."),
    kafka: Optional[str] = typer.Option(None, "--kafka", help="Kafka bootstrap servers (host:port,...): consume orders, publish trades."),
    orders_topic: str = typer.Option("orders", help="Kafka topic of incoming orders."),
    trades_topic: str = typer.Option("trades", help="Kafka topic trades are published to."),
    ledger_topic: str = typer.Option("ledger", help="Kafka topic balance changes are published to (keyed by account)."),
    group: str = typer.Option("evengine", help="Consumer group the engine commits its input offsets under (lag monitoring)."),
    partitions: Optional[str] = typer.Option(None, help="The orders partitions this engine owns, e.g. 0,1 (default: all); one engine per shard."),
    http: Optional[str] = typer.Option(None, "--http", help="Serve the HTTP order gateway on HOST:PORT (e.g. 127.0.0.1:8080)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="EVENGINE_TOKEN", help="Bearer token for order entry; required when --http is not on a loopback address."),
    pin_cpus: Optional[bool] = typer.Option(None, "--pin-cpus/--no-pin-cpus", help="Keep matching off the WAL syncer's CPU (default: on for a file source; off with --kafka/--http, where a broker or clients on the same machine need that CPU too)."),
    add_symbol: list[str] = typer.Option([], "--add-symbol", help="Open the book SYMBOL[:TICK_SIZE] at start if missing (repeatable; Kafka/HTTP mode)."),
    price_decimals: Optional[int] = typer.Option(None, "--price-decimals", help="Bitstamp source: the price unit is 10^-N USD (default: the most decimals in the file)."),
    size_decimals: Optional[int] = typer.Option(None, "--size-decimals", help="Bitstamp source: a lot is 10^-N of the file's volume unit (default: the most decimals in the file)."),
    accounts: int = typer.Option(0, "--accounts", min=0, help="Synthetic source: fund K accounts and turn pre-trade risk on."),
    shard: Optional[str] = typer.Option(None, "--shard", help="This engine's shard id (1..32 of A-Z a-z 0-9 . _ -), named in every trade and ledger record it publishes; kept in the data directory from the first start (default: what it says, else 0)."),
    metrics: Optional[str] = MetricsOpt,
    metrics_linger: float = typer.Option(0.0, "--metrics-linger", min=0.0, help="A file run: keep /metrics up this many seconds after the summary (or until SIGTERM/SIGINT), so the last figures can be scraped."),
) -> None:
    """Recover, then run the engine: on a file source to its end (exit 0 with
    a summary), or, with --kafka and/or --http, as a service until stopped.

    SIGTERM or SIGINT stop it cleanly after the current batch.
    """
    _setup_logging(verbose)
    _metrics_addr(metrics)
    from engine.service import Engine, EngineConfig
    from eventstore import EventStoreError
    from recovery.retention import parse_policy
    try:
        parse_policy(wal_retain)
    except ValueError as exc:
        _fail(str(exc), 2)
    if kafka is not None or http is not None:
        if source is not None:
            _fail("--source reads a file; it cannot be combined with --kafka or --http", 2)
        _start_service(data_dir, kafka=kafka, orders_topic=orders_topic, trades_topic=trades_topic,
                       ledger_topic=ledger_topic, group=group,
                       partitions=partitions, http=http, token=token, add_symbol=add_symbol, snapshot_every=snapshot_every,
                       snapshot_retain=snapshot_retain, segment_size_mb=segment_size_mb,
                       print_trades=print_trades, json_summary=json_summary, pin_cpus=bool(pin_cpus), shard=shard,
                       wal_retain=wal_retain, metrics=metrics)
        return
    if source is None:
        _fail("nothing to run: give --source FILE, --kafka BOOTSTRAP or --http HOST:PORT", 2)
    try:
        src = make_source(source, symbol, price_decimals=price_decimals, size_decimals=size_decimals,
                          accounts=accounts)
    except ValueError as exc:
        _fail(str(exc), 2)
    cfg = EngineConfig(data_dir=data_dir, snapshot_every=snapshot_every, snapshot_retain=snapshot_retain,
                       batch_max=batch_max, batch_linger_ms=batch_linger_ms, bulk_linger_ms=bulk_linger_ms,
                       segment_size_bytes=int(segment_size_mb * (1 << 20)),
                       pin_cpus=True if pin_cpus is None else pin_cpus, shard=shard, wal_retain=wal_retain)
    engine = Engine(cfg)
    _open_engine(engine)
    metrics_server = None
    if metrics is not None:
        from engine.service.metrics import EngineCollector
        try:
            metrics_server = _serve_metrics(metrics, EngineCollector(engine))
        except BaseException:
            engine.close()
            raise
    engine.install_signal_handlers()
    if print_trades:
        engine.add_sink(_trade_printer())
    show = sys.stderr.isatty() if progress is None else progress
    if show:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("durable seq {task.fields[seq]}"), TimeRemainingColumn(),
                       transient=True)
        task = bar.add_task(src.name, total=src.total, seq=0)

        def on_batch(e: Engine) -> None:
            pos = e.matcher.positions.get(src.name)
            bar.update(task, completed=(pos + 1) if isinstance(pos, int) else 0, seq=e.wal.peek_durable())
        try:
            with bar:
                summary = engine.run(src, speed=speed, on_batch=on_batch)
        except EventStoreError as exc:
            _fail(str(exc), EXIT_IO)
    else:
        try:
            summary = engine.run(src, speed=speed)
        except EventStoreError as exc:
            _fail(str(exc), EXIT_IO)
    d = summary.as_dict()
    if json_summary:
        print(json.dumps(d))
    else:
        pauses = summary.fork_pauses_ms
        typer.echo(
            f"stopped by: {summary.stopped_by}\n"
            f"commands: {summary.commands:,}   WAL events: {summary.events:,}   trades: {summary.trades:,}   "
            f"rejects: {summary.rejects:,}\n"
            f"durable throughput: {d['durable_commands_per_s']:,} commands/s over {summary.seconds:.2f} s   "
            f"commit p50 {summary.commit_p50_ms} ms, p99 {summary.commit_p99_ms} ms, {summary.fsyncs:,} fsyncs\n"
            f"snapshots: {summary.snapshots}   fork pauses (ms): "
            f"{', '.join(f'{p:.2f}' for p in pauses) if pauses else 'none'}\n"
            f"last seq: {summary.last_seq}   match_sequence: {summary.match_sequence}\n"
            f"state hash: {summary.state_hash}")
    if metrics_server is not None:
        sys.stdout.flush()
        from engine.prom import wait_or_signal
        wait_or_signal(metrics_linger)
        metrics_server.close()


def _open_engine(engine: Any) -> None:
    """``engine.open()``, or exit with one line: 1 for a locked or damaged
    directory, :data:`EXIT_IO` when it cannot be written (a full disk)."""
    from engine.service import EngineLockedError
    from eventstore import EventStoreError, WalWriteError, describe_os_error
    from recovery import RecoveryError
    try:
        engine.open()
    except WalWriteError as exc:
        _fail(str(exc), EXIT_IO)
    except (EngineLockedError, EventStoreError, RecoveryError, ValueError) as exc:
        _fail(f"{exc}")
    except OSError as exc:
        _fail(f"cannot open {engine.config.data_dir}: {describe_os_error(exc)} ({exc.filename or 'a data file'})",
              EXIT_IO)


def _trade_printer() -> Any:
    from engine.core import Kind
    from engine.io.names import event_json

    def sink(cmd_seq: int, cmd: Any, events: list) -> None:
        for i, e in enumerate(x for x in events if x[0] == Kind.TRADE):
            print(json.dumps(event_json(cmd_seq + 1 + i, e)), flush=True)
    return sink


def _event_loop_name() -> str:
    """The event loop a service runs on (``engine.service.serve.event_loop_factory``);
    exit 2 with one line for a bad ``EVENGINE_EVENT_LOOP``."""
    from engine.service.serve import event_loop_factory
    try:
        return event_loop_factory()[0]
    except ValueError as exc:
        _fail(str(exc), 2)
    except ImportError as exc:
        _fail(f"EVENGINE_EVENT_LOOP is 'uvloop' and uvloop does not import: {exc}", 2)


def _http_bind(http: str, token: Optional[str]) -> tuple[str, int]:
    """``--http HOST:PORT`` -> ``(host, port)``; exit 2 when malformed, or not
    loopback without a token (``engine.gateway.check_bind``)."""
    from engine.gateway import check_bind
    from engine.gateway.fast_orders import fast_orders_enabled
    try:
        fast_orders_enabled()
    except ValueError as exc:
        _fail(str(exc), 2)
    host, _, port = http.rpartition(":")
    if not host or not port.isdigit():
        _fail(f"--http wants HOST:PORT, got {http!r}", 2)
    try:
        check_bind(host, token)
    except ValueError as exc:
        _fail(str(exc), 2)
    return host, int(port)


def _start_service(data_dir: str, *, kafka: Optional[str], orders_topic: str, trades_topic: str,
                   ledger_topic: str, group: str,
                   partitions: Optional[str],
                   http: Optional[str], token: Optional[str], add_symbol: list[str], snapshot_every: int,
                   snapshot_retain: int, segment_size_mb: float, print_trades: bool, json_summary: bool,
                   pin_cpus: bool, shard: Optional[str] = None, wal_retain: Optional[str] = None,
                   metrics: Optional[str] = None) -> None:
    """``evengine start --kafka/--http``: the engine as a service on an event loop (uvloop or asyncio)."""
    from engine.service import Engine, EngineConfig
    from engine.service.serve import parse_symbols, run_event_loop, serve
    from eventstore import EventStoreError
    loop_name = _event_loop_name()
    try:
        symbols = parse_symbols(add_symbol)
    except ValueError as exc:
        _fail(str(exc), 2)
    bind = _http_bind(http, token) if http is not None else None
    kcfg = None
    if kafka is not None:
        from engine.io.kafka import KafkaConfig
        try:
            parts = [int(p) for p in partitions.split(",")] if partitions else None
        except ValueError:
            _fail(f"--partitions wants integers like 0,1, got {partitions!r}", 2)
        kcfg = KafkaConfig(kafka, orders_topic=orders_topic, trades_topic=trades_topic, ledger_topic=ledger_topic,
                           group_id=group,
                           partitions=parts)
    cfg = EngineConfig(data_dir=data_dir, snapshot_every=snapshot_every, snapshot_retain=snapshot_retain,
                       segment_size_bytes=int(segment_size_mb * (1 << 20)),
                       pin_cpus=bool(pin_cpus), shard=shard, wal_retain=wal_retain)
    engine = Engine(cfg)
    _open_engine(engine)
    collector = http_metrics = metrics_server = None
    if metrics is not None:
        from engine.gateway.metrics import HttpMetrics
        from engine.service.metrics import EngineCollector
        collector = EngineCollector(engine)
        http_metrics = HttpMetrics() if bind is not None else None
        try:
            metrics_server = _serve_metrics(metrics, collector, *([http_metrics] if http_metrics else []))
        except BaseException:
            engine.close()
            raise

    def ready(info: dict) -> None:
        extra = {"metrics_url": metrics_server.url} if metrics_server is not None else {}
        print(json.dumps({"ready": True, "last_seq": engine.matcher.last_seq, **info, "event_loop": loop_name,
                          **extra}), flush=True)
    stats: dict = {}
    failure: Optional[BaseException] = None
    try:
        stats = run_event_loop(serve(engine, kafka=kcfg, http=bind, token=token, symbols=tuple(symbols),
                                  sinks=(_trade_printer(),) if print_trades else (), on_ready=ready,
                                  metrics=collector, http_metrics=http_metrics))
    except EventStoreError as exc:   # the WAL syncer failed (an fsync error): stop, recover at restart
        failure = exc
    try:
        summary = engine.close()
    except EventStoreError as exc:
        failure = failure or exc
        summary = engine.summary
    finally:
        if metrics_server is not None:
            metrics_server.close()
    if failure is not None:
        _fail(str(failure), EXIT_IO)
    d = summary.as_dict()
    d.update({"kafka": stats} if stats else {})
    print(json.dumps(d) if json_summary else
          f"stopped. last seq: {summary.last_seq}   durable seq: {summary.durable_seq}   "
          f"match_sequence: {summary.match_sequence}   rejects: {summary.rejects}\n"
          f"kafka: {json.dumps(stats)}\nstate hash: {summary.state_hash}", flush=True)


@app.command()
def gateway(
    kafka: str = typer.Option(..., "--kafka", help="Kafka bootstrap servers: orders are published there."),
    orders_topic: str = typer.Option("orders", help="Kafka topic of incoming orders."),
    http: str = typer.Option("127.0.0.1:8080", "--http", help="HOST:PORT to serve on (port 0: any free port)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="EVENGINE_TOKEN", help="Bearer token for order entry; required when not bound to a loopback address."),
    verbose: bool = typer.Option(True, help="Log to stderr."),
    metrics: Optional[str] = MetricsOpt,
) -> None:
    """The HTTP order gateway alone, in front of Kafka: each order is validated,
    published to the orders topic (keyed by symbol) and answered 202 with its
    partition and offset once the broker acknowledged it. Book and trade reads
    need an engine: `evengine start --kafka ... --http ...` serves those.
    Prints one JSON line {"ready": true, "http_port": N} once listening."""
    import asyncio
    _setup_logging(verbose)
    from engine.gateway import EntryUnavailable, GatewayServer, KafkaEntry, create_app
    from engine.service.serve import run_event_loop
    loop_name = _event_loop_name()
    host, port = _http_bind(http, token)
    _metrics_addr(metrics)
    http_metrics = None
    if metrics is not None:
        from engine.gateway.metrics import HttpMetrics
        http_metrics = HttpMetrics()
    metrics_server = _serve_metrics(metrics, *([http_metrics] if http_metrics else []))

    async def run() -> None:
        import signal as _signal
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (_signal.SIGTERM, _signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        entry = KafkaEntry(kafka, topic=orders_topic)
        try:
            await entry.start()
        except EntryUnavailable as exc:   # it connects on the first order; until then orders get 503
            logging.getLogger("evengine.gateway").warning("%s", exc)
        try:
            server = GatewayServer(create_app(entry, None, token=token, metrics=http_metrics), host, port)
            await server.start()
            extra = {"metrics_url": metrics_server.url} if metrics_server is not None else {}
            print(json.dumps({"ready": True, "http_port": server.port, "event_loop": loop_name, **extra}), flush=True)
            await stop.wait()
            await server.stop()
        finally:
            await entry.stop()
    try:
        run_event_loop(run())
    finally:
        if metrics_server is not None:
            metrics_server.close()


@app.command()
def snapshot(
    now: bool = typer.Option(False, "--now", help="Ask the running engine for a snapshot now and wait for it."),
    data_dir: str = DataDir,
    timeout: float = typer.Option(600.0, help="Seconds to wait for the snapshot."),
) -> None:
    """Ask the engine running on DATA_DIR for a snapshot; print one JSON line
    with seq, path and fork_pause_ms. Exit 1 if no engine runs there."""
    from engine.service import NoEngineError, request
    if not now:
        _fail("nothing to do: pass --now to ask the running engine for a snapshot", 2)
    try:
        answer = request(os.path.join(data_dir, "control.sock"), {"op": "snapshot"}, timeout)
    except NoEngineError as exc:
        _fail(f"{exc}. Start one with `evengine start --data-dir {data_dir} ...`")
    except OSError as exc:
        _fail(f"control socket error: {exc}")
    print(json.dumps(answer))
    if not answer.get("ok"):
        raise typer.Exit(1)


@app.command()
def status(data_dir: str = DataDir) -> None:
    """Ask the engine running on DATA_DIR for its state: one JSON line with
    last_seq, durable_seq, match_sequence, source positions and symbols.
    Exit 1 if no engine runs there."""
    from engine.service import NoEngineError, request
    try:
        answer = request(os.path.join(data_dir, "control.sock"), {"op": "status"}, 30.0)
    except NoEngineError as exc:
        _fail(str(exc))
    print(json.dumps(answer))


@app.command()
def replay(
    from_seq: Optional[int] = typer.Option(None, "--from-seq", help="First sequence number (inclusive; default: the first the WAL keeps)."),
    to_seq: Optional[int] = typer.Option(None, "--to-seq", help="Last sequence number (inclusive; default: the end)."),
    data_dir: str = DataDir,
) -> None:
    """Print the WAL's events, one JSON object per line: seq, kind (the code)
    and type (its name), the fields, and a reject's reason_name beside its
    reason code. Exit 3 if --from-seq lies in a pruned range."""
    _require_data(data_dir)
    from engine.io.names import event_json
    from eventstore import EventStoreError, PrunedRangeError
    from recovery import open_data_dir
    out = sys.stdout
    try:
        for seq, obj in open_data_dir(data_dir).events(from_seq, to_seq):
            out.write(json.dumps(event_json(seq, obj)) + "\n")
    except PrunedRangeError as exc:
        out.flush()
        _fail_pruned(exc)
    except EventStoreError as exc:
        out.flush()
        _fail(str(exc))
    except BrokenPipeError:
        sys.stderr.close()


def _need_pandas() -> None:
    try:
        import pandas  # noqa: F401
    except ImportError:
        _fail("this view needs pandas: pip install -e '.[notebook]'", 2)


@app.command()
def inspect(
    at_seq: Optional[int] = typer.Option(None, "--at-seq", help="Show the book right after this event."),
    at_time: Optional[str] = typer.Option(None, "--at-time", help="... or after the last event at or before this time (ISO 8601, UTC unless it says otherwise; or integer ns)."),
    symbol: str = typer.Option(..., "--symbol", help="The book's symbol."),
    depth: int = typer.Option(10, "--depth", help="Price levels per side."),
    level: str = typer.Option("L2", "--level", help="L2: one line per price level; L3: one line per resting order (queue rank, lots ahead, the seq it entered)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    data_dir: str = DataDir,
) -> None:
    """Time travel: the order book as it was right after event N, or at a
    time (nearest keyframe or snapshot at or before it, then WAL replay).
    Exit 3 if that state lies before what a WAL prune kept."""
    _require_data(data_dir)
    if (at_seq is None) == (at_time is None):
        _fail("give exactly one of --at-seq and --at-time", 2)
    level = level.upper()
    if level not in ("L2", "L3"):
        _fail("--level must be L2 or L3", 2)
    from eventstore import PrunedRangeError
    from recovery import open_data_dir
    history = open_data_dir(data_dir)
    try:
        if at_time is not None:
            ts: object = int(at_time) if at_time.lstrip("-").isdigit() else at_time
            at_seq = history.seq_at_time(ts)
        assert at_seq is not None
        if level == "L3":
            _need_pandas()
            frame = history.book(at_seq, symbol, depth, level="L3")
        else:
            book = history.book_at(at_seq, symbol, depth)
    except PrunedRangeError as exc:
        _fail_pruned(exc)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    except ValueError as exc:
        _fail(str(exc), 2)
    if level == "L3":
        if json_out:
            print(frame.to_json(orient="records"))
        else:
            typer.echo(f"{symbol} after seq {at_seq}: {len(frame)} resting orders")
            typer.echo(frame.to_string(index=False))
        return
    if json_out:
        print(json.dumps(book))
        return
    typer.echo(f"{symbol} after seq {at_seq}")
    typer.echo(f"{'bid qty':>12} {'price':>12} {'ask qty':<12}")
    for price, qty in reversed(book["asks"]):
        typer.echo(f"{'':>12} {price:>12} {qty:<12}")
    for price, qty in book["bids"]:
        typer.echo(f"{qty:>12} {price:>12}")


@app.command()
def order(
    order_id: int = typer.Argument(..., help="The order id."),
    symbol: str = typer.Option(..., "--symbol", help="The order's symbol."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON (one record per event)."),
    data_dir: str = DataDir,
) -> None:
    """One order's whole life from the WAL: placed, amended, each fill with its
    counterparty, its queue rank over time, cancelled or filled."""
    _require_data(data_dir)
    _need_pandas()
    from eventstore import PrunedRangeError
    from recovery import open_data_dir
    try:
        life = open_data_dir(data_dir).order(order_id, symbol)
    except PrunedRangeError as exc:
        _fail_pruned(exc)
    except KeyError as exc:
        _fail(str(exc.args[0]))
    except ValueError as exc:
        _fail(str(exc), 2)
    if len(life) == 0:
        _fail(f"no order {order_id} in {symbol}'s history")
    if json_out:
        print(_order_json(life))
    else:
        typer.echo(life.to_string(index=False))


_ORDER_REASON_KINDS = {"rejected": 65, "cancelled": 67}   # order-life event -> the event kind its reason is of


def _order_json(life: Any) -> str:
    """``evengine order --json``: the life's records, each with ``reason`` (the
    code) and ``reason_name`` after ``detail``: a reject's (``detail`` is its
    code) or a cancel's (``detail`` its name in lower case); ``null`` on the
    other events."""
    from engine.io.names import reason_code, reason_name
    records = json.loads(life.to_json(orient="records", date_format="iso"))
    for r in records:
        kind = _ORDER_REASON_KINDS.get(r.get("event"))
        code = reason_code(kind, r.get("detail")) if kind is not None else None
        if r.get("event") == "rejected" and code is not None:
            r["detail"] = code          # 300, not the 300.0 of a column of codes and nulls
        r["reason"] = code
        r["reason_name"] = reason_name(kind, code) if code is not None else None
    return json.dumps(records, separators=(",", ":"))


@app.command()
def balances(
    account: Optional[int] = typer.Option(None, "--account", help="Only this account."),
    at_seq: Optional[int] = typer.Option(None, "--at-seq", help="As after WAL event N (time travel; default: the last durable event)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    data_dir: str = DataDir,
) -> None:
    """Balances from the WAL: per account and asset, available and held (the
    asset's smallest units), and per asset the totals beside deposits minus
    withdrawals (equal, or the data is damaged: exit 1). Safe while an engine
    runs on the directory: it reads only durable events."""
    _require_data(data_dir)
    from eventstore import PrunedRangeError
    from recovery import open_data_dir
    h = open_data_dir(data_dir)
    seq = h.last_seq if at_seq is None else at_seq
    try:
        report = h.balance_report(seq, account=account)
    except PrunedRangeError as exc:
        _fail_pruned(exc)
    except ValueError as exc:
        _fail(str(exc), 2)
    if json_out:
        print(json.dumps(report))
    else:
        typer.echo(f"balances after seq {report['seq']} (ledger_seq {report['ledger_seq']})")
        typer.echo(f"{'account':>12} {'asset':<8} {'available':>22} {'held':>22}")
        for row in report["balances"]:
            typer.echo(f"{row['account']:>12} {row['asset']:<8} {row['available']:>22} {row['held']:>22}")
        typer.echo("totals (all accounts):")
        for asset, t in report["totals"].items():
            typer.echo(f"{'':>12} {asset:<8} available {t['available']}, held {t['held']}, total {t['total']}, "
                       f"deposits - withdrawals {t['deposits_minus_withdrawals']}")
    if not report["totals_equal_supply"]:
        raise typer.Exit(1)


@app.command()
def verify(
    data_dir: str = DataDir,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recover into memory: check the WAL's integrity, that replay reproduces
    the logged trades, and every snapshot. Exit 1 on any problem."""
    _require_data(data_dir)
    from eventstore import EventStoreError
    from recovery import verify as run_verify
    try:
        report = run_verify(data_dir)
    except EventStoreError as exc:
        _fail(str(exc))
    bad = (report["mismatches"] or report["snapshot_mismatches"] or report["damaged_snapshots"]
           or report["wal_problems"])
    if json_out:
        print(json.dumps(report))
    else:
        for key in ("last_seq", "state_hash", "events", "trades_checked", "mismatches", "segments",
                    "snapshots_checked", "snapshot_mismatches", "damaged_snapshots", "torn_tail",
                    "pruned_before_seq", "base_snapshot_seq", "wal_problems"):
            typer.echo(f"{key}: {report[key]}")
        for line in report["mismatch_examples"]:
            typer.echo(f"  {line}")
    if bad:
        raise typer.Exit(1)


@app.command("index")
def index_cmd(
    every: int = typer.Option(50_000, "--every", min=1, help="Events between persisted keyframes: the most any later query replays."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    data_dir: str = DataDir,
) -> None:
    """Write time-travel keyframes (DATA/index, derived data, always
    rebuildable) so that a notebook, `inspect` or `order` opened later replays
    at most --every events for any point. Continues after the newest keyframe
    that still checks; safe while an engine runs. Exit 3 if the WAL is pruned
    past every base."""
    _require_data(data_dir)
    import time as _time
    from eventstore import EventStoreError, PrunedRangeError
    from recovery import open_data_dir
    history = open_data_dir(data_dir)
    t0 = _time.perf_counter()
    try:
        written = history.write_index(every)
    except PrunedRangeError as exc:
        _fail_pruned(exc)
    except EventStoreError as exc:
        _fail(str(exc))
    files = history.timeline.files
    report = {"written": written, "keyframes": len(files.seqs), "every": every, "last_seq": history.last_seq,
              "replayed_events": history.stats.index_events, "seconds": round(_time.perf_counter() - t0, 3),
              "bytes": sum(os.path.getsize(files.path(q)) for q in files.seqs if os.path.exists(files.path(q))),
              "index_dir": files.index_dir}
    if json_out:
        print(json.dumps(report))
    else:
        typer.echo(f"{written} keyframes written ({report['keyframes']} in {files.index_dir}, "
                   f"{report['bytes']:,} bytes), {report['replayed_events']:,} events replayed in "
                   f"{report['seconds']} s; last seq {report['last_seq']}")


@app.command("lobster-check")
def lobster_check(
    messages: Path = typer.Argument(..., exists=True, dir_okay=False, help="LOBSTER message file."),
    orderbook: Path = typer.Argument(..., exists=True, dir_okay=False, help="LOBSTER orderbook file."),
    mode: str = typer.Option("reconstruct", help="reconstruct: type-4 rows reduce the named order; "
                                                 "match: type-4 rows are sent through the matcher as taker IOCs."),
    symbol: Optional[str] = typer.Option(None, help="Symbol (default: the ticker in the file name)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Replay a LOBSTER day through the engine and compare its top levels with
    the orderbook file after every message."""
    from engine.io.lobster_check import lobster_check as run_check
    if mode not in ("reconstruct", "match"):
        _fail("--mode must be reconstruct or match", 2)
    report = run_check(str(messages), str(orderbook), mode=mode, symbol=symbol)
    if json_out:
        print(json.dumps(report, default=str))
    else:
        for key, value in report.items():
            typer.echo(f"{key}: {value}")


@app.command("bitstamp-check")
def bitstamp_check(
    orders: Path = typer.Argument(..., exists=True, dir_okay=False, help="Bitstamp orders CSV (R or PyPI ob-analytics layout; plain, gz, xz or bz2)."),
    trades: Optional[Path] = typer.Option(None, "--trades", exists=True, dir_okay=False, help="The real trades: trades.csv, or a websocket log of '<ms> trade {json}' lines."),
    price_decimals: Optional[int] = typer.Option(None, "--price-decimals", help="The price unit is 10^-N USD (default: the most decimals in the file)."),
    size_decimals: Optional[int] = typer.Option(None, "--size-decimals", help="A lot is 10^-N of the file's volume unit (default: the most decimals in the file)."),
    symbol: str = typer.Option("BTCUSD", "--symbol", help="The engine symbol."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Replay a Bitstamp capture through an in-memory engine; with --trades,
    compare its trades with the real ones (engine.io.bitstamp.compare_trades),
    else print the units, commands, rejects by reason and resting orders."""
    from engine.io.bitstamp import BitstampSource, compare_trades, replay_capture
    try:
        source = BitstampSource(orders, symbol=symbol, price_decimals=price_decimals, size_decimals=size_decimals)
    except ValueError as exc:
        _fail(str(exc), 2)
    report = compare_trades(source, trades) if trades is not None else replay_capture(source)["summary"]
    if json_out:
        print(json.dumps(report, default=str))
    else:
        for key, value in report.items():
            typer.echo(f"{key}: {value}")


from engine.consumers.cli import trades_consumer  # noqa: E402 - its own module, registered here

app.command("trades-consumer")(trades_consumer)

from engine.consumers.settle_cli import settle, settlement_app  # noqa: E402 - its own module, registered here

app.command("settle")(settle)
app.add_typer(settlement_app, name="settlement")


wal_app = typer.Typer(no_args_is_help=True, help="The write-ahead log: retention.")
app.add_typer(wal_app, name="wal")


@wal_app.command("prune")
def wal_prune(
    before_seq: Optional[int] = typer.Option(None, "--before-seq", min=1, help="Remove nothing at or after this seq."),
    wal_retain: Optional[str] = typer.Option(None, "--wal-retain", help="A retention policy instead (or as well): K events kept, a duration by the events' ts_ns (30m, 12h, 7d), or both as K,DURATION."),
    snapshot_retain: int = typer.Option(3, "--snapshot-retain", min=1, help="The engine's --snapshot-retain: the newest K snapshots are recovery's fallbacks, each keeps the WAL after it."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only say what would be removed."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    data_dir: str = DataDir,
) -> None:
    """Remove sealed WAL segments wholly before the floor: the lowest of
    --before-seq, the policy, the oldest valid snapshot + 1 and what the
    Kafka watermarks need republished. Never anything recovery needs; safe
    while an engine runs. Records the prune in wal/retention.json first."""
    _require_data(data_dir)
    from eventstore import EventStoreError
    from recovery.retention import parse_policy, prune_wal
    if before_seq is None and wal_retain is None:
        _fail("give --before-seq N and/or --wal-retain POLICY", 2)
    try:
        policy = parse_policy(wal_retain)
    except ValueError as exc:
        _fail(str(exc), 2)
    if before_seq is None and policy is None:
        _fail("--wal-retain off: nothing bounds the prune; give --before-seq N", 2)
    try:
        plan = prune_wal(data_dir, before_seq=before_seq, policy=policy, dry_run=dry_run,
                         snapshot_retain=snapshot_retain)
    except EventStoreError as exc:
        _fail(str(exc))
    assert plan is not None
    d = plan.as_dict()
    if json_out:
        print(json.dumps(d))
        return
    gone = d["would_remove"]
    verb = "removed" if plan.applied else "would remove"
    typer.echo(f"floor: {plan.floor if plan.floor is not None else 'none (nothing may go)'}   rule: {plan.rule}")
    typer.echo(f"base snapshot: {plan.base_snapshot_seq}   earliest seq kept: {plan.pruned_before_seq}")
    for seg in gone:
        typer.echo(f"  {verb} {seg['segment']} (seqs {seg['first_seq']}..{seg['last_seq']}, {seg['bytes']:,} bytes)")
    for seg in d["leftovers"]:
        typer.echo(f"  {verb} {seg['segment']} (left by an interrupted prune)")
    freed = d["bytes_freed"] if plan.applied else d["bytes_to_free"]
    if not dry_run and not plan.applied:
        typer.echo("nothing to remove")
    else:
        typer.echo(f"{verb} {len(gone) + len(d['leftovers'])} segment(s), {freed:,} bytes"
                   + (" (dry run)" if dry_run else ""))
    for note in plan.notes:
        typer.echo(f"note: {note}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
