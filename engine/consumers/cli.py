"""``evengine trades-consumer``: the trade-history consumer as a command.

``engine/cli.py`` registers :func:`trades_consumer` as ``trades-consumer``;
``python -m engine.consumers.cli --kafka HOST:PORT ...`` runs it alone.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from pathlib import Path
from typing import Optional

import typer

__all__ = ["trades_consumer"]


def trades_consumer(
    kafka: str = typer.Option(..., "--kafka", help="Kafka bootstrap servers, host:port[,host:port...]."),
    topic: str = typer.Option("trades", "--topic", help="The trades topic."),
    group: str = typer.Option("trade-history", "--group",
                              help="Consumer group: its committed offsets are where a restart resumes."),
    db: Path = typer.Option(Path("data/trades.sqlite"), "--db", help="The SQLite file (created when missing)."),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", "-d",
        help="The engine's data directory on this machine: gaps are filled from its WAL (read-only). "
             "Without it a gap is recorded unfilled in the gaps table."),
    max_records: int = typer.Option(500, "--max-records", min=1,
                                    help="Most records per batch (one SQLite transaction, one offset commit)."),
    poll_ms: int = typer.Option(500, "--poll-ms", min=1,
                                help="How long one poll waits for records (ms); also the longest a stop waits."),
    gap_retry_s: float = typer.Option(1.0, "--gap-retry-s", min=0.0,
                                      help="While gaps are open, retry filling them from the WAL this often (s)."),
    instance_id: Optional[str] = typer.Option(
        None, "--instance-id",
        help="Static group member id: a restarted consumer with the same id gets its partitions back at once "
             "instead of after the session timeout. One per running consumer of the group."),
    session_timeout_ms: int = typer.Option(10_000, "--session-timeout-ms", min=1,
                                           help="A silent member is dropped from the group after this long (ms)."),
    verbose: bool = typer.Option(True, help="Log start, gaps and skipped records to stderr."),
) -> None:
    """Store every trade of the trades topic in SQLite, exactly once.

    Each batch of records is written in one SQLite transaction, and only then
    are its offsets committed to Kafka: a crash in between redelivers the
    batch, whose trades are recognised as repeats (match_id and the per-symbol
    symbol_seq). A jump in a symbol's symbol_seq is a gap: logged, recorded in
    the gaps table and, with --data-dir, filled from the engine's WAL.
    Records that are not trade messages are logged (topic, partition, offset)
    and skipped.

    Runs until SIGTERM or SIGINT, which finish the current batch; then prints
    a one-line JSON summary (stored, repeats, malformed, gaps, gaps_filled, ...).
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from aiokafka.errors import KafkaError

    from .trade_history import ConsumerConfig, run_consumer
    config = ConsumerConfig(bootstrap_servers=kafka, topic=topic, group=group, db_path=str(db),
                            data_dir=None if data_dir is None else str(data_dir), max_records=max_records,
                            poll_timeout_ms=poll_ms, gap_retry_s=gap_retry_s,
                            session_timeout_ms=session_timeout_ms, instance_id=instance_id)
    try:
        run_consumer(config)
    except KafkaError as exc:
        typer.echo(f"error: Kafka at {kafka}: {exc}", err=True)
        raise typer.Exit(1)
    except sqlite3.Error as exc:
        typer.echo(f"error: SQLite database {db}: {exc}", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(trades_consumer)
