"""The connection layer under `edgespec serve`: uvicorn's h11 protocol with the bounds it lacks.

uvicorn times out idle keep-alive connections but not a request's headers: a client that
opens connections and trickles header bytes holds each one, and its connection cap, forever
(slowloris). GuardedH11 gives every request `header_seconds` to finish its headers, counted
from the connection's opening or from the previous response; a partial request then gets a
408, an idle connection is closed, and one still sending a body after its answer (a refused
request trickling on) is closed. Connections past `max_connections` are answered 503 and
closed. uvicorn's own answers (a malformed request, the 503) are OpenAI error bodies like the
app's, not plain text. Body bytes are bounded by the app (runtime/serve/server.py `_read_json`).
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

REASONS = {400: b"Bad Request", 408: b"Request Timeout", 503: b"Service Unavailable"}


def error_bytes(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 response carrying OpenAI's error body, closing the connection."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": None}}).encode()
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, REASONS[status], len(body)))
    return head + body


async def _busy(scope, receive, send) -> None:
    """The app a connection past the cap gets: a JSON 503 for its request."""
    payload = json.dumps({"error": {
        "message": "the server holds too many connections; retry shortly",
        "type": "server_error", "param": None, "code": None}}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"connection", b"close"),
        (b"content-length", b"%d" % len(payload))]})
    await send({"type": "http.response.body", "body": payload})


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol plus a header deadline, a connection cap and JSON errors; set
    the two bounds with `guarded(...)`."""

    header_seconds: float = 10.0
    max_connections: int = 256

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            self.app = _busy  # this connection's requests only; it closes after the answer
        self._arm()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers have arrived
            self._disarm()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()  # starts a pipelined request already buffered
        # the next request's headers are due in time too, and a body sent after its answer
        # (a refused request that goes on sending) must end within the same deadline
        if not self.transport.is_closing() and self.cycle is cycle:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self.transport.write(error_bytes(400, "the request is not valid HTTP/1.1 (or its "
                                              "headers are too large)"))
        self.transport.close()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_seconds, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.conn.their_state is not h11.IDLE:
            if self.conn.our_state is h11.DONE:  # still sending a body already answered
                self.transport.close()
            return
        if self.conn.trailing_data[0]:  # part of a request came: tell the client why
            self.transport.write(error_bytes(408, f"the request's headers did not arrive "
                                                  f"within {self.header_seconds:g} s"))
        self.transport.close()


def guarded(header_seconds: float, max_connections: int) -> type[GuardedH11]:
    """GuardedH11 with these bounds (uvicorn makes one protocol object per connection from
    the class it is given)."""
    return type("GuardedH11", (GuardedH11,), {"header_seconds": header_seconds,
                                              "max_connections": max_connections})
