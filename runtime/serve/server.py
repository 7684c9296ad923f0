"""`edgespec serve`: an OpenAI-compatible HTTP server over one Model (Starlette + uvicorn, the
`serve` extra). GET /v1/models, POST /v1/completions and /v1/chat/completions, streamed as
server-sent events when asked.

One Model serves every request; each request decodes in its own Generator on a worker thread
(sessions are shared, K/V buffers are not). What a request may cost is bounded before any work
(ServerLimits): body bytes, prompt characters, requests decoding at once and waiting. Tokenizing,
template rendering and decoding run off the event loop, so /v1/models answers while a request
works. A client that hangs up, streamed or not, cancels its generation within one step. Every
failure is an OpenAI error body (4xx / 5xx), never a reset connection or a traceback.
Threat model and limits: docs/hardening.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from . import openai_api as api
from edgespec.runtime.model import Model

log = logging.getLogger("edgespec.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DRAIN_FACTOR = 4  # a body up to 4x the limit is read and dropped before its 413
MAX_HEADER_BYTES = 16 << 10  # h11 refuses more only when they arrive in several reads


@dataclass(frozen=True)
class ServerLimits:
    """What the server accepts and holds at once (`edgespec serve` flags set them)."""

    max_body_bytes: int = 1 << 20  # a request body; an edge model's prompt is a few KB
    max_prompt_chars: int = 1 << 18  # prompt text (every message's text), before tokenizing;
    # a chat prompt rendered by the bundle's template may be 4x that (the template's markup)
    concurrency: int = 4  # requests decoding at once: each holds a Generator and its K/V
    queue: int = 64  # requests waiting for a slot; beyond that a 503 (a burst is absorbed)
    # names a request's Host and Origin headers may carry (DNS rebinding, pages posting to
    # localhost); "*" accepts any Host (a server bound to all interfaces)
    hosts: tuple[str, ...] = LOOPBACK
    header_seconds: float = 10.0  # a request's headers, from connecting (slowloris)
    body_seconds: float = 30.0  # its body, from its headers

    @property
    def connections(self) -> int:
        """Open connections held at once; past it a 503 (idle keep-alives, clients between
        requests, over the requests that may decode or wait)."""
        return self.concurrency + self.queue + 32


class _Slots:
    """At most `n` requests decode at once, `queue` more wait; the rest are refused at once."""

    def __init__(self, n: int, queue: int):
        self._free, self._queue, self.waiting = asyncio.Semaphore(n), queue, 0

    async def take(self):
        """Wait for a slot; returns its release (idempotent, callable from any thread)."""
        if self._free.locked() and self.waiting >= self._queue:
            raise api.RequestError("the server is busy (every decoding slot and queue place "
                                   "is taken); retry shortly", status=503)
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        loop, once = asyncio.get_running_loop(), threading.Lock()

        def release():
            if once.acquire(blocking=False):
                loop.call_soon_threadsafe(self._free.release)
        return release


def create_app(model: Model, name: str, drafter: str = "auto",
               limits: ServerLimits = ServerLimits()) -> Starlette:
    """The app serving `model` as model id `name`, decoding with `drafter`."""
    slots = _Slots(limits.concurrency, limits.queue)

    async def models(request: Request) -> Response:
        _check_origin(request, limits.hosts)
        return _json({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "edgespec"}]})

    async def complete(request: Request, chat: bool) -> Response:
        _check_origin(request, limits.hosts)
        try:
            body = await asyncio.wait_for(_read_json(request, limits.max_body_bytes),
                                          limits.body_seconds)
        except asyncio.TimeoutError:
            raise api.RequestError(f"the request body did not arrive within "
                                   f"{limits.body_seconds:g} s", status=408) from None
        req = api.parse(body, chat, model.max_len)
        if body.get("model") not in (None, name):
            raise api.RequestError(f"model {str(body.get('model'))[:60]!r} is not served "
                                   f"here; this server has {name!r}", "model", 404)
        api.check_prompt_size(req.prompt, limits.max_prompt_chars)
        release = await slots.take()
        try:
            if await request.is_disconnected():  # gave up while queued
                release()
                return Response(status_code=499)
            stream = await run_in_threadpool(_open, model, req, chat, drafter,
                                             4 * limits.max_prompt_chars)
        except BaseException:
            release()
            raise
        weakref.finalize(stream, release)  # a stream never iterated still frees its slot
        rid = api.new_id(chat)
        if req.stream:
            return StreamingResponse(_events(stream, rid, name, chat, release),
                                     media_type="text/event-stream")
        try:
            await _decode_watching(request, stream)
        finally:
            stream.cancel()
            release()
        return _json(api.response(rid, name, chat, stream.completion))

    def route(path: str, handler, method: str) -> Route:
        async def answer(request: Request) -> Response:
            try:
                if sum(len(k) + len(v) for k, v in request.scope["headers"]) > MAX_HEADER_BYTES:
                    raise api.RequestError(f"the request's headers pass {MAX_HEADER_BYTES} "
                                           "bytes", status=431)
                return await handler(request)
            except ClientDisconnect:  # hung up while sending its body: nobody to answer
                return Response(status_code=499)
            except api.RequestError as e:
                return _error(e)
            except ValueError as e:  # a refused prompt or template; bad text in a field
                return _error(api.RequestError(str(e)))
            except Exception as e:  # noqa: BLE001 - every failure is an answer
                log.exception("request failed")
                return _error(api.RequestError(f"internal error ({type(e).__name__})",
                                               status=500))
        return Route(path, answer, methods=[method])

    async def http_error(_: Request, e: HTTPException) -> Response:  # 404, 405: JSON too
        return _error(api.RequestError(str(e.detail), status=e.status_code))

    return Starlette(exception_handlers={HTTPException: http_error}, routes=[
        route("/v1/models", models, "GET"),
        route("/v1/completions", lambda r: complete(r, chat=False), "POST"),
        route("/v1/chat/completions", lambda r: complete(r, chat=True), "POST")])


def _open(model: Model, req: api.Request, chat: bool, drafter: str, rendered_chars: int):
    """In a worker: render and tokenize the prompt, check it, make its Generator."""
    ids = (model.chat_prompt(req.prompt, rendered_chars) if chat
           else model.tokenizer.encode(req.prompt))
    field = "messages" if chat else "prompt"
    if not ids:
        raise api.RequestError("the prompt encodes to no tokens; send some text", field)
    if len(ids) >= model.max_len:  # refused now, not after a stream has begun
        raise api.RequestError(f"the prompt is {len(ids)} tokens; this model takes at most "
                               f"{model.max_len - 1}", field)
    return model.stream(ids, drafter=drafter, **req.keywords)


async def _decode_watching(request: Request, stream) -> None:
    """Decode in a worker; a client that hangs up cancels it within one step."""
    task = asyncio.ensure_future(run_in_threadpool(lambda: [None for _ in stream]))
    while not task.done():
        await asyncio.wait({task}, timeout=0.2)
        if not task.done() and await request.is_disconnected():
            stream.cancel()
    task.result()


async def _read_json(request: Request, limit: int):
    """The body as JSON, refused before parsing when it is not JSON or larger than `limit`.
    A body a little too large is read to its end and dropped before the 413, so that the
    client, still sending, gets the answer rather than a reset connection; one declared far
    too large is answered at once (a client that sent `Expect: 100-continue` sends nothing)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":  # also what a web page cannot send without CORS' consent
        raise api.RequestError("the request body must be JSON (Content-Type: "
                               "application/json)", status=415)
    too_large = api.RequestError(f"the request body is larger than this server takes "
                                 f"({limit} bytes)", status=413)
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit() or int(declared) > DRAIN_FACTOR * limit:
        raise too_large
    body, size = bytearray(), 0
    async for part in request.stream():
        size += len(part)
        if size > DRAIN_FACTOR * limit:
            raise too_large
        if size <= limit:
            body += part
    if size > limit or int(declared) > limit:
        raise too_large
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested thousands of levels deep
        raise api.RequestError("the request body is not valid JSON") from None


def _hostname(value: str) -> str:
    """The host of a Host header or Origin (no port, no IPv6 brackets), lowercased."""
    return (urlsplit(value if "//" in value else "//" + value).hostname or "").lower()


def _check_origin(request: Request, hosts: tuple[str, ...]) -> None:
    """Host must name this server (a DNS-rebinding page sends its own name); a browser's
    Origin, when sent, must too (any web page may POST to localhost)."""
    allowed = {h.lower().strip("[]") for h in hosts}
    if "*" not in allowed and _hostname(request.headers.get("host", "")) not in allowed:
        raise api.RequestError("the Host header does not name this server (serve "
                               "--allow-host NAME adds one)", status=403)
    origin = request.headers.get("origin")
    if origin is not None and _hostname(origin) not in allowed - {"*"}:
        raise api.RequestError("cross-origin requests from web pages are refused (serve "
                               "--allow-host NAME allows a page's host)", status=403)


async def _events(stream, rid: str, name: str, chat: bool, release):
    """Server-sent events: a chunk per text piece, the finish chunk with usage and edgespec's
    stats, then [DONE]. The decode runs in one worker thread that hands pieces over through a
    queue (a thread hop per piece cost ~0.5 ms a token). A disconnected client closes this
    generator, which cancels the decode within one step; a failure mid-stream is an error
    event (OpenAI's form), then the end."""
    def event(data) -> str:
        return f"data: {json.dumps(data)}\n\n"

    loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
    end = object()

    def decode():
        try:
            for piece in stream:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)
            loop.call_soon_threadsafe(pieces.put_nowait, end)
        except BaseException as e:  # noqa: BLE001 - handed to the event loop, answered there
            loop.call_soon_threadsafe(pieces.put_nowait, e)
        finally:
            release()

    threading.Thread(target=decode, daemon=True).start()
    first = True
    try:
        while (piece := await pieces.get()) is not end:
            if isinstance(piece, BaseException):
                if not isinstance(piece, ValueError):
                    log.error("a streamed request failed", exc_info=piece)
                message = (str(piece) if isinstance(piece, ValueError)
                           else f"internal error ({type(piece).__name__})")
                yield event(api.RequestError(message, status=500).body())
                break
            yield event(api.chunk(rid, name, chat, piece, first=first))
            first = False
        else:
            done = stream.completion
            last = api.chunk(rid, name, chat, None,
                             api.FINISH.get(str(done.stop_reason), "stop"))
            yield event({**last, "usage": api.usage(done), "edgespec": api.edgespec_stats(done)})
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()


def _json(body: dict, status: int = 200) -> Response:
    """JSON with non-ASCII escaped: an echoed lone surrogate cannot break the encoding."""
    return Response(json.dumps(body), status_code=status, media_type="application/json")


def _error(e: api.RequestError) -> Response:
    return _json(e.body(), e.status)


def uvicorn_config(app, host: str, port: int, limits: ServerLimits = ServerLimits(),
                   log_level: str = "info"):
    """uvicorn's Config for `app` on the guarded connection layer (runtime/serve/http_guard.py):
    header deadline, connection cap, JSON errors; idle keep-alives close after 5 s."""
    import uvicorn

    from .http_guard import guarded

    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          http=guarded(limits.header_seconds, limits.connections),
                          timeout_keep_alive=5)


def serve(model: Model, name: str, host: str, port: int, drafter: str = "auto",
          limits: ServerLimits = ServerLimits()) -> None:
    """Run the server until interrupted (uvicorn's own signal handling)."""
    import uvicorn

    uvicorn.Server(uvicorn_config(create_app(model, name, drafter, limits), host, port,
                                  limits)).run()
