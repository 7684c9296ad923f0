"""One decoder loop for every graph with decoder layers: the target and the layer drafters'
single block, over either backend (export/target_graph.PlainEmitter: standard ops;
export/fused_graph.FusedEmitter: onnxruntime's contrib ops). The loop says how a layer is
wired; a backend says how a norm, an attention and an MLP become ops.

A backend has norm(x, weight, prefix), add_norm(resid, delta, weight, prefix) ->
(norm(resid + delta), resid + delta) (the fused one adds inside SkipSimplifiedLayerNorm, so
each residual add waits for the next norm), attention(x, attn, i, layer) for layer i's K/V,
and mlp(x, mlp, layer): the Backend base below gives both the same dense MLP over their own
project(x, linear, name) and moe(x, moe, prefix).
"""

from __future__ import annotations

from edgespec.models.moe import SparseMoE

from .graph_ops import emit_activation


class Backend:
    """What both backends share: a layer's MLP, dense (SwiGLU / GeGLU over `project`) or a
    mixture of experts (`moe`, which each backend emits its own way)."""

    def project(self, x: str, lin, name: str) -> str:  # one torch nn.Linear as ops
        raise NotImplementedError

    def moe(self, x: str, moe, prefix: str) -> str:
        raise NotImplementedError

    def mlp(self, x: str, mlp, layer: str) -> str:
        if isinstance(mlp, SparseMoE):
            return self.moe(x, mlp, f"{layer}.mlp")
        return self.swiglu(x, mlp, f"{layer}.mlp")

    def swiglu(self, x: str, mlp, p: str) -> str:
        gate = self.project(x, mlp.gate_proj, f"{p}.gate_proj")
        up = self.project(x, mlp.up_proj, f"{p}.up_proj")
        act = self.b.op("Mul", emit_activation(self.b, gate, self.a), up)
        return self.project(act, mlp.down_proj, f"{p}.down_proj")


def emit_decoder(e, layers, h: str, final_norm, feature_layers=(),
                 prefix: str = "layers.{i}") -> tuple[str, list[str]]:
    """The final-normed hidden of `h` [1, S, d] through pre-norm residual `layers`, and the
    outputs of the layers listed in feature_layers (each after its residual adds)."""
    sandwich = e.a.sandwich_norms  # Gemma-2: the attention's and the MLP's outputs normed too
    resid, delta, feats = h, None, []
    for i, layer in enumerate(layers):
        p = prefix.format(i=i)
        x, resid = e.add_norm(resid, delta, layer.input_layernorm.weight, f"{p}.input_layernorm")
        if i - 1 in feature_layers:  # resid now holds layer i - 1's output
            feats.append(resid)
        attn = e.attention(x, layer.self_attn, i, p)
        if sandwich:
            attn = e.norm(attn, layer.post_attention_layernorm.weight,
                          f"{p}.post_attention_layernorm")
            pre_mlp, name = layer.pre_feedforward_layernorm, f"{p}.pre_feedforward_layernorm"
        else:
            pre_mlp, name = layer.post_attention_layernorm, f"{p}.post_attention_layernorm"
        x, resid = e.add_norm(resid, attn, pre_mlp.weight, name)
        delta = e.mlp(x, layer.mlp, p)
        if sandwich:
            delta = e.norm(delta, layer.post_feedforward_layernorm.weight,
                           f"{p}.post_feedforward_layernorm")
    hidden, resid = e.add_norm(resid, delta, final_norm, "norm")
    if len(layers) - 1 in feature_layers:
        feats.append(resid)
    return hidden, feats
