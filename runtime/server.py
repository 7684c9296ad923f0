"""`edgespec serve`: an OpenAI-compatible HTTP server over one Model (Starlette + uvicorn, the
`serve` extra). GET /v1/models, POST /v1/completions and /v1/chat/completions, streamed as
server-sent events when asked.

One Model serves every request; each request decodes in its own Generator on a worker thread
(sessions are shared, K/V buffers are not). A client that disconnects mid-stream cancels its
generation within one step.
"""

from __future__ import annotations

import asyncio
import json
import threading

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from . import openai_api as api
from .model import Model


def create_app(model: Model, name: str, drafter: str = "auto") -> Starlette:
    """The app serving `model` as model id `name`, decoding with `drafter`."""

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "edgespec"}]})

    async def complete(request: Request, chat: bool):
        try:
            body = await request.json()
        except ValueError:
            return _error(api.RequestError("the request body is not valid JSON"))
        try:
            req = api.parse(body, chat, model.max_len)
            if str(body.get("model", name)) != name:
                raise api.RequestError(f"model {str(body.get('model'))[:60]!r} is not served "
                                       f"here; this server has {name!r}", "model", 404)
            ids = (model.chat_prompt(req.prompt) if chat
                   else model.tokenizer.encode(req.prompt))
            if len(ids) >= model.max_len:  # refused now, not after a stream has begun
                raise api.RequestError(f"the prompt is {len(ids)} tokens; this model takes "
                                       f"at most {model.max_len - 1}",
                                       "messages" if chat else "prompt")
            stream = model.stream(ids, drafter=drafter, **req.keywords)
        except ValueError as e:  # RequestError is one; a refused prompt or template too
            return _error(e if isinstance(e, api.RequestError) else api.RequestError(str(e)))
        rid = api.new_id(chat)
        if req.stream:
            return StreamingResponse(_events(stream, rid, name, chat),
                                     media_type="text/event-stream")
        try:
            await run_in_threadpool(lambda: [None for _ in stream])
        finally:
            stream.cancel()
        return JSONResponse(api.response(rid, name, chat, stream.completion))

    async def completions(request: Request):
        return await complete(request, chat=False)

    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    return Starlette(routes=[Route("/v1/models", models, methods=["GET"]),
                             Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/chat/completions", chat_completions,
                                   methods=["POST"])])


async def _events(stream, rid: str, name: str, chat: bool):
    """Server-sent events: a chunk per text piece, the finish chunk with usage and edgespec's
    stats, then [DONE]. The decode runs in one worker thread that hands pieces over through a
    queue (a thread hop per piece cost ~0.5 ms a token). A disconnected client closes this
    generator, which cancels the decode within one step."""
    def event(data) -> str:
        return f"data: {json.dumps(data)}\n\n"

    loop, pieces = asyncio.get_running_loop(), asyncio.Queue()
    end = object()

    def decode():
        try:
            for piece in stream:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)
            loop.call_soon_threadsafe(pieces.put_nowait, end)
        except BaseException as e:  # noqa: BLE001 - handed to the event loop, raised there
            loop.call_soon_threadsafe(pieces.put_nowait, e)

    worker = threading.Thread(target=decode, daemon=True)
    worker.start()
    first = True
    try:
        while (piece := await pieces.get()) is not end:
            if isinstance(piece, BaseException):
                raise piece
            yield event(api.chunk(rid, name, chat, piece, first=first))
            first = False
        done = stream.completion
        last = api.chunk(rid, name, chat, None, api.FINISH.get(str(done.stop_reason), "stop"))
        yield event({**last, "usage": api.usage(done), "edgespec": api.edgespec_stats(done)})
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()


def _error(e: api.RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def serve(model: Model, name: str, host: str, port: int, drafter: str = "auto") -> None:
    """Run the server until interrupted (uvicorn's own signal handling)."""
    import uvicorn

    uvicorn.run(create_app(model, name, drafter), host=host, port=port, log_level="info")
