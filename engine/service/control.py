"""The control socket: ``<data-dir>/control.sock`` (mode 0600), one JSON line
per request and per reply. ``evengine snapshot --now`` speaks it.

Requests: ``{"op": "snapshot"}`` -> ``{"ok": true, "seq", "path",
"fork_pause_ms", "write_ms"}``; ``{"op": "status"}`` -> ``{"ok": true,
"last_seq", "durable_seq", ...}``. Errors: ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
from typing import Optional

__all__ = ["ControlServer", "ControlRequest", "request", "NoEngineError"]


class NoEngineError(Exception):
    """No engine listens on the data directory's control socket."""


class ControlRequest:
    """One request waiting for the matching loop; :meth:`reply` answers it."""

    def __init__(self, body: dict) -> None:
        self.body = body
        self._done = threading.Event()
        self.answer: Optional[bytes] = None

    def reply(self, answer: dict) -> None:
        """Answer with ``answer``, encoded here, in the matching loop's thread:
        the control thread sends bytes, never a view of engine state that may
        change before it is encoded (a status once paired newer positions with
        an older ``last_seq`` that way)."""
        self.answer = _encode(answer)
        self._done.set()

    def wait(self, timeout: float) -> Optional[bytes]:
        self._done.wait(timeout)
        return self.answer


def _encode(answer: dict) -> bytes:
    return json.dumps(answer, default=str).encode() + b"\n"


class ControlServer:
    """Accepts requests on a Unix socket in a thread; the matching loop takes
    them from :attr:`requests` between batches (the thread never touches
    engine state)."""

    def __init__(self, path: str, reply_timeout: float = 600.0) -> None:
        self.path = path
        self.reply_timeout = reply_timeout
        self.requests: "queue.Queue[ControlRequest]" = queue.Queue()
        if os.path.exists(path):
            os.unlink(path)  # the caller holds the data dir lock: this one is stale
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._sock.listen(8)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                line = conn.makefile("rb").readline(65536)
                body = json.loads(line)
                if not isinstance(body, dict):
                    raise ValueError("request must be a JSON object")
            except (ValueError, OSError) as exc:
                self._send(conn, {"ok": False, "error": f"bad request: {exc}"})
                return
            req = ControlRequest(body)
            self.requests.put(req)
            answer = req.wait(self.reply_timeout)
            self._send(conn, answer if answer is not None else {"ok": False, "error": "engine did not answer in time"})

    @staticmethod
    def _send(conn: socket.socket, answer: "dict | bytes") -> None:
        try:
            conn.sendall(answer if isinstance(answer, bytes) else _encode(answer))
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        try:
            self._sock.close()
        finally:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        while not self.requests.empty():
            self.requests.get().reply({"ok": False, "error": "engine is stopping"})

    def close_in_child(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def request(path: str, body: dict, timeout: float = 600.0) -> dict:
    """Send one request to the engine's control socket; return its reply.

    Raises:
        NoEngineError: nothing listens at ``path``.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise NoEngineError(f"no engine is running: nothing listens on {path} ({exc.strerror})") from exc
    with sock:
        sock.sendall(json.dumps(body).encode() + b"\n")
        line = sock.makefile("rb").readline()
    if not line:
        raise NoEngineError(f"the engine closed {path} without answering")
    return json.loads(line)
