"""Issue 27, the connection layer (runtime/serve/http_guard.py): what a client can hold with sockets
alone. Slowloris connections are closed at the header deadline, connections past the cap get
a JSON 503, uvicorn's own refusals are JSON, and a body a little too large is read before its
413 so that the client gets the answer, not a reset."""

import json
import socket
import time

import pytest
from test_server import TEMPLATE, serving, slow_steps, with_template

from edgespec.runtime.model import Model
from edgespec.runtime.serve.server import ServerLimits, create_app

LIMITS = ServerLimits(concurrency=1, queue=1, header_seconds=0.5, max_body_bytes=1 << 20)


@pytest.fixture(scope="module")
def port(trimmed_bundle, tmp_path_factory):
    model = Model(with_template(trimmed_bundle, tmp_path_factory.mktemp("conn") / "b", TEMPLATE))
    with serving(create_app(model, "tiny", limits=LIMITS), LIMITS) as p:
        yield p


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def _status_and_body(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _request(body: bytes) -> bytes:
    return (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body)


def test_trickled_headers_get_a_408_at_the_deadline_and_idle_sockets_are_closed(port):
    """A client trickling header bytes held its connection forever (uvicorn has no header
    timeout); ~100 such sockets locked every other client out."""
    trickler, idle = _connect(port), _connect(port)
    t = time.perf_counter()
    trickler.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for _ in range(3):  # a byte now and then: each one used to reset uvicorn's only timer
        time.sleep(0.1)
        trickler.sendall(b"X")
    status, body = _status_and_body(_answer(trickler))
    assert status == 408 and "did not arrive within 0.5 s" in body["error"]["message"]
    assert _answer(idle) == b""  # closed, nothing said
    assert time.perf_counter() - t < 3
    with _connect(port) as ok:  # a real request still goes through
        ok.sendall(_request(b'{"prompt": "t5", "max_tokens": 2}'))
        assert _status_and_body(_answer(ok))[0] == 200


def test_the_deadline_holds_for_the_next_request_on_a_kept_alive_connection(port):
    with _connect(port) as sock:
        sock.sendall(_request(b'{"prompt": "t5", "max_tokens": 2}').replace(
            b"Connection: close", b"Connection: keep-alive"))
        time.sleep(0.3)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\n")  # then trickles the second request
        t = time.perf_counter()
        raw = _answer(sock)
        assert time.perf_counter() - t < 3
    assert raw.count(b"HTTP/1.1 200") == 1 and b"HTTP/1.1 408" in raw


def test_a_malformed_request_is_a_json_400(port):
    with _connect(port) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        status, body = _status_and_body(_answer(sock))
    assert status == 400 and "not valid HTTP/1.1" in body["error"]["message"]


def test_connections_past_the_cap_get_a_json_503(port):
    held = [_connect(port) for _ in range(LIMITS.connections)]
    try:
        time.sleep(0.1)
        with _connect(port) as extra:
            extra.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, body = _status_and_body(_answer(extra))
        assert status == 503 and "too many connections" in body["error"]["message"]
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    with _connect(port) as ok:  # freed slots serve again
        ok.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert _status_and_body(_answer(ok))[0] == 200


def test_a_body_a_little_too_large_gets_its_413_not_a_reset(port):
    """The 413 came before the body was read and the connection closed under a client still
    sending: it saw a reset (or a broken pipe), not the answer."""
    body = b'{"prompt": "' + b"t5 " * 1_000_000 + b'"}'  # 3 MB, the limit is 1 MiB
    with _connect(port) as sock:
        sock.sendall(_request(body))
        status, answer = _status_and_body(_answer(sock))
    assert status == 413 and "larger than" in answer["error"]["message"]


@pytest.mark.parametrize("request_head", [
    b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 100000000\r\n\r\n",
])
def test_a_body_trickled_after_its_answer_is_cut_off_at_the_deadline(port, request_head):
    """Answered at once (200, 415) and then trickling its declared body, a connection stayed
    open past every deadline: 110 of them locked every other client out for as long."""
    with _connect(port) as sock:
        sock.sendall(request_head)
        t, closed = time.perf_counter(), False
        while time.perf_counter() - t < 5 and not closed:
            try:
                sock.sendall(b"x")
                closed = sock.recv(65536, socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                pass
            except OSError:  # reset: the server closed while we sent
                closed = True
            time.sleep(0.1)
        assert closed and time.perf_counter() - t < 3


def test_headers_past_16_kb_are_refused_even_in_one_read(port):
    with _connect(port) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"X-Big: " + b"a" * 17_000 + b"\r\n\r\n")
        status, body = _status_and_body(_answer(sock))
    assert status == 431 and "headers pass 16384 bytes" in body["error"]["message"]


def test_a_pipelined_request_is_not_cut_off_by_the_deadline(port, monkeypatch):
    """The deadline re-armed after a response must not fire on the pipelined request that
    response let start (it decodes past header_seconds here: 50 ms a step)."""
    slow_steps(monkeypatch)
    first = _request(b'{"prompt": "t5", "max_tokens": 2}').replace(
        b"Connection: close", b"Connection: keep-alive")
    second = _request(b'{"prompt": "t5 t9", "max_tokens": 40, "temperature": 0.9, "seed": 3}')
    with _connect(port) as sock:
        sock.sendall(first + second)
        raw = _answer(sock)
    assert raw.count(b"HTTP/1.1 200") == 2, raw[:300]
