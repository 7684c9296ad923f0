"""One decoder loop for every graph with decoder layers: the target and the layer drafters'
single block, over either backend (export/target_graph.PlainEmitter: standard ops;
export/fused_graph.FusedEmitter: onnxruntime's contrib ops). The loop says how a layer is
wired; a backend says how a norm, an attention and an MLP become ops.

A backend has norm(x, weight, prefix), add_norm(resid, delta, weight, prefix) ->
(norm(resid + delta), resid + delta) (the fused one adds inside SkipSimplifiedLayerNorm, so
each residual add waits for the next norm), attention(x, attn, i, layer) for layer i's K/V,
and mlp(x, mlp, layer).
"""

from __future__ import annotations


def emit_decoder(e, layers, h: str, final_norm, feature_layers=(),
                 prefix: str = "layers.{i}") -> tuple[str, list[str]]:
    """The final-normed hidden of `h` [1, S, d] through pre-norm residual `layers`, and the
    outputs of the layers listed in feature_layers (each after its residual adds)."""
    resid, delta, feats = h, None, []
    for i, layer in enumerate(layers):
        p = prefix.format(i=i)
        x, resid = e.add_norm(resid, delta, layer.input_layernorm.weight, f"{p}.input_layernorm")
        if i - 1 in feature_layers:  # resid now holds layer i - 1's output
            feats.append(resid)
        x, resid = e.add_norm(resid, e.attention(x, layer.self_attn, i, p),
                              layer.post_attention_layernorm.weight,
                              f"{p}.post_attention_layernorm")
        delta = e.mlp(x, layer.mlp, p)
    hidden, resid = e.add_norm(resid, delta, final_norm, "norm")
    if len(layers) - 1 in feature_layers:
        feats.append(resid)
    return hidden, feats
