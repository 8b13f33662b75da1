"""A stand-in for the Home Assistant Supervisor's API (``http://supervisor``): it checks the add-on's token and
records the discovery messages, answering as the Supervisor does."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeSupervisor(ThreadingHTTPServer):
    """Stands in for http://supervisor: records discovery messages, answers as the Supervisor does."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.discoveries: list[dict[str, Any]] = []
        self.bad_requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _SupervisorHandler)


class _SupervisorHandler(BaseHTTPRequestHandler):
    server: FakeSupervisor

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self.server.bad_requests.append(f"token: {self.headers.get('Authorization')!r}")
            self._answer(401, {"result": "error", "message": "unauthorized"})
            return
        if self.path != "/discovery":
            self.server.bad_requests.append(f"path: {self.path}")
            self._answer(404, {"result": "error", "message": "not found"})
            return
        self.server.discoveries.append(json.loads(body))
        self._answer(200, {"result": "ok", "data": {"uuid": uuid.uuid4().hex}})

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def running() -> Iterator[FakeSupervisor]:
    """A fake Supervisor on 127.0.0.1 with a fresh token, serving until the block ends."""
    server = FakeSupervisor(token=uuid.uuid4().hex)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
