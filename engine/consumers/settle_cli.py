"""``evengine settle`` and ``evengine settlement verify``.

``engine/cli.py`` registers them; the service is
:mod:`engine.consumers.settle_service`, the store
:mod:`engine.consumers.settlement`.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Optional

import typer

__all__ = ["settle", "settlement_app"]

DB_HELP = ("sqlite:///PATH (relative) or sqlite:////ABSOLUTE/PATH: an embedded SQLite file, WAL journal, "
           "synchronous=FULL; or postgresql://USER@HOST:PORT/DB: a PostgreSQL server (psycopg 3).")


def settle(
    kafka: str = typer.Option(..., "--kafka", help="Kafka bootstrap servers, host:port[,host:port...]."),
    db: str = typer.Option("sqlite:///data/settlement.sqlite", "--db", help=DB_HELP),
    data_dir: list[str] = typer.Option(
        [], "--data-dir", "-d",
        help="An engine's data directory on this machine (repeatable: one per shard, told apart by their "
             "shard.json): gaps of its streams are derived from its WAL (read-only). Without one a gap is "
             "recorded and its stream waits for the missing records."),
    ledger_topic: str = typer.Option("ledger", "--ledger-topic"),
    trades_topic: str = typer.Option("trades", "--trades-topic"),
    group: str = typer.Option("settlement", "--group",
                              help="Consumer group the offsets are committed to after the database, for lag "
                                   "monitoring only: a restart resumes from the offsets in the database."),
    max_records: int = typer.Option(5000, "--max-records", min=1, help="Most records per batch (one transaction)."),
    poll_ms: int = typer.Option(200, "--poll-ms", min=1, help="How long one poll waits (ms)."),
    idle_exit_s: Optional[float] = typer.Option(None, "--idle-exit-s", min=0.0,
                                                help="Stop after this long without a record (default: run until "
                                                     "SIGTERM/SIGINT)."),
    verbose: bool = typer.Option(True, help="Log start, gaps, reconnects and skipped records to stderr."),
    metrics: Optional[str] = typer.Option(None, "--metrics",
                                          help="Serve Prometheus metrics on HOST:PORT at /metrics (port 0: any free "
                                               "port; the address is printed to stderr as 'metrics on URL')."),
) -> None:
    """Settle the engine's ledger and trades into SQL, each exactly once.

    Every batch is one database transaction holding the balance changes,
    the settled trades, the Kafka offsets and the stream watermarks; a
    restart seeks to the offsets in the database. A repeat (the engine
    republishes after a restart) must equal what was settled; a different
    body stops the service (exit 3) with nothing of its batch applied. A gap
    waits, or is derived from the engine's WAL with --data-dir. Prints a
    one-line JSON summary when it stops.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from aiokafka.errors import KafkaError

    from engine.prom import MetricsBindError

    from .settle_service import SettleConfig, run_settle
    from .cli import check_metrics_option
    check_metrics_option(metrics)
    from .sql import describe_url
    config = SettleConfig(bootstrap_servers=kafka, db_url=db, data_dirs=tuple(data_dir), ledger_topic=ledger_topic,
                          trades_topic=trades_topic, group=group, max_records=max_records, poll_timeout_ms=poll_ms,
                          idle_exit_s=idle_exit_s)
    try:
        stats = run_settle(config, metrics)
    except KafkaError as exc:
        typer.echo(f"error: Kafka at {kafka}: {exc}", err=True)
        raise typer.Exit(1)
    except ValueError as exc:
        typer.echo(f"error: {describe_url(db)}: {exc}", err=True)
        raise typer.Exit(2)
    except MetricsBindError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    if stats.error:
        typer.echo(f"error: {stats.error}", err=True)
        raise typer.Exit(3)


settlement_app = typer.Typer(help="Inspect a settlement database.", no_args_is_help=True)


@settlement_app.command("verify")
def verify_cmd(
    db: str = typer.Option(..., "--db", help=DB_HELP),
    data_dir: list[str] = typer.Option(..., "--data-dir", "-d",
                                       help="An engine's data directory (repeatable: one per shard)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Recompute every balance from the engines' WALs and compare with the
    database (up to the ledger_seq it has settled of each shard); print the
    differences (0 expected) and the settlement lag in ledger entries and
    trades. Exit 1 when anything differs."""
    from .settlement import verify
    from .sql import TransientDatabaseError, connect
    try:
        database = connect(db)
    except (ValueError, TransientDatabaseError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    try:
        report = verify(database, data_dir)
    finally:
        database.close()
    bad = bool(report["differences"] or report["supply_differences"])
    if json_out:
        print(json.dumps(report))
    else:
        typer.echo(f"settled up to ledger_seq {report['ledger_seq']} of {report['engine_ledger_seq']} "
                   f"(lag {report['ledger_lag']} entries); trades {report['trades_settled']} of "
                   f"{report['engine_trades']} (lag {report['trades_lag']})")
        typer.echo(f"differences: {len(report['differences'])}")
        for d in report["differences"][:50]:
            typer.echo(f"  shard {d['shard']} account {d['account']} {d['asset']}: settled {d['settled']}, "
                       f"engine {d['engine']}")
        for asset, (s, e) in report["supply_differences"].items():
            typer.echo(f"  supply of {asset}: settled {s}, engine {e}")
        typer.echo("posting sums: " + ", ".join(f"{a} {s}" for a, s in sorted(report["posting_sums"].items())))
    if bad:
        raise typer.Exit(1)
