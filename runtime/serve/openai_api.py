"""OpenAI's completions and chat completions API over a Model: request checks and response
bodies (runtime/serve/server.py serves them over HTTP). Stdlib only besides the runtime.

Each response carries `usage` and, as an extra field, `edgespec`: the drafter that ran, the
tokens per target forward (tau) and the decode tokens/s.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from edgespec.runtime.completions import Completion


class RequestError(ValueError):
    """A request the API refuses: its HTTP status and OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.status, self.param = status, param

    def body(self) -> dict:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param,
                          "code": None}}


@dataclass(frozen=True)
class Request:
    prompt: object  # text (completions) or chat messages (chat completions)
    keywords: dict  # Model.generate's: max_new_tokens, temperature, top_p, seed, stop
    stream: bool


def _number(body: dict, key: str, default, low: float, high: float, integer: bool = False):
    value = body.get(key, default)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        want = "an integer" if integer else "a number"
        raise RequestError(f"{key} must be {want} in [{low}, {high}], got {str(value)[:40]}", key)
    return value


def parse(body, chat: bool, max_len: int) -> Request:
    """A completions (chat False) or chat completions request body, checked."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if chat:
        prompt = body.get("messages")
        if not isinstance(prompt, list) or not prompt:
            raise RequestError("messages must be a non-empty list", "messages")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]  # one prompt in a list, as clients often send it
        if not isinstance(prompt, str):
            raise RequestError("prompt must be a string (one prompt per request)", "prompt")
    n = body.get("n")
    if n is not None and (type(n) is not int or n != 1):
        raise RequestError("n must be 1 (one choice per request)", "n")
    _refuse_unsupported(body)
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not (isinstance(stop, (list, tuple)) and len(stop) <= 4
            and all(isinstance(s, str) and s for s in stop)):
        raise RequestError("stop must be a string or a list of up to 4 strings", "stop")
    limit = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    keywords = {"max_new_tokens": _number(body, limit, 16 if not chat else max_len, 1,
                                          max_len, integer=True),
                "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
                "top_p": _number(body, "top_p", 1.0, 1e-6, 1.0),
                "seed": _number(body, "seed", None, 0, 2 ** 63 - 1, integer=True),
                "stop": tuple(stop)}
    stream = body.get("stream")
    stream = False if stream is None else stream
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false", "stream")
    return Request(prompt, keywords, stream)


# fields this server does not implement, with the values that ask for nothing (OpenAI's
# defaults): anything else is refused rather than silently ignored
UNSUPPORTED = {"logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False),
               "best_of": (None, 1), "suffix": (None, ""), "tools": (None, []),
               "tool_choice": (None, "none", "auto"), "functions": (None, []),
               "function_call": (None, "none", "auto"), "logit_bias": (None, {}),
               "response_format": (None, {"type": "text"})}


def _refuse_unsupported(body: dict) -> None:
    for key, neutral in UNSUPPORTED.items():
        value = body.get(key)
        if not any(type(value) is type(v) and value == v for v in neutral):
            raise RequestError(f"{key} is not supported by this server; leave it out", key)


def check_prompt_size(prompt, limit: int) -> None:
    """Refuse prompt text over `limit` characters before it is rendered or tokenized: both
    cost memory and time in proportion to it. For chat, every string a message holds counts
    (role and name as well as content: a template may print any of them)."""
    def chars(value) -> int:  # text, or OpenAI's list of text parts
        if isinstance(value, str):
            return len(value)
        if isinstance(value, list):
            return sum(len(p["text"]) for p in value
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
        return 0  # refused when the messages are read

    size = chars(prompt) if isinstance(prompt, str) else sum(
        chars(v) for m in prompt if isinstance(m, dict) for v in m.values())
    if size > limit:
        raise RequestError(f"the prompt holds more than {limit} characters, more than this "
                           "server takes", "messages" if not isinstance(prompt, str)
                           else "prompt", 413)


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


FINISH = {"max_new_tokens": "length", "max_length": "length"}  # the rest: "stop"


def edgespec_stats(done: Completion) -> dict:
    s = done.stats
    decode = s.new_tokens - 1
    return {"drafter": done.drafter,
            "tokens_per_forward": round(s.new_tokens / max(s.target_forwards, 1), 3),
            "decode_tokens_per_second": round(decode / s.decode_seconds, 1)
            if decode > 0 and s.decode_seconds > 0 else None}


def usage(done: Completion) -> dict:
    prompt, new = done.stats.prompt_tokens, done.stats.new_tokens
    return {"prompt_tokens": prompt, "completion_tokens": new, "total_tokens": prompt + new}


def response(rid: str, model: str, chat: bool, done: Completion) -> dict:
    """The whole (non-streamed) response body."""
    finish = FINISH.get(str(done.stop_reason), "stop")
    choice = ({"index": 0, "message": {"role": "assistant", "content": done.text},
               "finish_reason": finish} if chat else
              {"index": 0, "text": done.text, "logprobs": None, "finish_reason": finish})
    return {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice],
            "usage": usage(done), "edgespec": edgespec_stats(done)}


def chunk(rid: str, model: str, chat: bool, text: str | None, finish: str | None = None,
          first: bool = False) -> dict:
    """One streamed piece (OpenAI's chunk format); the last one has finish set, no text."""
    if chat:
        delta = {"role": "assistant", "content": text or ""} if first else (
            {"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice]}
