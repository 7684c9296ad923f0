"""Self-distillation data: the target's own continuations, deterministic, pickle-free."""

from pathlib import Path

import numpy as np

from edgespec.export.train.distill import generate_data, load_data, prompts_from_sources, save_data
from edgespec.runtime.generator import GenerationParams, Generator
from edgespec.runtime.model import Model


def test_distill_data_round_trip_and_determinism(ref_bundle, tmp_path):
    model = Model(ref_bundle)
    src = sorted(Path(np.__file__).parent.glob("*.py"))[:5]
    prompts = prompts_from_sources(src, 4, 32, model.tokenizer, seed=1)
    assert prompts == prompts_from_sources(src, 4, 32, model.tokenizer, seed=1)
    assert all(len(p) == 32 for p in prompts)
    data = generate_data(model, prompts, max_new_tokens=12, seed=3, temperature=0.8)
    again = generate_data(model, prompts, max_new_tokens=12, seed=3, temperature=0.8)
    np.testing.assert_array_equal(data.tokens, again.tokens)
    save_data(data, tmp_path / "d.safetensors")
    back = load_data(tmp_path / "d.safetensors")
    np.testing.assert_array_equal(back.tokens, data.tokens)
    assert len(back) == 4 and back.meta["fingerprint"] == model.manifest.model.fingerprint
    for i, ids in enumerate(prompts):
        assert back.sequence(i)[:32].tolist() == ids  # the prompt, then the continuation
    greedy = generate_data(model, prompts[:1], max_new_tokens=12)
    gen = Generator(model, GenerationParams(max_new_tokens=12))
    gen.append_tokens(prompts[0])
    while not gen.is_done():
        gen.step()
    assert greedy.sequence(0).tolist() == list(gen.tokens)
