"""Checks of a bundle's side files and of the memory it asks for, run before any session.

load_manifest (edgespec/manifest.py) already refused bad paths, types and shapes; these read the
few small files the manifest names besides the graphs (the tokenizer, VocabTrim maps), so that a
crafted bundle is refused with one clear error before onnxruntime opens anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgespec.bundle_paths import bundle_file
from edgespec.errors import excerpt
from edgespec.graph_contract import check_session_io
from edgespec.manifest import BundleError, DrafterSpec, GraphSpec, Manifest, ModelInfo

from .mbsu import kv_itemsize
from .providers import SessionConfig, create_session
from .text import Tokenizer


MAX_TOKENIZER_BYTES = 64 << 20  # Gemma 3's tokenizer.json, among the largest, is 33 MB


MAX_NORMALIZER_GROWTH = 32  # NFKC's worst character grows 18x; text.py bounds each encode too
MAX_ADDED_TOKENS = 64  # what a post-processor adds to a text; real ones add 0-2 (BOS, EOS)


def load_tokenizer(bundle_dir: Path, m: Manifest) -> Tokenizer:
    """The bundle's tokenizer; it must fit the model's vocabulary and know its special ids."""
    path = bundle_file(bundle_dir, m.tokenizer.file)
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise BundleError(f"{excerpt(m.tokenizer.file)} is {path.stat().st_size >> 20} MB, "
                          f"more than a tokenizer can be ({MAX_TOKENIZER_BYTES >> 20} MB); "
                          "re-export the bundle")
    try:
        tok = Tokenizer(path, m.model.vocab_size)
    except ImportError:  # the library, not the bundle: its own message names the module
        raise
    except Exception as e:  # tokenizers raises a plain Exception for any unreadable file
        raise BundleError(f"{excerpt(m.tokenizer.file)} is not a tokenizer.json the tokenizers library "
                          f"reads ({str(e)[:200]}); re-export the bundle") from e
    special = [*m.tokenizer.eos_token_ids, *filter(None, [m.tokenizer.bos_token_id])]
    vocab = m.model.vocab_size
    # a model's vocabulary may be padded past its tokenizer's (Qwen2.5: 271 ids, Phi-3: 53),
    # never by much; ids past the tokenizer decode to no text
    slack = max(256, vocab // 16)
    if (tok.vocab_size > vocab or tok.vocab_size < vocab - slack
            or any(i >= tok.vocab_size for i in special)):
        raise BundleError(f"{excerpt(m.tokenizer.file)} has {tok.vocab_size} tokens for a "
                          f"model of {vocab} with special ids {special[:4]}; the tokenizer "
                          "does not belong to this model: re-export the bundle")
    # a normalizer that multiplies a text (a Replace writing megabytes per match, or a chain of
    # 22 Replaces "a" -> "aa") makes every prompt a memory bomb; real ones grow it by a
    # character or two per match (SentencePiece's " " -> "▁") or NFKC's 18x at worst
    growth = tok.normalizer_growth()
    if growth > MAX_NORMALIZER_GROWTH:
        how = ("without bound (a normalizer type this edgespec does not know)"
               if growth == float("inf") else f"{growth:.3g} times longer")
        raise BundleError(f"{excerpt(m.tokenizer.file)}'s normalizer can make a text {how} "
                          f"(at most {MAX_NORMALIZER_GROWTH}); it would grow prompts without "
                          "bound: re-export the bundle")
    added = tok.post_processor_tokens()
    if added > MAX_ADDED_TOKENS:
        raise BundleError(f"{excerpt(m.tokenizer.file)}'s post-processor adds {added} tokens "
                          f"to every text (at most {MAX_ADDED_TOKENS}); re-export the bundle")
    tok.encode("a")  # a post-processor adding ids past the model's vocabulary fails here
    return tok


def load_d2t(bundle_dir, spec: DrafterSpec, vocab: int) -> np.ndarray | None:
    """A VocabTrim map: int64 [K] target ids, one per logit column of the drafter's graph."""
    if spec.d2t is None:
        return None
    width = next(t.shape[-1] for t in spec.graph.outputs if t.name == "logits")
    fmt = np.lib.format
    try:  # the header first: a claimed shape is checked before anything is allocated
        with open(bundle_file(bundle_dir, spec.d2t), "rb") as fh:
            major, _ = fmt.read_magic(fh)  # a zip (.npz) or any other file fails here
            read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            if dtype != np.dtype(np.int64) or shape != (width,) or fortran:
                raise ValueError(f"header says {dtype} {shape}")
            fh.seek(0)
            d2t = fmt.read_array(fh, allow_pickle=False)  # no pickle: never unpickled
    except (ValueError, OSError, EOFError) as e:
        raise BundleError(f"{excerpt(spec.d2t)} is not a plain .npy array of {width} int64 ids "
                          f"({str(e)[:120]}); re-export the bundle") from None
    if (d2t.dtype != np.int64 or d2t.shape != (width,) or d2t.min() < 0
            or d2t.max() >= vocab or len(np.unique(d2t)) != width):
        raise BundleError(f"{excerpt(spec.d2t)} must hold {width} distinct int64 target ids in [0, "
                          f"{vocab}) (got {d2t.dtype} {d2t.shape}); re-export the bundle")
    return d2t


def open_graph(bundle_dir, spec: GraphSpec, config: SessionConfig, capture: bool = False):
    """A session over one graph of the bundle, refused unless its IO is what the manifest says
    (the runtime sizes buffers from the manifest's dims); capture: CUDA graphs on."""
    session = create_session(str(bundle_file(bundle_dir, spec.file)), config, capture)
    check_session_io(session, spec, spec.file)
    return session


def kv_bytes(model: ModelInfo, graph: GraphSpec | None = None) -> int:
    """Bytes of one Generator's preallocated K and V buffers (float32, or the graph's kv.dtype:
    float16 halves them)."""
    m = model
    return 2 * kv_itemsize(graph) * m.num_layers * m.num_kv_heads * m.max_len * m.head_dim


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: no cheap answer, no check
        return None


def check_bundle(bundle_dir: Path, m: Manifest) -> dict[str, np.ndarray]:
    """Everything but the graphs: VocabTrim maps (returned by drafter name) and memory."""
    maps = {name: load_d2t(bundle_dir, spec, m.model.vocab_size)
            for name, spec in m.drafters.items() if spec.d2t is not None}
    need = kv_bytes(m.model, m.target) + sum(kv_bytes(d.model, d.graph)
                                             for d in m.drafters.values() if d.model)
    have = physical_memory()
    if have is not None and need > have:
        raise BundleError(f"one generator of this bundle needs {need / 2**30:.1f} GiB of K/V "
                          f"buffers, more than this machine's {have / 2**30:.1f} GiB; export "
                          "with a smaller --max-len")
    return maps
