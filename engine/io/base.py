"""What an order source is, for the engine service.

A source turns some input (a file, a Kafka partition, HTTP requests) into
commands. It is driven by the service's matching loop, one command at a time,
so a source may look at the live books (read only) to decide what to emit:
the LOBSTER source does, to map events on orders it never saw onto the volume
it seeded.

Resume rule: every command a source yields carries ``source=self.name`` and a
``source_pos`` that grows strictly. The engine logs both in the WAL and keeps
``matcher.positions[name]`` (also in snapshots); a restarted source is handed
that position and yields only input strictly after it. So a restart skips
nothing and applies nothing twice.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Protocol

from engine.core import Command, Matcher

__all__ = ["Source"]


class Source(Protocol):
    """An input of commands.

    Attributes:
        name: stable name, unique in the engine, e.g. ``"lobster:GOOG"``;
            the key of the source's position in ``Matcher.positions``.
        total: number of input units (rows) if known, for a progress bar.
    """

    name: str
    total: Optional[int]

    def commands(self, matcher: Matcher, after: Optional[Any]) -> Iterator[Command]:
        """Yield commands for input strictly after position ``after``
        (``None``: from the start). ``matcher`` is the live engine state at
        the moment each next command is requested; read it, never change it.
        A malformed input unit becomes a :class:`~engine.core.BadInput`
        command (logged and rejected), never an exception."""
        ...

    def close(self) -> None:
        """Release files or connections."""
        ...
