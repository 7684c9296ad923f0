"""Drafters trained over a trimmed vocabulary (`edgespec train --train-vocab K`) and chat
requests as self-distillation prompts: what real models with large vocabularies need."""

import json

import numpy as np
import pytest
import torch
from conftest import run_to_end
from test_server import TEMPLATE, with_template

from edgespec.export.pipeline import ExportOptions, export_bundle
from edgespec.export.train.distill import generate_data, read_jsonl_prompts
from edgespec.models.drafters import DrafterConfig
from edgespec.export.train.trainer import TrainConfig, soft_ce, train_drafter
from edgespec.export.train.vocab_trim import token_counts, trim_ids
from edgespec.models.weights import load_transformer, weights_fingerprint
from edgespec.runtime.generator import GenerationParams
from edgespec.runtime.model import Model

K = 40


@pytest.fixture(scope="module")
def trimmed_training(tiny_dirs, tiny_bundles, tmp_path_factory):
    """eagle3 and medusa trained over the K most generated tokens, then exported trimmed to K."""
    hf = tiny_dirs["llama"]
    model = Model(tiny_bundles["llama"][1])
    rng = np.random.default_rng(3)
    data = generate_data(model, [rng.integers(3, 300, 8).tolist() for _ in range(16)], 24)
    target = load_transformer(hf)
    a, fp = target.args, weights_fingerprint(hf)
    root = tmp_path_factory.mktemp("tv")
    reports, drafters = {}, []
    for kind in ("eagle3", "medusa"):
        layers = tuple(model.manifest.target.feature_layers) if kind == "eagle3" else ()
        cfg = DrafterConfig(kind=kind, dim=a.dim, vocab_size=a.vocab_size,
                            feature_dim=a.dim * max(len(layers), 1), feature_layers=layers,
                            target_fingerprint=fp)
        reports[kind] = train_drafter(cfg, target, data, root / kind, TrainConfig(
            steps=40, batch=4, lr=5e-3, progress=False, train_vocab=K))
        drafters.append((kind, root / kind))
    bundle = root / "bundle"
    export_bundle(hf, bundle, ExportOptions(max_len=64, progress=False, trim_vocab=K,
                                            drafters=tuple(drafters)))
    return data, reports, bundle


def test_training_over_k_tokens_reports_them_and_exports_the_same_k(trimmed_training, tiny_dirs):
    data, reports, bundle = trimmed_training
    counts = token_counts(data, load_transformer(tiny_dirs["llama"]).args.vocab_size)
    keep = trim_ids(counts, K)
    for kind, r in reports.items():
        assert r["train_vocab"] == K and 0 < r["train_vocab_coverage"] <= 1
        assert r["loss_last"] < r["loss_first"]
    # export picks the very tokens training used (eagle3 keeps a d2t file; medusa folds it in)
    assert np.array_equal(np.load(bundle / "eagle3.d2t.npy"), keep)


@pytest.mark.parametrize("name,width", [("eagle3", 1), ("eagle3", 3), ("medusa", None)])
def test_a_drafter_trained_over_k_tokens_is_lossless(trimmed_training, name, width):
    model = Model(trimmed_training[2])
    params = GenerationParams(max_new_tokens=24, stop_on_eos=False)
    for prompt in ([5, 9, 11], [7, 299, 2]):
        ref = run_to_end(model, params, prompt)
        assert run_to_end(model, params, prompt, model.drafter(name, tree_width=width)).tokens == \
            ref.tokens


def test_labels_outside_the_kept_tokens_weigh_nothing():
    logits = torch.randn(2, 3, 5)
    ids = torch.tensor([[[1, -1]] * 3] * 2)
    p = torch.tensor([[[0.6, 0.4]] * 3] * 2)
    valid = torch.ones(2, 3)
    only = soft_ce(logits, ids[..., :1], p[..., :1], valid)
    assert torch.allclose(soft_ce(logits, ids, p, valid), only)


def test_own_head_and_a_trimmed_training_vocab_are_refused(tiny_dirs, tiny_bundles, tmp_path):
    hf = tiny_dirs["llama"]
    target = load_transformer(hf)
    data = generate_data(Model(tiny_bundles["llama"][1]), [[5, 9, 11]] * 2, 8)
    cfg = DrafterConfig(kind="mtp", dim=target.args.dim, vocab_size=target.args.vocab_size,
                        feature_dim=target.args.dim, own_head=True)
    with pytest.raises(ValueError, match="own-head"):
        train_drafter(cfg, target, data, tmp_path / "d", TrainConfig(steps=2, train_vocab=K,
                                                                     progress=False))


def test_distill_prompts_may_be_chat_messages(trimmed_bundle, tmp_path):
    bundle = with_template(trimmed_bundle, tmp_path / "chat", TEMPLATE)
    model = Model(bundle)
    rows = [{"messages": [{"role": "user", "content": "7 8"}]}, {"prompt": "t5 t6"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = read_jsonl_prompts(path, model)
    assert ids == [model.chat_prompt(rows[0]["messages"]), model.tokenizer.encode("t5 t6")]
    path.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ValueError, match="p.jsonl:1"):
        read_jsonl_prompts(path, model)


def test_concat_data_keeps_every_sequence():
    from edgespec.export.train.distill import DistillData, concat_data

    def data(seqs, fp="f"):
        offsets = np.cumsum([0] + [len(s) for s in seqs])
        return DistillData(np.concatenate(seqs).astype(np.int32), offsets.astype(np.int64),
                           np.ones(len(seqs), np.int64), {"fingerprint": fp})

    a, b = data([np.arange(3), np.arange(5)]), data([np.arange(2) + 7])
    c = concat_data([a, b])
    assert len(c) == 3 and [c.sequence(i).tolist() for i in range(3)] == \
        [[0, 1, 2], [0, 1, 2, 3, 4], [7, 8]]
    with pytest.raises(ValueError, match="same target"):
        concat_data([a, data([np.arange(2)], fp="g")])
