#!/usr/bin/env python3
"""evengine Kafka benchmark: the engine between two topics, against the broker alone, in one run.

    python scripts/bench_kafka.py [--orders 200000] [--seed 42] [--symbols 8] [--partitions-list 1,4]
                                  [--rate 50000] [--bootstrap HOST:PORT] [--no-two-engines] [--profile]

A benchmark, not a test: it prints figures and compares them with a baseline measured in
the same run, on the same broker, with the same order values and the same producer.
Without --bootstrap it starts its own broker (scripts/kafka_broker.sh, own KAFKA_RUN_DIR
under a temporary directory) and stops it at the end.

The flow: N seeded synthetic orders (engine.io.synthetic: 70% limit, 25% cancel, 5%
marketable) over K symbols SYN0..SYN{K-1} (K interleaved flows, scripts/load.py), as
``orders`` JSON values (engine.io.messages.order_from_command). Symbol i goes to partition
i mod P (key: the symbol). Every record's ``ts_ns`` is stamped with time.time_ns() just
before it is handed to the producer (idempotent, acks=all, linger 5 ms, 1 MiB batches).

Each scenario uses fresh topics. Its first K records (the add_symbol of each book) are a
warm-up sent before the clock starts (consumers assigned, engine fetching); then the N
orders are timed:

  broker alone   produce the N values; a plain aiokafka consumer reads them back.
                 orders/s = N / (first send -> last record consumed);
                 latency = consumer time_ns - the record's send stamp (every record).
  engine         `evengine start --kafka` (fresh data dir, --snapshot-every 0) consumes
                 them and publishes trades; a consumer reads ``trades``.
                 orders/s = N / (first send -> every engine has durably applied its last
                 offset (status socket, polled every 10 ms) and the last trade is consumed);
                 latency = consumer time_ns - trade.ts_ns (= the taker order's send stamp),
                 over every trade.
  engine x2      two engines, each owning half the partitions (--partitions).

Rows run at full speed ("max") and, for P = the first of --partitions-list, paced at --rate
orders/s ("@rate"), for a latency figure not dominated by the backlog queue.
CPU seconds per process are read from /proc during the timed part (engine = its main
process + WAL syncer child; broker = the JVM, known only for a broker this script started;
"other processes" = the machine's busy time (/proc/stat) minus those: anything else running,
including a --bootstrap broker).
The machine is shared and small (2 cores: producer, consumer, engine, syncer and broker
share them): compare the ratios within one run. The engine pins its matching process off
the WAL syncer's CPU (on 2 cores: matching on CPU 0, syncer on CPU 1), so two engines on one
host share CPU 0; --engine-cpus runs each engine under taskset instead (e.g. 0/1).
--profile adds a row with the engine under cProfile and prints its top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from engine.service import request  # noqa: E402
from load import percentile, stamp, synthetic_flow, value_template  # noqa: E402

GOAL_RATE = 100_000
GOAL_RATIO = 2.0
LINGER_MS = 5
MAX_RECORDS = 2000
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_seconds(pid: Optional[int], children: bool = False) -> float:
    """utime + stime of ``pid`` (and its live children) from /proc; 0 when unknown."""
    if not pid:
        return 0.0
    total = 0.0
    pids = [pid]
    if children:
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine spent busy (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)       # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK                     # guest time is already in user


def producer_for(boot: str) -> AIOKafkaProducer:
    """The one producer configuration of every scenario."""
    return AIOKafkaProducer(bootstrap_servers=boot, enable_idempotence=True, acks="all", linger_ms=LINGER_MS,
                            max_batch_size=1 << 20, request_timeout_ms=30_000)


def consumer_for(boot: str) -> AIOKafkaConsumer:
    """The consumer settings of the engine (engine/io/kafka.py), without a group."""
    return AIOKafkaConsumer(bootstrap_servers=boot, enable_auto_commit=False, isolation_level="read_committed",
                            max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)


async def create_topics(boot: str, names: list, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=boot)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def produce(producer: AIOKafkaProducer, topic: str, items: list, rate: float = 0.0) -> dict:
    """Send ``(partition, key, template)`` items, stamping ts_ns at send time;
    wait for every ack; return ``{partition: last offset}``."""
    time_ns = time.time_ns
    perf = time.perf_counter
    send = producer.send
    last: dict = {}
    futures = []
    t0 = perf()
    for i, (part, key, template) in enumerate(items):
        if rate and not i & 15:
            delay = t0 + i / rate - perf()
            if delay > 0.0005:
                await asyncio.sleep(delay)
        fut = await send(topic, template + b"%d}" % time_ns(), key=key, partition=part)
        futures.append(fut)
        last[part] = fut
    await producer.flush()
    bad = [f for f in futures if not f.done() or f.cancelled() or f.exception() is not None]
    if bad:
        raise RuntimeError(f"{len(bad)} records not acknowledged: {bad[0]!r}")
    return {p: f.result().offset for p, f in last.items()}


def _ts_of_trade(value: bytes) -> int:
    """``ts_ns`` of a trades value without a full JSON parse."""
    i = value.index(b'"ts_ns":') + 8
    return int(value[i:value.index(b",", i)])


WARM_PREFIX = b'{"type":"add_symbol"'


def _order_stamp(value: bytes) -> int:
    """The send stamp of an ``orders`` value made by :func:`stamp` (its last field)."""
    return int(value[value.rindex(b":") + 1:-1])


def _reader_main(conn: Any, boot: str, topic: str, partitions: int, kind: str) -> None:
    """Child process: read every partition of ``topic`` from its start; on
    ``("until", n)`` answer ``("reached", count, last_ns, latencies)`` once
    ``n`` records were read. Latency = time_ns at the fetch's return minus the
    record's stamp (orders: the send stamp; trades: ts_ns = the taker's send
    stamp); warm-up add_symbol records are counted but not measured."""
    import logging
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)
    stamp_of = _order_stamp if kind == "orders" else _ts_of_trade

    async def run() -> None:
        c = consumer_for(boot)
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            c.assign(tps)
            for tp in tps:
                c.seek(tp, 0)
            conn.send(("ready",))
            count, last_ns, lat, target, final = 0, 0, array("q"), None, False
            time_ns = time.time_ns
            while True:
                if conn.poll():
                    msg = conn.recv()
                    if msg[0] == "stop":
                        return
                    target, final = msg[1], msg[2]
                if target is not None and count >= target:
                    conn.send(("reached", count, last_ns, lat.tobytes()))
                    if final:
                        return
                    target = None
                batch = await c.getmany(timeout_ms=20, max_records=MAX_RECORDS)
                if not batch:
                    continue
                now = time_ns()
                for recs in batch.values():
                    count += len(recs)
                    lat.extend([now - stamp_of(r.value) for r in recs if not r.value.startswith(WARM_PREFIX)])
                last_ns = now
        finally:
            await c.stop()
    asyncio.run(run())


class Reader:
    """A consumer of ``topic`` in its own process (so that it reads while this
    process produces, as a real downstream consumer would). Start it before
    ``asyncio.run``: it is forked."""

    def __init__(self, boot: str, topic: str, partitions: int, kind: str) -> None:
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_reader_main, args=(child, boot, topic, partitions, kind), daemon=True)
        self.proc.start()
        child.close()
        self.count = 0
        self.last_ns = 0
        self.lat = array("q")

    def _recv(self, deadline: float) -> tuple:
        while not self.conn.poll(0.05):
            if not self.proc.is_alive():
                raise RuntimeError(f"the consumer process exited ({self.proc.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError("the consumer process did not answer in time")
        return self.conn.recv()

    async def ready(self, deadline: float) -> None:
        await asyncio.to_thread(self._recv, deadline)

    async def until(self, n: int, deadline: float, final: bool = False) -> None:
        """Wait until ``n`` records were read."""
        self.conn.send(("until", n, final))
        try:
            _, self.count, self.last_ns, lat = await asyncio.to_thread(self._recv, deadline)
        except TimeoutError:
            raise TimeoutError(f"the consumer did not read {n:,} records in time") from None
        self.lat = array("q")
        self.lat.frombytes(lat)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("stop",))
            except OSError:
                pass
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        self.conn.close()

    def percentiles_ms(self) -> tuple:
        values = sorted(self.lat)
        return percentile(values, 50) / 1e6, percentile(values, 99) / 1e6


class Engine:
    """``evengine start --kafka`` as a child process (stdout: the ready line, then the summary)."""

    def __init__(self, workdir: Path, name: str, boot: str, orders: str, trades: str,
                 partitions: Optional[list] = None, profile: Optional[str] = None,
                 cpus: Optional[str] = None) -> None:
        self.data_dir = workdir / name
        self.data_dir.mkdir(parents=True)
        prefix = ["-m", "cProfile", "-o", profile] if profile else []
        taskset = ["taskset", "-c", cpus] if cpus else []
        args = [*taskset, sys.executable, *prefix, "-m", "engine.cli", "start", "--kafka", boot,
                "--orders-topic", orders, "--trades-topic", trades, "--data-dir", str(self.data_dir),
                "--group", f"bench-{name}-{orders}", "--snapshot-every", "0", "--json"]
        if partitions is not None:
            args += ["--partitions", ",".join(map(str, partitions))]
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self.summary: dict = {}
        self.ready = json.loads(self._line(120.0))

    def _line(self, timeout_s: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            self.kill()
            raise RuntimeError(f"engine said nothing in {timeout_s} s; log: {self.log_path}")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"engine exited {self.proc.wait()}: {self.log_path.read_text()[-2000:]}")
        return line

    def status(self) -> dict:
        return request(str(self.data_dir / "control.sock"), {"op": "status"}, 10.0)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid, children=True)

    def stop(self, timeout_s: float = 60.0) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"engine did not stop in {timeout_s} s; log: {self.log_path}")
        finally:
            self._log.close()
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        self.summary = json.loads(lines[-1]) if lines else {}
        return self.summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- scenarios


class Flow:
    """The benchmark's order values: warm-up (add_symbols) and timed part."""

    def __init__(self, n: int, seed: int, symbols: int) -> None:
        orders = list(synthetic_flow(n, seed, symbols))
        index: dict = {}
        self.items = []          # (symbol index, key, template)
        for o in orders:
            sym = o["symbol"]
            idx = index.setdefault(sym, len(index))
            self.items.append((idx, sym.encode(), value_template(o, "json")))
        self.symbols = len(index)
        self.warm = [it for it in self.items if it[2].startswith(b'{"type":"add_symbol"')]
        self.timed = [it for it in self.items if not it[2].startswith(b'{"type":"add_symbol"')]
        assert self.items[:len(self.warm)] == self.warm, "add_symbols come first"
        self.value_bytes = sum(len(stamp(t, time.time_ns())) for _, _, t in self.items) / len(self.items)

    def on(self, partitions: int, which: str) -> list:
        items = self.warm if which == "warm" else self.timed
        return [(i % partitions, key, t) for i, key, t in items]


class Result(dict):
    pass


def run_broker_alone(boot: str, flow: Flow, partitions: int, rate: float, timeout_s: float,
                     broker_pid: Optional[int], **_: Any) -> Result:
    topic = f"bench-orders-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_topics(boot, [topic], partitions))
    reader = Reader(boot, topic, partitions, "orders")
    try:
        return asyncio.run(_broker_alone(boot, flow, partitions, rate, timeout_s, broker_pid, topic, reader))
    finally:
        reader.stop()


async def _broker_alone(boot: str, flow: Flow, partitions: int, rate: float, timeout_s: float,
                        broker_pid: Optional[int], topic: str, reader: Reader) -> Result:
    deadline = time.monotonic() + timeout_s
    producer = producer_for(boot)
    await producer.start()
    try:
        await reader.ready(deadline)
        warm = flow.on(partitions, "warm")
        await produce(producer, topic, warm)
        await reader.until(len(warm), deadline)
        items = flow.on(partitions, "timed")
        cpu0 = (time.process_time(), cpu_seconds(broker_pid), reader.cpu(), machine_busy_seconds())
        t0 = time.time_ns()
        await produce(producer, topic, items, rate)
        t_acked = time.time_ns()
        await reader.until(len(warm) + len(items), deadline, final=True)
        cpu = {"producer": time.process_time() - cpu0[0], "consumer": reader.cpu() - cpu0[2],
               "broker": cpu_seconds(broker_pid) - cpu0[1]}
        cpu["other processes"] = machine_busy_seconds() - cpu0[3] - sum(cpu.values())
    finally:
        await producer.stop()
    seconds = (reader.last_ns - t0) / 1e9
    p50, p99 = reader.percentiles_ms()
    return Result(orders=len(items), seconds=seconds, rate=len(items) / seconds, p50=p50, p99=p99,
                  produce_s=(t_acked - t0) / 1e9, samples=len(reader.lat), cpu=cpu)


def run_engines(boot: str, flow: Flow, partitions: int, engines: int, rate: float, timeout_s: float,
                workdir: Path, broker_pid: Optional[int], profile: Optional[str] = None,
                engine_cpus: Optional[list] = None) -> Result:
    tag = uuid.uuid4().hex[:8]
    orders, trades = f"bench-orders-{tag}", f"bench-trades-{tag}"
    asyncio.run(create_topics(boot, [orders, trades], partitions))
    reader = Reader(boot, trades, partitions, "trades")
    procs: list = []
    try:
        shards: list = [None] if engines == 1 else [list(range(partitions))[k::engines] for k in range(engines)]
        for k, shard in enumerate(shards):
            cpus = engine_cpus[k % len(engine_cpus)] if engine_cpus else None
            procs.append(Engine(workdir, f"engine-{tag}-{k}", boot, orders, trades, shard, profile, cpus))
        result = asyncio.run(_engines(boot, flow, partitions, rate, timeout_s, broker_pid, orders, reader, procs))
    finally:
        reader.stop()
        summaries = []
        for e in procs:
            try:
                summaries.append(e.stop())
            except Exception as exc:  # noqa: BLE001 - report, keep stopping the others
                log(f"engine stop failed: {exc}")
                e.kill()
    result["summaries"] = summaries
    result["logs"] = [str(e.log_path) for e in procs]
    return result


async def _engines(boot: str, flow: Flow, partitions: int, rate: float, timeout_s: float,
                   broker_pid: Optional[int], orders: str, reader: Reader, procs: list) -> Result:
    deadline = time.monotonic() + timeout_s
    producer = producer_for(boot)
    await producer.start()
    try:
        await reader.ready(deadline)
        warm = flow.on(partitions, "warm")
        warm_last = await produce(producer, orders, warm)
        await wait_applied(procs, orders, warm_last, deadline)
        items = flow.on(partitions, "timed")
        cpu0 = (time.process_time(), cpu_seconds(broker_pid), reader.cpu(), [e.cpu() for e in procs],
                machine_busy_seconds())
        t0 = time.time_ns()
        last = await produce(producer, orders, items, rate)
        t_acked = time.time_ns()
        t_applied, statuses = await wait_applied(procs, orders, last, deadline)
        n_trades = sum(st["match_sequence"] for st in statuses)
        await reader.until(n_trades, deadline, final=True)
        t_end = max(t_applied, reader.last_ns)
        cpu = {"producer": time.process_time() - cpu0[0], "consumer": reader.cpu() - cpu0[2],
               "broker": cpu_seconds(broker_pid) - cpu0[1],
               "engine": sum(e.cpu() - c for e, c in zip(procs, cpu0[3]))}
        cpu["other processes"] = machine_busy_seconds() - cpu0[4] - sum(cpu.values())
    finally:
        await producer.stop()
    seconds = (t_end - t0) / 1e9
    p50, p99 = reader.percentiles_ms()
    return Result(orders=len(items), seconds=seconds, rate=len(items) / seconds, p50=p50, p99=p99,
                  produce_s=(t_acked - t0) / 1e9, applied_s=(t_applied - t0) / 1e9, trades=n_trades,
                  samples=len(reader.lat), cpu=cpu)


async def wait_applied(procs: list, topic: str, last: dict, deadline: float) -> tuple:
    """Poll the engines' status until each partition's position reaches
    ``last[partition]`` and everything applied is durable; return (time_ns, statuses)."""
    while True:
        statuses = await asyncio.gather(*(asyncio.to_thread(e.status) for e in procs))
        now = time.time_ns()
        positions: dict = {}
        durable = True
        for st in statuses:
            positions.update(st["positions"])
            durable = durable and st["durable_seq"] >= st["last_seq"]
        if durable and all(positions.get(f"kafka:{topic}:{p}", -1) >= off for p, off in last.items()):
            return now, statuses
        for e in procs:
            if e.proc.poll() is not None:
                raise RuntimeError(f"engine exited {e.proc.returncode}; log: {e.log_path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"engines at {positions}, want {last}")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------- main


def start_broker(run_dir: Path) -> tuple:
    env = dict(os.environ, KAFKA_RUN_DIR=str(run_dir))
    out = subprocess.run([str(HERE / "kafka_broker.sh"), "start"], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"kafka_broker.sh start exited {out.returncode}: {out.stderr[-2000:]}")
    vals = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return vals["KAFKA_BOOTSTRAP_SERVERS"], int(vals["KAFKA_PID"])


def stop_broker(run_dir: Path) -> None:
    env = dict(os.environ, KAFKA_RUN_DIR=str(run_dir))
    subprocess.run([str(HERE / "kafka_broker.sh"), "stop"], env=env, capture_output=True, timeout=120)


def fmt_row(name: str, r: Optional[Result], vs: str) -> str:
    if r is None:
        return f"{name:<34} | {'failed':>10} | {'':>10} | {'':>10} | {vs}"
    return f"{name:<34} | {r['rate']:>10,.0f} | {r['p50']:>10.1f} | {r['p99']:>10.1f} | {vs}"


def print_profile(path: str, top: int = 15) -> None:
    """The engine's profile: top entries by cumulative time (all, then only
    evengine and aiokafka code, which skips the interpreter and CLI frames),
    then by own time."""
    import pstats
    st = pstats.Stats(path)
    rows = [(cc, nc, tt, ct, f"{os.path.relpath(fn, ROOT) if fn.startswith(str(ROOT)) else fn.split('site-packages/')[-1]}"
             f":{ln}({fun})") for (fn, ln, fun), (cc, nc, tt, ct, _) in st.stats.items()]
    total = st.total_tt

    def show(title: str, sel: list) -> None:
        print(f"\n{title}")
        print(f"  {'ncalls':>9} {'tottime':>8} {'cumtime':>8} {'cum %':>6}  function")
        for cc, nc, tt, ct, name in sel[:top]:
            print(f"  {nc:>9,} {tt:>8.3f} {ct:>8.3f} {100 * ct / total:>5.1f}%  {name}")
    by_cum = sorted(rows, key=lambda r: -r[3])
    show(f"cProfile of the engine (engine x1, P=1, max; {total:.2f} s profiled), top {top} by cumulative time:", by_cum)
    own = [r for r in by_cum if r[4].startswith(("engine/", "eventstore/", "aiokafka/"))]
    show(f"top {top} by cumulative time, evengine and aiokafka functions only:", own)
    show(f"top {top} by own time (tottime):", sorted(rows, key=lambda r: -r[2]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=200_000, help="orders per scenario (default 200,000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--symbols", type=int, default=8, help="symbols SYN0..SYN{K-1} (default 8)")
    ap.add_argument("--partitions-list", default="1,4", help="partition counts to run (default 1,4)")
    ap.add_argument("--rate", default="50000,20000",
                    help="paced rows: orders/s, comma-separated (default 50000,20000; 0: none)")
    ap.add_argument("--bootstrap", help="use this broker instead of starting one")
    ap.add_argument("--no-two-engines", action="store_true", help="skip the one-engine-per-shard rows")
    ap.add_argument("--profile", action="store_true",
                    help="also run engine x1 P=1 max under cProfile and print its top entries")
    ap.add_argument("--engine-cpus", default="",
                    help="run engine k under `taskset -c LIST_k`, lists separated by '/' (e.g. 1 or 0/1); "
                         "default: no taskset (the engine pins itself: matching off the syncer's CPU)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per scenario, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (engine logs and data)")
    args = ap.parse_args()
    try:
        plist = [int(p) for p in args.partitions_list.split(",") if p.strip()]
        if not plist or min(plist) < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--partitions-list wants integers >= 1 like 1,4, got {args.partitions_list!r}")
    try:
        rates = [float(r) for r in args.rate.split(",") if r.strip() and float(r) > 0]
    except ValueError:
        ap.error(f"--rate wants numbers like 50000,20000, got {args.rate!r}")
    if args.orders < 1 or args.symbols < 1:
        ap.error("--orders and --symbols must be >= 1")
    engine_cpus = [c for c in args.engine_cpus.split("/") if c] or None
    if engine_cpus and not shutil.which("taskset"):
        ap.error("--engine-cpus needs taskset (util-linux)")
    logging_quiet()

    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="evengine-bench-kafka-"))
    run_dir = workdir / "kafka"
    broker_pid = None
    started = False
    rows: list = []
    try:
        if args.bootstrap:
            boot = args.bootstrap
        else:
            log(f"starting a broker (scripts/kafka_broker.sh, KAFKA_RUN_DIR={run_dir}) ...")
            boot, broker_pid = start_broker(run_dir)
            started = True
        t = time.perf_counter()
        flow = Flow(args.orders, args.seed, args.symbols)
        print(f"evengine Kafka benchmark: {len(flow.timed):,} orders (+{len(flow.warm)} add_symbol warm-up) "
              f"per scenario, seed {args.seed}, {flow.symbols} symbols, JSON values of ~{flow.value_bytes:.0f} B; "
              f"broker {boot} ({'started by this script' if started else 'given'}); {os.cpu_count()} CPUs; "
              f"flow prepared in {time.perf_counter() - t:.1f} s")
        print(f"GOAL: >= {GOAL_RATE:,} orders/s through one partition end to end, "
              f"within {GOAL_RATIO:g}x of the broker alone.\n")

        def run(name: str, coro_fn: Any, **kw: Any) -> Optional[Result]:
            log(f"[{time.monotonic() - t_start:5.1f} s] {name} ...")
            try:
                r = coro_fn(**kw)
            except Exception as exc:  # noqa: BLE001 - a failed row is reported, the others still run
                print(f"  {name}: FAILED: {type(exc).__name__}: {exc}")
                return None
            detail(name, r)
            return r

        results: dict = {}
        paced_p = plist[0]
        plan = []
        for p in plist:
            plan.append((f"broker alone      P={p} max", ("broker", p, 1, 0.0)))
            plan.append((f"engine x1         P={p} max", ("engine", p, 1, 0.0)))
            if p > 1 and not args.no_two_engines:
                plan.append((f"engine x2 (shards) P={p} max", ("engine", p, 2, 0.0)))
            for rate in rates if p == paced_p else []:
                plan.append((f"broker alone      P={p} @{rate:,.0f}/s", ("broker", p, 1, rate)))
                plan.append((f"engine x1         P={p} @{rate:,.0f}/s", ("engine", p, 1, rate)))
        log(f"[{time.monotonic() - t_start:5.1f} s] warm-up: broker alone P={plist[-1]} (JIT, page cache; not reported) ...")
        try:
            run_broker_alone(boot=boot, flow=flow, partitions=plist[-1], rate=0.0, timeout_s=args.timeout,
                             broker_pid=broker_pid)
        except Exception as exc:  # noqa: BLE001
            log(f"warm-up failed: {exc}")
        for name, (kind, p, k, rate) in plan:
            if kind == "broker":
                r = run(name, run_broker_alone, boot=boot, flow=flow, partitions=p, rate=rate,
                        timeout_s=args.timeout, broker_pid=broker_pid)
            else:
                r = run(name, run_engines, boot=boot, flow=flow, partitions=p, engines=k, rate=rate,
                        timeout_s=args.timeout, workdir=workdir, broker_pid=broker_pid, engine_cpus=engine_cpus)
            results[(kind, p, k, rate)] = r
            rows.append((name, (kind, p, k, rate), r))
        prof_path = None
        if args.profile:
            prof_path = str(workdir / "engine.prof")
            r = run(f"engine x1 P={paced_p} max (cProfile)", run_engines, boot=boot, flow=flow,
                    partitions=paced_p, engines=1, rate=0.0, timeout_s=args.timeout, workdir=workdir,
                    broker_pid=broker_pid, profile=prof_path, engine_cpus=engine_cpus)
            rows.append((f"engine x1 P={paced_p} max (cProfile)", ("profile", paced_p, 1, 0.0), r))

        print("\nscenario                           |   orders/s | e2e p50 ms | e2e p99 ms | vs broker alone")
        print("-" * 35 + "+" + "-" * 12 + "+" + "-" * 12 + "+" + "-" * 12 + "+" + "-" * 30)
        for name, (kind, p, k, rate), r in rows:
            base = results.get(("broker", p, 1, rate))
            vs = ""
            if kind != "broker" and r is not None and base is not None:
                if rate:
                    vs = f"p50 x{r['p50'] / base['p50']:.1f}, p99 x{r['p99'] / base['p99']:.1f} (latency)"
                else:
                    vs = f"{base['rate'] / r['rate']:.2f}x slower ({r['rate'] / base['rate']:.0%})"
            elif kind == "broker":
                vs = "(baseline)"
            print(fmt_row(name, r, vs))
        print("orders/s: first timed send -> last record (broker) / last trade consumed and last offset durably "
              "applied (engine).\ne2e latency: consumer time_ns - send stamp, over every order record (broker alone) "
              "or every trade (engine: the taker order's stamp).")

        e1 = results.get(("engine", 1, 1, 0.0))
        b1 = results.get(("broker", 1, 1, 0.0))
        if e1 is not None and b1 is not None:
            ratio = b1["rate"] / e1["rate"]
            met_rate, met_ratio = e1["rate"] >= GOAL_RATE, ratio <= GOAL_RATIO
            print(f"\nGOAL >= {GOAL_RATE:,} orders/s on 1 partition, within {GOAL_RATIO:g}x of the broker alone: "
                  f"{'MET' if met_rate and met_ratio else 'NOT MET'} -- engine {e1['rate']:,.0f} orders/s "
                  f"({'ok' if met_rate else 'below the goal'}), broker alone {b1['rate']:,.0f} orders/s, "
                  f"ratio {ratio:.2f}x ({'ok' if met_ratio else 'over 2x'}).")
            for rate in rates:
                if e1["rate"] < rate * 1.05:
                    print(f"note: the engine's max ({e1['rate']:,.0f}/s) is not above {rate:,.0f}/s: that paced row "
                          "queues too (its latency includes a growing backlog).")
        else:
            print("\nGOAL: not evaluated (needs partitions-list to include 1 and both P=1 max rows).")
        if prof_path and os.path.exists(prof_path):
            print_profile(prof_path)
        print(f"\ntotal bench time {time.monotonic() - t_start:.0f} s")
        return 0 if all(r is not None for _, _, r in rows) else 1
    finally:
        if started:
            log("stopping the broker ...")
            stop_broker(run_dir)
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def detail(name: str, r: Result) -> None:
    cpu = r["cpu"]
    cpu_s = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
    if "engine" in cpu:
        cpu_s += (f" (engine: {cpu['engine'] / r['orders'] * 1e6:.1f} us/order, "
                  f"{cpu['engine'] / r['seconds']:.0%} of a CPU)")
    line = (f"  {name.strip()}: {r['orders']:,} orders in {r['seconds']:.2f} s = {r['rate']:,.0f}/s "
            f"(all acked after {r['produce_s']:.2f} s"
            + (f", applied after {r['applied_s']:.2f} s" if "applied_s" in r else "") + "); "
            f"latency p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms over {r['samples']:,} "
            f"{'trades' if 'trades' in r else 'records'}; CPU s: {cpu_s}")
    print(line)
    for s in r.get("summaries", []):
        k = s.get("kafka", {})
        print(f"    engine summary: commands {s.get('commands', 0):,}, trades {s.get('trades', 0):,}, "
              f"rejects {s.get('rejects', 0):,}, commit p50 {s.get('commit_p50_ms')} ms p99 "
              f"{s.get('commit_p99_ms')} ms, fsyncs {s.get('fsyncs', 0):,}; kafka orders {k.get('orders', 0):,}, "
              f"trades published {k.get('trades_published', 0):,}")


def logging_quiet() -> None:
    import logging
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)


if __name__ == "__main__":
    sys.exit(main())
