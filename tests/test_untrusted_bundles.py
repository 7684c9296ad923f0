"""Untrusted bundles (issue 8): each crafted bundle is refused with one clear BundleError before
onnxruntime opens anything, and no file outside the bundle is read.

Reads are detected with sentinel copies of the bundle's files outside it: their access time is
set to the year 2000, older than their modification time, so any read moves it (relatime
updates atime when it is older than mtime; `stat` alone does not). A loader that followed an
escaping path would find valid files there, so refusing is the only way to pass.
"""

import json
import os
import shutil
import time

import numpy as np
import pytest
from conftest import claim_fp16
from hf_tiny import save_tiny_tokenizer

from edgespec.manifest import BundleError
from edgespec.runtime.model import Model

Y2000 = 946684800


@pytest.fixture
def crafted(trimmed_bundle, tmp_path, monkeypatch):
    """(bundle copy, sentinel folder outside it); a session created while loading fails the test."""
    bundle, outside = tmp_path / "b", tmp_path / "outside"
    shutil.copytree(trimmed_bundle, bundle)
    shutil.copytree(trimmed_bundle, outside)
    for f in outside.iterdir():
        os.utime(f, (Y2000, time.time()))
    import onnxruntime

    def no_session(*args, **kwargs):
        raise AssertionError(f"an onnxruntime session was created for {args[:1]}")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    yield bundle, outside
    read = [f.name for f in outside.iterdir() if os.stat(f).st_atime != Y2000]
    assert not read, f"files outside the bundle were read: {read}"


def _manifest(bundle, fn):
    path = bundle / "manifest.json"
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _set(keys, value):
    """A manifest edit: d[k0][k1]... = value."""
    def fn(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return fn


def _delete(keys):
    def fn(d):
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return fn


OUT = "OUTSIDE"  # replaced by the sentinel folder's absolute path


def _fp16_mask(mask):
    """The target claims fp16 throughout (bias, K/V, weights) with this mask value."""
    return lambda d: claim_fp16(d, mask)


# (id, manifest edit, the words the error must hold)
MANIFEST_CASES = [
    ("target-dotdot", _set(["target", "file"], "../outside/target.onnx"), "leaves the bundle"),
    ("target-absolute", _set(["target", "file"], OUT + "/target.onnx"), "absolute"),
    ("target-nested-dotdot", _set(["target", "file"], "x/../../outside/target.onnx"),
     "leaves the bundle"),
    ("tokenizer-dotdot", _set(["tokenizer", "file"], "../outside/tokenizer.json"),
     "leaves the bundle"),
    ("drafter-graph-dotdot", _set(["drafters", "mtp", "graph", "file"], "../outside/mtp.onnx"),
     "leaves the bundle"),
    ("d2t-dotdot", _set(["drafters", "mtp", "d2t"], "../outside/mtp.d2t.npy"),
     "leaves the bundle"),
    ("kv-compact-dotdot", _set(["target", "kv", "compact"], "../outside/target.kv_compact.onnx"),
     "leaves the bundle"),
    ("external-data-absolute", _set(["target", "external_data"], OUT + "/target.onnx"),
     "absolute"),
    ("windows-drive", _set(["target", "file"], "C:\\outside\\target.onnx"), "absolute"),
    ("wrong-type-int", _set(["model", "num_layers"], "2"), "model.num_layers.*wrong type"),
    ("wrong-type-bool", _set(["model", "vocab_size"], True), "vocab_size.*wrong type"),
    ("wrong-type-mask", _set(["target", "mask_value"], "x"), "mask_value.*wrong type"),
    ("nan-mask", _set(["target", "mask_value"], float("nan")), "finite negative"),
    ("wrong-type-layers", _set(["target", "feature_layers"], ["a"]), "feature_layers"),
    ("option-string", _set(["drafters", "mtp", "options", "gamma"], "4"), "options.gamma"),
    ("option-huge", _set(["drafters", "eagle3", "options", "tree_size"], 10**9),
     "options.tree_size"),
    ("medusa-rank-past-topk", _set(["drafters", "medusa", "options", "tree"], [[0], [99]]),
     "options.tree"),
    ("medusa-orphan-path", _set(["drafters", "medusa", "options", "tree"], [[0, 0]]),
     "options.tree"),
    ("kv-format-injection", _set(["target", "kv", "past_key"], "{i.__class__}"),
     "name pattern"),
    ("eos-out-of-vocab", _set(["tokenizer", "eos_token_ids"], [10**6]), "eos_token_ids"),
    ("drafter-name", lambda d: d["drafters"].update({"../x": d["drafters"]["mtp"]}),
     "drafter name"),
    ("missing-tokenizer", _delete(["tokenizer"]), "missing key 'manifest.tokenizer'"),
    ("missing-inputs", _delete(["target", "inputs"]), "missing key 'target.inputs'"),
    ("missing-drafter-graph", _delete(["drafters", "mtp", "graph"]), "needs 'graph'"),
    ("missing-logits", lambda d: d["target"]["outputs"].pop(0), "lacks \\['logits'\\]"),
    ("huge-max-len", _set(["model", "max_len"], 10**12), "max_len.*out of range"),
    ("huge-dim", _set(["target", "outputs", 0, "shape"], [1, "N", 10**12]), "bad dim"),
    ("logits-wider-than-vocab", _set(["drafters", "mtp", "graph", "outputs", 0, "shape"],
                                     [1, "N", 10**6]), "width"),
    ("kv-dims-mismatch", _set(["target", "inputs", 4, "shape"], [1, 7, "L", 32]), "shape"),
    ("fp16-weights-fp32-kv", _set(["target", "weights"], "fp16"),
     "fp16 weights go with float16 K/V"),
    ("kv-dtype-unknown", _set(["target", "kv", "dtype"], "bfloat16"), "kv.dtype"),
    ("bias-dtype-not-kv-dtype", _set(["target", "inputs", 2, "dtype"], "float16"),
     "'attention_bias' is float16 but its K/V dtype is float32"),
    ("logits-float16", _set(["target", "outputs", 0, "dtype"], "float16"),
     "'logits' is float16, the runtime binds float32"),
    ("ids-float", _set(["target", "inputs", 0, "dtype"], "float32"), "binds int64"),
    ("fp16-mask-overflows", _fp16_mask(-1e9), "not finite in float16"),
    ("medusa-bias-without-kv", lambda d: d["drafters"]["medusa"]["graph"]["inputs"].append(
        {"name": "attention_bias", "dtype": "float16", "shape": [1, 1, "S", "P+S"]}),
     "has no K/V but declares \\['attention_bias'\\]"),
    ("eagle3-layers", _set(["drafters", "eagle3", "options", "feature_layers"], [0]),
     "reads target layers"),
    ("newer-format", _set(["format_version"], 99), "newer than this edgespec"),
    ("not-a-bundle", _set(["format"], "something-else"), "not an edgespec bundle"),
]


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_crafted_manifest_is_refused_before_any_session(crafted, case):
    bundle, outside = crafted
    _, edit, words = case

    def fn(d):
        edit(d)
        text = json.dumps(d).replace(OUT, str(outside))
        d.clear()
        d.update(json.loads(text))

    _manifest(bundle, fn)
    with pytest.raises(BundleError, match=words):
        Model(bundle)


def _symlink(rel, to):
    def fn(bundle, outside):
        (bundle / rel).unlink(missing_ok=True)
        (bundle / rel).symlink_to(outside / to)
    return fn


def _d2t(array, allow_pickle=False):
    def fn(bundle, outside):
        np.save(bundle / "mtp.d2t.npy", array, allow_pickle=allow_pickle)
    return fn


def _write(rel, data):
    def fn(bundle, outside):
        (bundle / rel).write_bytes(data)
    return fn


def _big_tokenizer(bundle, outside):
    save_tiny_tokenizer(bundle, vocab_size=5000)  # a tokenizer of another, larger model


def _small_tokenizer(bundle, outside):
    save_tiny_tokenizer(bundle, vocab_size=20)  # the model's 300 ids far past its 20


def _symlinked_folder(bundle, outside):
    (bundle / "sub").symlink_to(outside, target_is_directory=True)
    _manifest(bundle, _set(["target", "file"], "sub/target.onnx"))


def _nested(bundle, outside):
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)


def _huge(bundle, outside):
    with open(bundle / "manifest.json", "ab") as f:
        f.truncate(17 << 20)


def _symlink_loop(bundle, outside):
    (bundle / "loop").symlink_to(bundle / "loop")


def _raw_manifest(edit):
    """A manifest.json text edit (for what json.dumps cannot write)."""
    def fn(bundle, outside):
        path = bundle / "manifest.json"
        text = path.read_text()
        assert edit(text) != text, "the edit must change the manifest"
        path.write_text(edit(text))
    return fn


def _fewer_layers(bundle, outside):
    """model.num_layers one less than the graph's: the last layer's K/V inputs are unfed."""
    _manifest(bundle, lambda d: d["model"].update(num_layers=d["model"]["num_layers"] - 1))


def _giant_d2t_header(bundle, outside):
    """A .npy header claiming 2^40 ids: np.load would allocate 8 TiB before reading."""
    h = b"{'descr': '<i8', 'fortran_order': False, 'shape': (1099511627776,), }"
    h += b" " * (63 - (10 + len(h)) % 64) + b"\n"
    (bundle / "mtp.d2t.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little")
                                         + h + b"\0" * 64)


def _npz_d2t(bundle, outside):
    np.savez(bundle / "mtp.d2t.npz", a=np.arange(40))
    os.replace(bundle / "mtp.d2t.npz", bundle / "mtp.d2t.npy")


def _hard_link(bundle, outside):
    (bundle / "tokenizer.json").unlink()
    os.link(outside / "tokenizer.json", bundle / "tokenizer.json")


def _tokenizer_edit(fn):
    def craft(bundle, outside):
        path = bundle / "tokenizer.json"
        tok = json.loads(path.read_text())
        fn(tok)
        path.write_text(json.dumps(tok))
    return craft


def _pad_past_vocab(tok):
    tok["post_processor"] = {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                             "special_tokens": {"<x>": {"id": "<x>", "ids": [99999],
                                                        "tokens": ["<x>"]}}}


def _escape_architecture(bundle, outside):
    _manifest(bundle, _set(["model", "architecture"], "llama\x1b]0;PWNED\x07"))


FILE_CASES = [
    ("d2t-giant-header", _giant_d2t_header, "not a plain .npy array"),
    ("d2t-npz", _npz_d2t, "not a plain .npy array"),
    ("hard-link", _hard_link, "hard-linked file"),
    ("tokenizer-special-past-vocab", _tokenizer_edit(_pad_past_vocab), "vocabulary"),
    ("architecture-escape", _escape_architecture, "architecture"),
    ("path-lone-surrogate", lambda b, o: _manifest(b, _set(["target", "file"], "t\udcff.onnx")),
     "control characters or invalid Unicode"),
    ("path-control-chars", lambda b, o: _manifest(b, _set(["target", "file"], "t\x1b[2J.onnx")),
     "control characters"),
    ("tuning-unknown-drafter", _write("tuning.json", json.dumps({"format": 1, "devices": {
        "cpu": {"provider": "cpu", "drafters": {"ghost": {"gamma": 3}},
                "auto": {"drafter": "ghost", "speedup": 1.2}}}}).encode()),
     "names drafter 'ghost', which the bundle lacks"),
    ("tuning-medusa-tree-too-wide", _write("tuning.json", json.dumps({"format": 1, "devices": {
        "cpu": {"provider": "cpu", "drafters": {"medusa": {"tree": [[0], [500]]}}}}}).encode()),
     "does not fit"),
    ("tuning-infinite-speedup", _write("tuning.json", json.dumps({"format": 1, "devices": {
        "cpu": {"provider": "cpu", "drafters": {"mtp": {
            "gamma": 3, "measured_tok_s": 1e308, "measured_plain_tok_s": 1e-308}}}}}).encode()),
     "tuning.json"),
    ("symlink-manifest", _symlink("manifest.json", "manifest.json"), "symlink"),
    ("symlink-loop", _symlink_loop, "cannot be resolved"),
    ("file-name-5000", lambda b, o: _manifest(b, _set(["target", "file"], "a" * 5000)),
     "1 to 1024 characters"),
    ("int-5000-digits", _raw_manifest(lambda t: t.replace('"num_layers": 2',
                                                          '"num_layers": ' + "9" * 5000)),
     "not valid JSON"),
    ("d2t-on-ngram", lambda b, o: _manifest(b, _set(["drafters", "ngram", "d2t"],
                                                    "mtp.d2t.npy")), "no logits"),
    ("num-layers-below-graph", _fewer_layers, "does not feed"),
    ("tuning-not-json", _write("tuning.json", b"{oops"), "tuning.json is not valid JSON"),
    ("tuning-int-5000-digits", _write("tuning.json", b'{"format": ' + b"1" * 5000 + b"}"),
     "tuning.json is not valid JSON"),
    ("tuning-symlink", _symlink("tuning.json", "manifest.json"), "symlink"),
    ("symlink-graph", _symlink("target.onnx", "target.onnx"), "symlink"),
    ("symlink-tokenizer", _symlink("tokenizer.json", "tokenizer.json"), "symlink"),
    ("symlink-d2t", _symlink("mtp.d2t.npy", "mtp.d2t.npy"), "symlink"),
    ("symlink-folder", _symlinked_folder, "symlink|leaves the bundle"),
    ("symlink-weights", _symlink("target.onnx.data", "target.onnx"), "symlink"),
    ("pickle-d2t", _d2t(np.array([{"a": 1}] * 40, dtype=object), allow_pickle=True),
     "plain .npy"),
    ("d2t-out-of-vocab", _d2t(np.arange(40, dtype=np.int64) + 10**6), "target ids"),
    ("d2t-negative", _d2t(-np.arange(40, dtype=np.int64)), "target ids"),
    ("d2t-float", _d2t(np.arange(40, dtype=np.float64)), "int64"),
    ("d2t-wrong-length", _d2t(np.arange(7, dtype=np.int64)), "40"),
    ("d2t-duplicates", _d2t(np.zeros(40, np.int64)), "distinct"),
    ("d2t-not-npy", _write("mtp.d2t.npy", b"\x80\x04garbage"), "plain .npy"),
    ("tokenizer-of-other-model", _big_tokenizer, "does not belong"),
    ("tokenizer-of-smaller-model", _small_tokenizer, "has 20 tokens .*does not belong"),
    ("tokenizer-garbage", _write("tokenizer.json", b"{not json"), "not a tokenizer.json"),
    ("manifest-not-json", _write("manifest.json", b"\xff\xfe{"), "not valid JSON"),
    ("manifest-nested", _nested, "not valid JSON"),
    ("manifest-huge", _huge, "the manifest .* bytes, more than it can be"),
    ("missing-graph", lambda b, o: (b / "eagle3.onnx").unlink(), "missing 'eagle3.onnx'"),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_crafted_file_is_refused_before_any_session(crafted, case):
    bundle, outside = crafted
    _, craft, words = case
    craft(bundle, outside)
    with pytest.raises(BundleError, match=words):
        Model(bundle)


def test_errors_echo_at_most_a_short_excerpt_of_a_file(crafted):
    """A crafted value (or a secret file symlinked in) is never quoted at length."""
    bundle, _ = crafted
    _manifest(bundle, _set(["model", "num_layers"], "SECRET" * 200))
    with pytest.raises(BundleError) as e:
        Model(bundle)
    assert "SECRET" in str(e.value) and str(e.value).count("SECRET") < 10


def test_kv_buffers_larger_than_memory_are_refused(crafted, monkeypatch):
    import edgespec.runtime.bundle_checks as checks

    monkeypatch.setattr(checks, "physical_memory", lambda: 1024)  # a 1 kB machine
    with pytest.raises(BundleError, match="K/V buffers, more than this machine's"):
        Model(crafted[0])


def test_the_sentinel_detects_a_read(tmp_path):
    """The read detector itself works on this filesystem (else the suite above proves little)."""
    f = tmp_path / "sentinel"
    f.write_bytes(b"x")
    os.utime(f, (Y2000, time.time()))
    os.stat(f)
    assert os.stat(f).st_atime == Y2000  # a stat is not a read
    f.read_bytes()
    assert os.stat(f).st_atime != Y2000


def test_a_graph_that_differs_from_its_manifest_is_refused(trimmed_bundle, tmp_path):
    """Swapped graph files pass every check that needs no session, then fail the IO check
    against the loaded graph (one clear error, before the drafter is used)."""
    bundle = tmp_path / "b"
    shutil.copytree(trimmed_bundle, bundle)
    os.replace(bundle / "mtp.onnx", bundle / "tmp.onnx")
    os.replace(bundle / "eagle3.onnx", bundle / "mtp.onnx")
    os.replace(bundle / "tmp.onnx", bundle / "eagle3.onnx")
    model = Model(bundle)
    with pytest.raises(BundleError, match="mtp.onnx: input 'features' has shape"):
        model.drafter("mtp")
