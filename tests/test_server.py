"""`edgespec serve` (issue 19): OpenAI's API over a bundle, tested with the official `openai`
client as the client; chat templates rendered in Jinja's sandbox; export copies a checkpoint's
template into the bundle."""

import contextlib
import json
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import uvicorn

from edgespec.errors import BundleError
from edgespec.runtime.model import Model
from edgespec.runtime.serve.server import ServerLimits, create_app, uvicorn_config

TEMPLATE = ("{% for m in messages %}t{{ 5 if m.role == 'user' else 9 }} {{ m.content }} "
            "{% endfor %}{% if add_generation_prompt %}t11{% endif %}")


def with_template(src, dst, template: str):
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").write_text(template)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["tokenizer"]["chat_template"] = "chat_template.jinja"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.fixture(scope="module")
def chat_bundle(trimmed_bundle, tmp_path_factory):
    return with_template(trimmed_bundle, tmp_path_factory.mktemp("chat") / "b", TEMPLATE)


@contextlib.contextmanager
def serving(app, limits: ServerLimits = ServerLimits()):
    """The app on a free loopback port in a thread, on serve's connection layer (header
    deadline, connection cap); yields the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, limits, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield port
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def slow_steps(monkeypatch) -> list:
    """Generator.step slowed to 50 ms (so that a decode left running shows); returns the list
    each step appends its start time to."""
    from edgespec.runtime.generator import Generator

    steps, real = [], Generator.step

    def slow(self):
        steps.append(time.perf_counter())
        time.sleep(0.05)
        return real(self)

    monkeypatch.setattr(Generator, "step", slow)
    return steps


@pytest.fixture(scope="module")
def server(chat_bundle):
    """The app on a free loopback port in a thread; yields (client, model)."""
    model = Model(chat_bundle)
    with serving(create_app(model, "tiny")) as port:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                            max_retries=0, timeout=120), model


def test_models_lists_the_bundle(server):
    client, _ = server
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_a_completion_plain_and_streamed_equals_generate(server):
    client, model = server
    want = model.generate("t5 t9 t11", max_new_tokens=12, temperature=0)
    got = client.completions.create(model="tiny", prompt="t5 t9 t11", max_tokens=12,
                                    temperature=0)
    assert got.choices[0].text == want.text
    assert got.usage.completion_tokens == len(want.ids)
    assert got.model_extra["edgespec"]["drafter"] == want.drafter
    pieces = client.completions.create(model="tiny", prompt="t5 t9 t11", max_tokens=12,
                                       temperature=0, stream=True)
    chunks = list(pieces)
    assert "".join(c.choices[0].text for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_chat_completion_renders_the_bundles_template(server):
    client, model = server
    messages = [{"role": "user", "content": "t3 t4"}]
    want = model.generate(model.chat_prompt(messages), max_new_tokens=10, temperature=0)
    got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                         temperature=0)
    assert got.choices[0].message.content == want.text
    assert got.usage.prompt_tokens == len(model.chat_prompt(messages))
    streamed = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                              temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == want.text


def test_concurrent_streamed_requests_each_equal_their_solo_output(server):
    client, model = server
    prompts = [f"t{5 + i} t{9 + i} t{11 + i}" for i in range(8)]
    solo = [model.generate(p, max_new_tokens=10, temperature=0).text for p in prompts]

    def one(prompt):
        s = client.completions.create(model="tiny", prompt=prompt, max_tokens=10,
                                      temperature=0, stream=True)
        return "".join(c.choices[0].text for c in s)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, prompts)) == solo


def test_bad_requests_get_openai_error_bodies(server):
    client, _ = server
    with pytest.raises(openai.BadRequestError, match="temperature must be"):
        client.completions.create(model="tiny", prompt="t5", temperature=7)
    with pytest.raises(openai.BadRequestError, match="prompt must be a string"):
        client.completions.create(model="tiny", prompt=["t5", "t9"])
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="t5")
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user"}])


def test_chat_without_a_template_is_a_clear_400(trimmed_bundle):
    from starlette.testclient import TestClient

    http = TestClient(create_app(Model(trimmed_bundle), "tiny"), base_url="http://localhost")
    r = http.post("/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": "t5"}]})
    assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]


@pytest.mark.parametrize("template, why", [
    ("{{ messages.__class__.__mro__ }}", "failed"),  # the sandbox's SecurityError
    ("{{ cycler.__init__.__globals__ }}", "failed"),
    ("{% include '/etc/passwd' %}", "failed"),  # no loader: nothing to include
    ("{{ raise_exception('no system role') }}", "refused these messages: no system role"),
    ("{% set x = messages.append(1) %}", "failed"),  # immutable: no mutation of our values
])
def test_a_template_cannot_reach_python_or_files(trimmed_bundle, tmp_path, template, why):
    model = Model(with_template(trimmed_bundle, tmp_path / "b", template))
    with pytest.raises(ValueError, match=why):
        model.chat_prompt([{"role": "user", "content": "hi"}])


def test_a_template_that_does_not_compile_fails_the_load(trimmed_bundle, tmp_path):
    with pytest.raises(BundleError, match="not a Jinja template"):
        Model(with_template(trimmed_bundle, tmp_path / "b", "{% for %}"))


def test_export_copies_the_checkpoints_chat_template(tiny_dirs, tmp_path):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    hf = tmp_path / "hf"
    shutil.copytree(tiny_dirs["llama"], hf)
    config = hf / "tokenizer_config.json"
    cfg = json.loads(config.read_text()) if config.is_file() else {}
    config.write_text(json.dumps({**cfg, "chat_template": TEMPLATE}))
    export_bundle(hf, tmp_path / "b", ExportOptions(max_len=32, progress=False))
    model = Model(tmp_path / "b")
    assert (tmp_path / "b" / "chat_template.jinja").read_text() == TEMPLATE
    assert model.chat_prompt([{"role": "user", "content": "t3"}]) == \
        model.tokenizer.encode("t5 t3 t11", special=False)


def test_chat_keeps_the_conversation(chat_bundle):
    """`edgespec chat` fed two turns on stdin: each reply equals generate() on the template's
    rendering of the conversation so far."""
    import subprocess
    import sys

    model = Model(chat_bundle)
    turns = ["t3 t4", "t7"]
    r = subprocess.run([sys.executable, "-m", "edgespec.cli", "chat", str(chat_bundle),
                        "--max-new-tokens", "6", "-q"], input="\n".join(turns) + "\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-500:]
    messages, want = [], []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        reply = model.generate(model.chat_prompt(messages), max_new_tokens=6,
                               temperature=0).text
        messages.append({"role": "assistant", "content": reply})
        want.append(reply)
    assert r.stdout == "".join(f"{w}\n" for w in want)


def test_chat_without_a_template_says_so(trimmed_bundle):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "edgespec.cli", "chat", str(trimmed_bundle)],
                       input="t5\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no chat template" in r.stderr


def test_a_disconnected_stream_cancels_its_decode(server, monkeypatch):
    """The client reads one chunk and hangs up: the decode stops within a step or two instead
    of running to max_tokens (each step slowed to 50 ms so that the difference shows)."""
    import http.client
    from urllib.parse import urlparse

    client, _ = server
    steps = slow_steps(monkeypatch)
    body = {"model": "tiny", "prompt": "t5", "max_tokens": 60, "temperature": 0.9,
            "seed": 1, "stream": True}
    url = urlparse(str(client.base_url))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    while not r.readline().startswith(b"data: "):
        pass  # read up to the first chunk, then hang up
    conn.sock.close()
    conn.close()
    time.sleep(1.0)
    seen = len(steps)
    time.sleep(0.5)
    assert len(steps) == seen and seen < 30, seen  # stopped, long before 60 steps


def test_serve_refuses_an_unknown_drafter_before_it_listens(trimmed_bundle, capsys):
    from edgespec.cli import main

    assert main(["serve", str(trimmed_bundle), "--drafter", "nope"]) == 2
    assert "unknown drafter 'nope'" in capsys.readouterr().err


def test_serve_without_its_extra_says_which_to_install(trimmed_bundle, capsys, monkeypatch):
    import importlib.util

    from edgespec.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", str(trimmed_bundle)]) == 2
    assert "pip install edgespec[serve]" in capsys.readouterr().err


def test_a_prompt_longer_than_the_model_is_a_400_even_when_streamed(server):
    client, model = server
    long = " ".join(["t5"] * (model.max_len + 5))
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="this model takes at most"):
            out = client.completions.create(model="tiny", prompt=long, max_tokens=4,
                                            stream=stream)
            list(out) if stream else None


def test_chat_content_may_be_text_parts(chat_bundle):
    model = Model(chat_bundle)
    parts = [{"role": "user", "content": [{"type": "text", "text": "t3 "},
                                          {"type": "text", "text": "t4"}]}]
    assert model.chat_prompt(parts) == model.chat_prompt([{"role": "user", "content": "t3 t4"}])
    with pytest.raises(ValueError, match="text content"):
        model.chat_prompt([{"role": "user", "content": [{"type": "image_url"}]}])


def test_info_says_whether_a_bundle_can_chat(chat_bundle, trimmed_bundle, capsys):
    from edgespec.cli import main

    assert main(["info", str(chat_bundle)]) == 0
    assert "chat template chat_template.jinja" in capsys.readouterr().out
    assert main(["info", str(trimmed_bundle)]) == 0
    assert "no chat template" in capsys.readouterr().out


def test_message_content_that_spells_a_special_token_stays_text(chat_bundle, tmp_path):
    """A user's `</s>` (here the tokenizer's special end token, id 2) is encoded as text: it
    cannot end the turn or forge another; content without one keeps transformers' ids."""
    bundle = tmp_path / "b"
    shutil.copytree(chat_bundle, bundle)
    tok = json.loads((bundle / "tokenizer.json").read_text())
    tok["added_tokens"] = [{"id": 2, "content": "</s>", "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": True}]
    (bundle / "tokenizer.json").write_text(json.dumps(tok))
    model = Model(bundle)
    assert model.tokenizer.encode("t3 </s> t7", special=False) == [3, 2, 7]  # the token
    ids = model.chat_prompt([{"role": "user", "content": "t3 </s> t7"}])
    assert 2 not in ids and ids[:2] == [5, 3] and ids[-2:] == [7, 11]
    plain = [{"role": "user", "content": "t3 t7"}, {"role": "assistant", "content": "t8"}]
    assert model.chat_prompt(plain) == model.tokenizer.encode("t5 t3 t7 t9 t8 t11",
                                                              special=False)
    # a template that rewrites content cannot keep such content as text: refused, one line
    (bundle / "chat_template.jinja").write_text(TEMPLATE.replace("m.content", "m.content[1:]"))
    with pytest.raises(ValueError, match="rewrites or drops content"):
        Model(bundle).chat_prompt([{"role": "user", "content": " t3 </s>"}])
