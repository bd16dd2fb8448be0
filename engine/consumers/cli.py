"""``evengine trades-consumer``: the trade-history consumer as a command.

``engine/cli.py`` registers :func:`trades_consumer` as ``trades-consumer``;
``python -m engine.consumers.cli --kafka HOST:PORT ...`` runs it alone. The
consumer is :class:`engine.consumers.trade_history.TradeHistoryConsumer` on
the shared Kafka loop (:mod:`engine.consumers.kafka_loop`).

Exit status: 0 stopped by a signal (or idle); 1 Kafka or the database
failed; 2 the database is not a trade history (another schema, a bad URL);
3 a repeat contradicts the stored trades (nothing of its batch applied).
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from typing import Optional

import typer

__all__ = ["trades_consumer", "DB_HELP", "check_metrics_option"]

DB_HELP = ("sqlite:///PATH (relative) or sqlite:////ABSOLUTE/PATH, or a bare PATH: a SQLite file (created with its "
           "directory when missing; WAL journal, synchronous=FULL); or postgresql://USER@HOST:PORT/DB: a PostgreSQL "
           "server (psycopg 3). A trade-history file of evengine 0.2 is migrated when opened.")

_IGNORED = "Ignored, accepted so that old command lines still run: the consumer joins no group membership " \
           "(it assigns itself every partition, its offsets are in the database)."


def check_metrics_option(metrics: Optional[str]) -> None:
    """Exit 2 with one ``error:`` line if ``--metrics`` is given and is not HOST:PORT
    (checked before anything connects)."""
    if metrics is None:
        return
    from engine.prom import parse_metrics_addr
    try:
        parse_metrics_addr(metrics)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)


def trades_consumer(
    kafka: str = typer.Option(..., "--kafka", help="Kafka bootstrap servers, host:port[,host:port...]."),
    topic: str = typer.Option("trades", "--topic", help="The trades topic (every partition is read)."),
    group: str = typer.Option("trade-history", "--group",
                              help="Consumer group the offsets are committed to after each database commit, for "
                                   "lag monitoring only: a restart resumes from the offsets in the database."),
    db: str = typer.Option("sqlite:///data/trades.sqlite", "--db", help=DB_HELP),
    data_dir: Optional[str] = typer.Option(
        None, "--data-dir", "-d",
        help="The engine's data directory on this machine: gaps are filled from its WAL (read-only), as trades "
             "of its shard. Without it a gap is recorded unfilled in the gaps table."),
    max_records: int = typer.Option(500, "--max-records", min=1,
                                    help="Most records per batch (one database transaction)."),
    poll_ms: int = typer.Option(500, "--poll-ms", min=1,
                                help="How long one poll waits for records (ms); also the longest a stop waits."),
    gap_retry_s: float = typer.Option(1.0, "--gap-retry-s", min=0.0,
                                      help="While gaps are open, retry filling them from the WAL this often (s)."),
    idle_exit_s: Optional[float] = typer.Option(None, "--idle-exit-s", min=0.0,
                                                help="Stop after this long without a record (default: run until "
                                                     "SIGTERM/SIGINT)."),
    instance_id: Optional[str] = typer.Option(None, "--instance-id", help=_IGNORED),
    session_timeout_ms: Optional[int] = typer.Option(None, "--session-timeout-ms", help=_IGNORED),
    verbose: bool = typer.Option(True, help="Log start, gaps, reconnects and skipped records to stderr."),
    metrics: Optional[str] = typer.Option(None, "--metrics",
                                          help="Serve Prometheus metrics on HOST:PORT at /metrics (port 0: any free "
                                               "port; the address is printed to stderr as 'metrics on URL')."),
) -> None:
    """Store every trade of the trades topic in SQL (SQLite or PostgreSQL), exactly once.

    Every batch of records is one database transaction holding its trades and
    the Kafka offsets past them; a restart seeks to the offsets in the
    database (the group's offsets are committed after, for lag monitoring).
    Trades are keyed by (shard, match_id) and (symbol, symbol_seq); a repeat
    (the engine republishes after a restart) must equal the stored trade,
    else the consumer stops (exit 3) with nothing of its batch applied. A
    jump in a symbol's symbol_seq is a gap: logged, recorded in the gaps
    table and, with --data-dir, filled from the engine's WAL. Records that
    are not trade messages are logged (topic, partition, offset) and skipped.
    A database that goes away is waited for.

    Runs until SIGTERM or SIGINT, which finish the current batch; then prints
    a one-line JSON summary (stored, repeats, malformed, gaps, gaps_filled, ...).
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from aiokafka.errors import KafkaError

    from engine.prom import MetricsBindError

    from .sql import TransientDatabaseError, describe_url
    from .trade_history import ConsumerConfig, SchemaError, run_consumer
    check_metrics_option(metrics)
    if instance_id is not None or session_timeout_ms is not None:
        logging.getLogger("evengine.trades_consumer").warning(
            "--instance-id and --session-timeout-ms are ignored: the consumer assigns itself every partition")
    config = ConsumerConfig(bootstrap_servers=kafka, topic=topic, group=group, db_url=db, data_dir=data_dir,
                            max_records=max_records, poll_timeout_ms=poll_ms, gap_retry_s=gap_retry_s,
                            idle_exit_s=idle_exit_s)
    try:
        stats = run_consumer(config, metrics)
    except KafkaError as exc:
        typer.echo(f"error: Kafka at {kafka}: {exc}", err=True)
        raise typer.Exit(1)
    except (SchemaError, ValueError) as exc:
        typer.echo(f"error: {describe_url(db)}: {exc}", err=True)
        raise typer.Exit(2)
    except TransientDatabaseError as exc:      # stopped while the database was still away
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    except sqlite3.Error as exc:
        typer.echo(f"error: SQLite database {describe_url(db)}: {exc}", err=True)
        raise typer.Exit(1)
    except MetricsBindError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        typer.echo(f"error: PostgreSQL database {describe_url(db)}: {exc}", err=True)
        raise typer.Exit(1)
    if stats.error:
        typer.echo(f"error: {stats.error}", err=True)
        raise typer.Exit(3)


if __name__ == "__main__":
    typer.run(trades_consumer)
