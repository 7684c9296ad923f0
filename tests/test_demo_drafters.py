"""The drafters shipped beside the demo target (demo/drafters/): `export --demo` carries them,
they reproduce greedy decoding exactly and they are trained (tau well above 1)."""

import pytest
from conftest import run_to_end

from edgespec.export.pipeline import demo_drafters
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model

SHIPPED = ("medusa", "mtp", "eagle3")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_drafter_is_lossless_and_trained(demo_bundle, prompts, name):
    assert {n for n, _ in demo_drafters()} >= set(SHIPPED)
    model = Model(demo_bundle)
    assert model.manifest.drafters[name].kind == name  # demo_bundle (conftest) carries it
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
