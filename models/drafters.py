"""Trained drafters as torch modules (modules only; training lives in export/train/trainer.py).

- `MedusaHeads` (Medusa-1): K heads on the target's final-normed hidden state h_t; head k
  (k = 0..K-1) is a stack of residual SiLU blocks then an LM head and predicts token t+2+k.
- `LayerDrafter`: one decoder layer with its own KV cache, run recursively as a chain or a
  tree. Row j reads (h_{j-1}, x_j) and predicts x_{j+1}: h is a target feature (the final-normed
  hidden for `mtp`, Mellum 2 / DeepSeek-V3 style; the low/mid/high decoder-layer outputs through
  `fc` for `eagle3`) or, deeper in a draft, the drafter's own output hidden of the row before.

Both share the target's LM head (and the layer drafter its embedding) frozen unless `own_head`:
a drafter folder then holds only the few weights that were trained. `LowRankHead` is SlimSpec's
d -> r -> V head (fitted by export/train/low_rank.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgespec.drafter_kinds import trainable

from .args import ModelArgs
from .rope import rope_cos_sin
from .llama import Block, RMSNorm
from .moe import SparseMoE

DRAFTER_FILE = "drafter.json"
WEIGHTS_FILE = "model.safetensors"
KINDS = trainable()  # edgespec/drafter_kinds.py


@dataclass(frozen=True)
class DrafterConfig:
    kind: str  # medusa | mtp | eagle3 | block
    dim: int  # the target's hidden size
    vocab_size: int
    feature_dim: int  # width of the target output it reads (d, or len(feature_layers) * d)
    num_heads: int = 4  # medusa, block: tokens drafted per step (a block's size)
    num_blocks: int = 1  # medusa: residual blocks per head
    feature_layers: tuple[int, ...] = ()  # eagle3: target decoder layers in its features
    own_head: bool = False  # train an own LM head (else the target's, frozen and shared)
    target_fingerprint: str = ""  # weights_fingerprint of the target it was trained on
    options: dict = field(default_factory=dict)  # runtime defaults: tree, gamma, top_k ...

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"drafter kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def save(self, folder: Path) -> None:
        (Path(folder) / DRAFTER_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def load(folder: str | Path) -> DrafterConfig:
        path = Path(folder) / DRAFTER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a trained drafter folder (no "
                                    f"{DRAFTER_FILE}); make one with `edgespec train KIND HF_DIR "
                                    "-o FOLDER`")
        d = json.loads(path.read_text())
        d["feature_layers"] = tuple(d.get("feature_layers", ()))
        return DrafterConfig(**d)


class ResBlock(nn.Module):
    """x + SiLU(W x + b), W zero-initialised: a new head starts as the target's own head."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x):
        return x + nn.functional.silu(self.linear(x))


class MedusaHeads(nn.Module):
    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        self.cfg = cfg
        self.heads = nn.ModuleList(
            nn.Sequential(*[ResBlock(cfg.dim) for _ in range(cfg.num_blocks)])
            for _ in range(cfg.num_heads))
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, hidden):
        # hidden: [..., d] -> logits [..., K, V]; head k predicts the token k+2 ahead of hidden's
        return self.lm_head(torch.stack([h(hidden) for h in self.heads], dim=-2))


class LayerDrafter(nn.Module):
    def __init__(self, cfg: DrafterConfig, a: ModelArgs, max_len: int | None = None):
        super().__init__()
        self.cfg, self.args = cfg, a
        self.fc = (nn.Linear(cfg.feature_dim, cfg.dim, bias=False)
                   if cfg.feature_dim != cfg.dim else None)
        self.hnorm = RMSNorm(cfg.dim, a.norm_eps, a.norm_offset)
        self.enorm = RMSNorm(cfg.dim, a.norm_eps, a.norm_offset)
        self.in_proj = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)
        self.layer = Block(a)
        self.norm = RMSNorm(cfg.dim, a.norm_eps, a.norm_offset)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_cos_sin(a, max_len or a.max_position_embeddings)
        self.register_buffer("rope_cos", torch.from_numpy(cos), persistent=False)  # [L, D]
        self.register_buffer("rope_sin", torch.from_numpy(sin), persistent=False)

    def forward(self, input_ids, features, hidden_in, position_ids, bias, past):
        """input_ids, position_ids: [B, S]; features: [B, S, F] target features of the rows
        before (zeros where a row reads its own hidden); hidden_in: [B, S, d] the drafter's own
        hidden of the row before (zeros where a row reads a target feature); bias: [B, 1, S,
        P+S]; past: (k, v) each [B, Hkv, P, D]. Returns logits [B, S, V], hidden [B, S, d]
        (final-normed: what the next row reads back), new (k, v) [B, Hkv, S, D]."""
        h = (features if self.fc is None else self.fc(features)) + hidden_in
        x = self.in_proj(torch.cat([self.hnorm(h), self.enorm(self.embed(input_ids))], -1))
        dtype = x.dtype
        cos = self.rope_cos[position_ids].unsqueeze(1).to(dtype)
        sin = self.rope_sin[position_ids].unsqueeze(1).to(dtype)
        x, k, v = self.layer(x, cos, sin, bias, *past)
        hidden = self.norm(x)
        return self.lm_head(hidden), hidden, (k, v)

    def embed(self, input_ids):
        return self.embed_tokens(input_ids)

    def embedding_table(self) -> torch.Tensor:
        """[rows, d]: what the drafter graph's Gather reads."""
        return self.embed_tokens.weight


class BlockDrafter(LayerDrafter):
    """A parallel block drafter (DFlash / DSpark style) on EAGLE-3's layer: a block is the
    newest context row (h_{t-1}, x_t), which predicts x_{t+1} as EAGLE-3's first step does, and
    B-1 mask rows at positions t+1..t+B-1 that predict x_{t+2}..x_{t+B} in the same forward.
    Mask row i reads no feature (h = 0) and token id V + i - 1, a trained embedding of its
    offset; it attends to the cached context and to the rows of its block up to itself (causal:
    mask rows carry no token, so later ones would add no information), so a whole proposal is
    one causal run of the same graph as EAGLE-3's, over [V + B - 1] embedding rows."""

    def __init__(self, cfg: DrafterConfig, a: ModelArgs, max_len: int | None = None):
        super().__init__(cfg, a, max_len)
        if cfg.num_heads < 2:
            raise ValueError(f"a block drafter drafts >= 2 tokens a block, got {cfg.num_heads}")
        self.mask_embed = nn.Parameter(torch.randn(cfg.num_heads - 1, cfg.dim) * 0.02)

    def embed(self, input_ids):
        return nn.functional.embedding(input_ids, self.embedding_table())

    def embedding_table(self) -> torch.Tensor:
        return torch.cat([self.embed_tokens.weight, self.mask_embed.to(
            self.embed_tokens.weight.dtype)], 0)


# the torch module of each trainable kind (edgespec/drafter_kinds.py)
NETWORKS = {"medusa": MedusaHeads, "mtp": LayerDrafter, "eagle3": LayerDrafter,
            "block": BlockDrafter}


class LowRankHead(nn.Module):
    """x -> B(A(x)): A [r, d], B [K, r] over the kept columns `d2t` (all V when None). Its
    output spans all V columns, -inf outside the kept ones, so it drops in for the full head."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, vocab: int,
                 d2t: torch.Tensor | None = None):
        super().__init__()
        self.a = nn.Linear(a.shape[1], a.shape[0], bias=False)
        self.b = nn.Linear(b.shape[1], b.shape[0], bias=False)
        with torch.no_grad():
            self.a.weight.copy_(a)
            self.b.weight.copy_(b)
        self.vocab = vocab
        self.register_buffer("d2t", d2t, persistent=False)

    @property
    def rank(self) -> int:
        return self.a.weight.shape[0]

    def forward(self, x):
        y = self.b(self.a(x))
        if self.d2t is None:
            return y
        full = y.new_full((*y.shape[:-1], self.vocab), float("-inf"))
        full[..., self.d2t] = y
        return full


def build_drafter(cfg: DrafterConfig, target) -> nn.Module:
    """A drafter for `target` (models.llama.Transformer) with the target's shared weights copied
    in (LM head; embedding for layer drafters) and frozen unless cfg.own_head."""
    a: ModelArgs = target.args
    if cfg.dim != a.dim or cfg.vocab_size != a.vocab_size:
        raise ValueError(f"drafter dims (d={cfg.dim}, vocab {cfg.vocab_size}) differ from the "
                         f"target's (d={a.dim}, vocab {a.vocab_size}): it was trained for another "
                         "target; train one for this target with `edgespec train`")
    net = NETWORKS[cfg.kind]
    m = net(cfg) if net is MedusaHeads else net(cfg, a, target.rope_cos.shape[0])
    with torch.no_grad():
        m.lm_head.weight.copy_(target.lm_head.weight)
        if isinstance(m, LayerDrafter):
            m.embed_tokens.weight.copy_(target.embed_tokens.weight)
            if isinstance(m, BlockDrafter):  # mask rows start near an average token
                m.mask_embed.add_(target.embed_tokens.weight.mean(0))
            m.embed_tokens.weight.requires_grad_(False)
            # the target's last decoder layer is a better start than random weights; the
            # drafter's block is dense, so an MoE target lends its attention and norms only
            last = target.layers[-1]
            moe = isinstance(last.mlp, SparseMoE)
            m.layer.load_state_dict({k: v for k, v in last.state_dict().items()
                                     if not (moe and k.startswith("mlp."))}, strict=not moe)
    m.lm_head.weight.requires_grad_(cfg.own_head)
    return m


def trained_state(m: nn.Module) -> dict[str, torch.Tensor]:
    """The weights a drafter folder stores: trained ones only (shared target weights are not)."""
    shared = {"embed_tokens.weight"} | ({"lm_head.weight"} if not m.cfg.own_head else set())
    return {k: v.detach().contiguous() for k, v in m.state_dict().items() if k not in shared}


def save_drafter(m: nn.Module, folder: str | Path) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(trained_state(m), str(folder / WEIGHTS_FILE))
    m.cfg.save(folder)


# (from kind, to kind): the weights the second has and the first lacks
WARM_STARTS = {("eagle3", "block"): {"mask_embed"}}


def warm_start(m: nn.Module, folder: str | Path) -> DrafterConfig:
    """Copy a drafter folder's trained weights into `m` (same kind and shapes): a drafter
    trained for a sibling target (a smaller or depth up-scaled member of the same family, which
    shares its tokenizer and width) is a far better start than the default initialisation."""
    from safetensors.torch import load_file

    cfg = DrafterConfig.load(folder)
    if cfg.kind != m.cfg.kind and (cfg.kind, m.cfg.kind) not in WARM_STARTS:
        raise ValueError(f"--init {folder} is a {cfg.kind} drafter; this one is {m.cfg.kind}")
    state = load_file(str(Path(folder) / WEIGHTS_FILE))
    own = trained_state(m)
    if cfg.kind != m.cfg.kind:  # what the start has not got keeps its initialisation
        own = {k: v for k, v in own.items() if k not in WARM_STARTS[cfg.kind, m.cfg.kind]}
    wrong = sorted(k for k in set(state) | set(own)
                   if k not in state or k not in own or state[k].shape != own[k].shape)
    if wrong:
        raise ValueError(f"--init {folder} does not fit this drafter (differs in {wrong[:4]}): "
                         "give a drafter of the same kind, width, heads and feature count")
    m.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    return cfg


def load_drafter(folder: str | Path, target, fingerprint: str = "") -> nn.Module:
    """A trained drafter folder -> module bound to `target` (whose weights_fingerprint is
    `fingerprint`); refuses a drafter trained for another target."""
    from safetensors.torch import load_file

    cfg = DrafterConfig.load(folder)
    if fingerprint and cfg.target_fingerprint and cfg.target_fingerprint != fingerprint:
        raise ValueError(f"drafter {folder} was trained for another target (fingerprint "
                         f"{cfg.target_fingerprint[:12]}..., this one {fingerprint[:12]}...); "
                         "train one for this target with `edgespec train`")
    m = build_drafter(cfg, target)
    state = load_file(str(Path(folder) / WEIGHTS_FILE))
    expected = set(trained_state(m))
    if set(state) != expected:
        raise ValueError(f"{folder}/{WEIGHTS_FILE} holds {sorted(set(state) ^ expected)[:4]} "
                         f"that a {cfg.kind} drafter does not expect; re-train it")
    m.load_state_dict(state, strict=False)
    return m.eval()
