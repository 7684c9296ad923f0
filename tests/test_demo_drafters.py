"""The drafters shipped beside the demo target (demo/drafters/): `export --demo` carries them,
they reproduce greedy decoding exactly and they are trained (tau well above 1)."""

import pytest
from conftest import run_to_end

from edgespec.export.pipeline import ExportOptions, demo_checkpoint, demo_drafters, export_bundle
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model

SHIPPED = ("medusa", "mtp", "eagle3")


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    assert {name for name, _ in demo_drafters()} >= set(SHIPPED)
    out = tmp_path_factory.mktemp("demo") / "bundle"
    export_bundle(demo_checkpoint(), out, ExportOptions(max_len=512, progress=False,
                                                        drafters=demo_drafters()))
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_drafter_is_lossless_and_trained(demo_bundle, prompts, name):
    model = Model(demo_bundle)
    params = GenerationParams(max_new_tokens=64)
    drafter = model.drafter(name)
    tokens = forwards = 0
    for row in prompts[:4]:
        ids = model.tokenizer.encode(row["prompt"])
        gen = run_to_end(model, params, ids, drafter)
        assert gen.tokens == run_to_end(model, params, ids).tokens
        tokens += len(gen.new_tokens)
        forwards += gen.stats.target_forwards
    assert tokens / forwards > 1.5  # an untrained drafter stays near 1.0
