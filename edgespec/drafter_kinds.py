"""Drafter kinds: what each one is, in the one table that the manifest, the graph contract,
the runtime, training, tuning, projections and the CLI read. Stdlib only.

Adding a kind is an entry here plus its runtime module (a `Drafter` subclass with a
`from_bundle` constructor, runtime/drafter_base.py); a kind with a network also gets its
export module (export/drafter_export.py builds the graph) and its models module (the torch
definition `edgespec train` fits).
"""

from __future__ import annotations

from dataclasses import dataclass

# what a drafter graph's decode step takes besides K/V and attention_bias / seqlens_k
STEP_INPUTS = ("input_ids", "position_ids", "logits_index")


@dataclass(frozen=True)
class DrafterKind:
    name: str
    runtime: str  # "module:Class" of its runtime Drafter, imported when a bundle uses the kind
    graph: bool = False  # the bundle carries its ONNX graph
    model: bool = False  # ...and the dims of the decoder behind it (its own K/V cache)
    inputs: tuple[str, ...] = ()  # the inputs its graph must declare (K/V names aside)
    outputs: tuple[str, ...] = ()  # the outputs its graph must declare
    reads: str | None = None  # the target output its graph takes: "hidden" or "features"
    vocab_logits: bool = False  # logits over the (trimmable) vocabulary: a d2t map applies
    trainable: bool = False  # `edgespec train KIND` fits it to a target by self-distillation
    tune: str = "chain"  # what `edgespec tune` searches: "chain" lengths, "tree" sizes, "ngram"
    options: tuple[str, ...] = ("gamma",)  # the manifest options it reads (drafter_options)


_LOGITS_OUT = ("logits", "hidden")
_LAYER_IN = (*STEP_INPUTS, "features", "hidden_in")
_DECODER_OPTIONS = ("gamma", "tree_width", "tree_size", "trim_vocab", "head_rank")

KINDS: dict[str, DrafterKind] = {
    "ngram": DrafterKind("ngram", "edgespec.runtime.drafters:NgramDrafter", tune="ngram",
                         options=("gamma", "max_n", "min_n")),
    "draft_model": DrafterKind("draft_model", "edgespec.runtime.drafters:DraftModelDrafter",
                               graph=True, model=True, inputs=STEP_INPUTS, outputs=_LOGITS_OUT,
                               vocab_logits=True, options=_DECODER_OPTIONS),
    "medusa": DrafterKind("medusa", "edgespec.runtime.head_drafters:MedusaDrafter", graph=True,
                          inputs=("hidden",), outputs=("topk_ids",), reads="hidden",
                          trainable=True, tune="tree",
                          options=("top_k", "tree", "trim_vocab", "head_rank")),
    "mtp": DrafterKind("mtp", "edgespec.runtime.head_drafters:LayerDrafter", graph=True,
                       model=True, inputs=_LAYER_IN, outputs=_LOGITS_OUT, reads="hidden",
                       vocab_logits=True, trainable=True, options=_DECODER_OPTIONS),
    "eagle3": DrafterKind("eagle3", "edgespec.runtime.head_drafters:LayerDrafter", graph=True,
                          model=True, inputs=_LAYER_IN, outputs=_LOGITS_OUT, reads="features",
                          vocab_logits=True, trainable=True, tune="tree",
                          options=(*_DECODER_OPTIONS, "feature_layers")),
    # EAGLE-3's graph, drafting a whole block in one run (models/drafters.py BlockDrafter)
    "block": DrafterKind("block", "edgespec.runtime.head_drafters:BlockDrafter", graph=True,
                         model=True, inputs=_LAYER_IN, outputs=_LOGITS_OUT, reads="features",
                         vocab_logits=True, trainable=True,
                         options=("gamma", "block_size", "trim_vocab", "head_rank",
                                  "feature_layers")),
}


def kind(name: str) -> DrafterKind:
    """The table entry of a kind the caller has checked (manifest.py refuses unknown ones)."""
    return KINDS[name]


def trainable() -> tuple[str, ...]:
    """The kinds `edgespec train` fits (models/drafters.py has their torch definitions)."""
    return tuple(k for k, v in KINDS.items() if v.trainable)


def chain_kinds() -> tuple[str, ...]:
    """Kinds that draft a chain of gamma tokens (the tuner's chain search, the projections)."""
    return tuple(k for k, v in KINDS.items() if v.tune in ("chain", "ngram") or v.model)
