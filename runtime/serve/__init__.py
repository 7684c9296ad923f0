"""Serving over HTTP: an OpenAI-compatible server (server.py) over the runtime's Model, its
request and response shapes (openai_api.py) and the bounded connection layer (http_guard.py).
It sits above the runtime: nothing in runtime/ outside this folder imports it."""
