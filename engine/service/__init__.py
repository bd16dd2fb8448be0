"""The running engine: sequencing, group commit, output commit, snapshots,
control socket. May import engine.core, eventstore, snapshot, recovery."""

from .control import ControlServer, NoEngineError, request
from .engine import Engine, EngineConfig, EngineLockedError, RunSummary
from .output_gate import OutputGate

__all__ = ["ControlServer", "NoEngineError", "request", "Engine", "EngineConfig", "EngineLockedError",
           "RunSummary", "OutputGate"]
