"""Every drafter kind on the newer families (issue 20): drafters trained briefly on tiny Gemma
and Phi-3 checkpoints, exported with a draft model, decode exactly what plain greedy decoding
does (the families' parity with transformers: tests/test_models.py, tests/test_runtime.py)."""

import numpy as np
import pytest
from conftest import DRAFTER_KINDS, run_to_end, train_tiny_drafters

from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gemma", "phi3", "gemma2"])
def test_every_drafter_kind_is_lossless_on_the_family(family, tiny_dirs, tiny_bundles,
                                                      tmp_path):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    hf = tiny_dirs[family]
    trained = train_tiny_drafters(hf, tiny_bundles[family][1], tmp_path / "drafters", steps=10)
    export_bundle(hf, tmp_path / "b", ExportOptions(
        max_len=64, progress=False, draft_model=tiny_dirs["llama"],
        drafters=tuple((k, trained[k][1]) for k in DRAFTER_KINDS)))
    model = Model(tmp_path / "b")
    assert model.manifest.model.architecture == family
    params = GenerationParams(max_new_tokens=20, stop_on_eos=False)
    rng = np.random.default_rng(2)
    for prompt in ([5, 9, 11, 5, 9, 11, 5], *(rng.integers(3, 300, 6).tolist()
                                              for _ in range(2))):
        plain = run_to_end(model, params, prompt).tokens
        for name in ("ngram", "draft_model", *DRAFTER_KINDS):
            for width in (1, 3) if name in ("draft_model", "eagle3") else (None,):
                got = run_to_end(model, params, prompt, model.drafter(name, width=width))
                assert got.tokens == plain, (family, name, width)


def test_a_window_on_some_layers_only_needs_a_context_that_fits_it(tiny_dirs, tmp_path):
    """Gemma-2's sliding window applies to half its layers; bundles carry one mask, so an
    export is refused unless its K/V length fits the window (which then never applies)."""
    import json
    import shutil

    from edgespec.export.pipeline import ExportOptions, export_bundle

    hf = tmp_path / "hf"
    shutil.copytree(tiny_dirs["gemma2"], hf)
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "sliding_window": 16}))
    with pytest.raises(ValueError, match="export with --max-len 16 or less"):
        export_bundle(hf, tmp_path / "b", ExportOptions(max_len=32, progress=False))
    export_bundle(hf, tmp_path / "b", ExportOptions(max_len=16, progress=False))
