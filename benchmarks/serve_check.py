"""`edgespec serve` end to end, as a user would run it: the server as a subprocess, the official
`openai` client as the client. Prints a transcript and the server's overhead.

    python benchmarks/serve_check.py BUNDLE [--prompts FILE] [--n 4] [--tokens 64]

Checks (greedy, temperature 0): a completion, plain and streamed, equals `edgespec run`'s text
for the same prompt; a chat completion on a copy of the bundle given a template; 8 concurrent
streamed requests each equal their solo output. Measures time to first streamed token and
decode tokens/s through the server against Model.stream in-process (same drafter: auto).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from edgespec.runtime.evaluate import read_prompts
from edgespec.runtime.model import Model

TEMPLATE = ("{% for m in messages %}# {{ m.role }}: {{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}# assistant:\n{% endif %}")
ES = [sys.executable, "-m", "edgespec.cli"]


def start(bundle: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([*ES, "serve", str(bundle), "--port", str(port), "--name", "demo"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
    for _ in range(300):
        try:
            client.models.list()
            return proc
        except openai.APIConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.stderr.read()[-500:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def streamed(client, prompt: str, tokens: int) -> tuple[str, float, float]:
    """(text, seconds to the first piece, seconds in all) of one streamed completion."""
    t = time.perf_counter()
    first, parts = None, []
    for c in client.completions.create(model="demo", prompt=prompt, max_tokens=tokens,
                                       temperature=0, stream=True):
        if c.choices[0].text:
            first = first or time.perf_counter() - t
            parts.append(c.choices[0].text)
    return "".join(parts), first, time.perf_counter() - t


def direct(model: Model, prompt: str, tokens: int) -> tuple[str, float, float]:
    t = time.perf_counter()
    first, parts = None, []
    for piece in model.stream(prompt, max_new_tokens=tokens):
        first = first or time.perf_counter() - t
        parts.append(piece)
    return "".join(parts), first, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--prompts", default=str(Path(__file__).resolve().parents[2]
                                             / "shared/data/prompts.jsonl"))
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ns = ap.parse_args()
    prompts = [r["prompt"][-300:] for r in read_prompts(ns.prompts)][: max(ns.n, 8)]
    port = free_port()
    proc = start(ns.bundle, port)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
    bad = 0
    try:
        print(f"$ edgespec serve {ns.bundle} --port {port} --name demo")
        print(f"models: {[m.id for m in client.models.list().data]}")
        p = prompts[0]
        run = subprocess.run([*ES, "run", str(ns.bundle), p, "-q", "--max-new-tokens",
                              str(ns.tokens)], capture_output=True, text=True, check=True)
        plain = client.completions.create(model="demo", prompt=p, max_tokens=ns.tokens,
                                          temperature=0)
        text, _, _ = streamed(client, p, ns.tokens)
        ok = plain.choices[0].text == text == run.stdout[:-1]  # run ends with a newline
        bad += not ok
        print(f"completion == streamed == `edgespec run`: {ok}; usage {plain.usage}; "
              f"edgespec {plain.model_extra['edgespec']}")
        print(f"  text: {plain.choices[0].text[:120]!r}")
        pieces = 8
        with ThreadPoolExecutor(pieces) as pool:
            together = list(pool.map(lambda q: streamed(client, q, ns.tokens)[0],
                                     prompts[:pieces]))
        solo = [streamed(client, q, ns.tokens)[0] for q in prompts[:pieces]]
        same = sum(a == b for a, b in zip(together, solo))
        bad += same != pieces
        print(f"{pieces} concurrent streamed requests equal to their solo output: {same}/{pieces}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with tempfile.TemporaryDirectory() as tmp:  # chat: the bundle given a template
        chat = Path(tmp) / "chat"
        shutil.copytree(ns.bundle, chat)
        (chat / "chat_template.jinja").write_text(TEMPLATE)
        m = json.loads((chat / "manifest.json").read_text())
        m["tokenizer"]["chat_template"] = "chat_template.jinja"
        (chat / "manifest.json").write_text(json.dumps(m))
        port = free_port()
        proc = start(chat, port)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-")
            messages = [{"role": "user", "content": "write a function that adds two numbers"}]
            r = client.chat.completions.create(model="demo", messages=messages, max_tokens=40,
                                               temperature=0)
            print(f"chat (template given to a copy): {r.choices[0].message.content[:120]!r}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    # the server's overhead: the same streamed completions through HTTP and in-process
    model = Model(ns.bundle)
    port = free_port()
    proc = start(ns.bundle, port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-")
        rows = {"server": [], "direct": []}
        for q in prompts[: ns.n]:
            for name, fn in (("server", lambda: streamed(client, q, ns.tokens)),
                             ("direct", lambda: direct(model, q, ns.tokens))):
                text, first, total = fn()
                n = len(model.tokenizer.encode(text, special=False))
                rows[name].append((first, max(n - 1, 1) / (total - first)))
        for name, r in rows.items():
            print(f"{name}: time to first token {1e3 * statistics.median(x[0] for x in r):.1f} "
                  f"ms, decode {statistics.median(x[1] for x in r):.1f} tokens/s "
                  f"(median of {len(r)})")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
