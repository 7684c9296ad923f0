"""Property-based fuzzing of a bundle's files (issues 8 and 17): any one-value change,
deletion or type swap in manifest.json, tokenizer.json or tuning.json leaves a bundle that
loads and decodes, or raises one BundleError; never another exception. CI runs fixed
examples; EDGESPEC_FUZZ_EXAMPLES=N runs N random ones."""

import json
import os
import shutil

from edgespec.manifest import BundleError
from edgespec.runtime.model import Model


def _paths(node, prefix=()):
    """Every key path into the manifest (containers and leaves)."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


def _json_values():
    from hypothesis import strategies as st

    leaf = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
            | st.sampled_from([0, -1, 1, 2, 63, 64, 65, 10**9, 1 << 24])
            | st.floats(allow_nan=True) | st.text(max_size=8)
            | st.sampled_from(["../x", "/etc/passwd", "{i}", "{0}", "fused", "hidden"]))
    return st.recursive(leaf, lambda c: st.lists(c, max_size=3)
                        | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)


def _fuzz_settings(examples: int = 60):
    """CI: a fixed set of `examples`; EDGESPEC_FUZZ_EXAMPLES=N for a longer, random run."""
    from hypothesis import HealthCheck, settings

    longer = os.environ.get("EDGESPEC_FUZZ_EXAMPLES")
    return settings(max_examples=int(longer or examples), deadline=None, database=None,
                    derandomize=not longer, suppress_health_check=list(HealthCheck))


def _edit(original, path, delete, value):
    d = json.loads(json.dumps(original))
    parent = d
    for k in path[:-1]:
        parent = parent[k]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return d


def test_fuzzed_manifests_load_cleanly_or_raise_bundle_error(trimmed_bundle, tmp_path):
    """Any one-value change, deletion or type swap in manifest.json: the bundle loads, each
    drafter loads and decodes a few tokens, or one BundleError says why not; nothing else."""
    from hypothesis import given
    from hypothesis import strategies as st

    from edgespec.runtime.generator import GenerationParams, Generator

    bundle = tmp_path / "b"
    shutil.copytree(trimmed_bundle, bundle)
    original = json.loads((bundle / "manifest.json").read_text())
    paths = [p for p in _paths(original) if p]

    @_fuzz_settings(80)
    @given(path=st.sampled_from(paths), delete=st.booleans(), value=_json_values())
    def check(path, delete, value):
        d = _edit(original, path, delete, value)
        (bundle / "manifest.json").write_text(json.dumps(d))
        try:
            model = Model(bundle)
            for name in model.manifest.drafters:
                gen = Generator(model, GenerationParams(max_new_tokens=4, stop_on_eos=False),
                                model.drafter(name))
                gen.append_tokens([5, 9, 11])
                while not gen.is_done():
                    gen.step()
        except BundleError:
            pass

    check()


def test_fuzzed_tokenizers_load_and_encode_or_raise_bundle_error(trimmed_bundle, tmp_path):
    """Any one-value change, deletion or type swap in tokenizer.json (vocabulary entries
    sampled like every other path): it loads, encodes and decodes, or one BundleError."""
    from hypothesis import given
    from hypothesis import strategies as st

    from edgespec.manifest import load_manifest
    from edgespec.runtime.bundle_checks import load_tokenizer

    bundle = tmp_path / "b"
    shutil.copytree(trimmed_bundle, bundle)
    manifest = load_manifest(bundle)
    original = json.loads((bundle / "tokenizer.json").read_text())
    paths = [p for p in _paths(original) if p]

    @_fuzz_settings()
    @given(path=st.sampled_from(paths), delete=st.booleans(), value=_json_values(),
           text=st.text(max_size=40))
    def check(path, delete, value, text):
        (bundle / "tokenizer.json").write_text(json.dumps(_edit(original, path, delete, value)))
        try:
            tok = load_tokenizer(bundle, manifest)
            ids = tok.encode("def f(x):\n    return x\n" + text)
            assert all(0 <= i < manifest.model.vocab_size for i in ids)
            tok.decode(ids)
        except BundleError:
            pass

    check()


def test_fuzzed_tuning_files_load_and_decode_or_raise_bundle_error(trimmed_bundle, tmp_path):
    """Any one-value change, deletion or type swap in a valid tuning.json: the bundle's tuned
    and auto drafters load and decode, or one BundleError."""
    from hypothesis import given
    from hypothesis import strategies as st

    from edgespec.runtime.generator import GenerationParams, Generator
    from edgespec.runtime.tuning import check_tuning_fits, load_tuning

    bundle = tmp_path / "b"
    shutil.copytree(trimmed_bundle, bundle)
    original = {"format": 1, "devices": {"cpu": {"provider": "cpu", "drafters": {
        "mtp": {"gamma": 3, "measured_tok_s": 10.0, "measured_plain_tok_s": 8.0},
        "eagle3": {"gamma": 3, "tree_width": 2, "tree_size": 5},
        "ngram": {"gamma": 4, "min_n": 2},
        "medusa": {"tree": [[0], [1], [0, 0]]}},
        "auto": {"drafter": "mtp", "speedup": 1.25}}}}
    paths = [p for p in _paths(original) if p]
    model = Model(bundle)

    @_fuzz_settings()
    @given(path=st.sampled_from(paths), delete=st.booleans(), value=_json_values())
    def check(path, delete, value):
        (bundle / "tuning.json").write_text(json.dumps(_edit(original, path, delete, value)))
        try:
            model.tuning = load_tuning(bundle)
            check_tuning_fits(model.tuning, model.manifest)
        except BundleError:
            return
        for name in ("auto", *model.manifest.drafters):
            gen = Generator(model, GenerationParams(max_new_tokens=4, stop_on_eos=False),
                            model.drafter(name))
            gen.append_tokens([5, 9, 11])
            while not gen.is_done():
                gen.step()

    check()
