"""A loaded bundle: manifest, tokenizer and the target session, shared by many Generators."""

from __future__ import annotations

from pathlib import Path

from edgespec.manifest import BundleError, Manifest, load_manifest, safe_path

from .drafters import make_drafter
from .kv import KVCache
from .providers import SessionConfig, create_session
from .target import TargetRunner
from .text import Tokenizer
from .tuning import load_tuning, tuned_gamma


class Model:
    """Load once, then create a Generator per conversation (sessions are shared, state is not)."""

    def __init__(self, bundle_dir: str | Path, config: SessionConfig = SessionConfig()):
        self.dir = Path(bundle_dir)
        self.manifest: Manifest = load_manifest(self.dir)  # validates before any session exists
        m = self.manifest
        self.tokenizer = Tokenizer(safe_path(self.dir, m.tokenizer.file))
        if self.tokenizer.vocab_size > m.model.vocab_size:
            raise BundleError(f"tokenizer has {self.tokenizer.vocab_size} tokens but the model "
                              f"only {m.model.vocab_size}; the bundle's tokenizer.json does not "
                              "belong to its model: re-export the bundle")
        self.config = config
        self.session = create_session(str(safe_path(self.dir, m.target.file)), config)
        self._check_io()
        self.tuning = load_tuning(self.dir)  # per-device settings from `edgespec tune`
        self._drafters: dict[tuple, object] = {}  # (name, gamma, width) -> drafter

    def _check_io(self) -> None:
        spec = self.manifest.target
        have_in = {i.name for i in self.session.get_inputs()}
        have_out = {o.name for o in self.session.get_outputs()}
        want_in = {t.name for t in spec.inputs}
        want_out = {t.name for t in spec.outputs}
        if have_in != want_in or have_out != want_out:
            raise BundleError(f"{spec.file} does not match manifest.json (inputs differ by "
                              f"{sorted(have_in ^ want_in)[:4]}, outputs by "
                              f"{sorted(have_out ^ want_out)[:4]}); re-export the bundle")

    @property
    def max_len(self) -> int:
        return self.manifest.model.max_len

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.manifest.tokenizer.eos_token_ids

    def drafter(self, name: str | None, gamma: int | None = None, width: int | None = None,
                tree_size: int | None = None):
        """The bundle's drafter `name` (None or 'none': autoregressive), loaded once.

        gamma: draft length (tree depth); width: nodes expanded per depth (1 = a chain);
        tree_size: nodes kept in a tree (medusa, eagle3). None = the chain `edgespec tune`
        chose for this provider, if any, else the bundle's default."""
        if name in (None, "none"):
            return None
        if gamma is None and width is None and tree_size is None:
            tuned = tuned_gamma(self.tuning, self.config.provider, name)
            if tuned is not None:
                gamma, width = tuned, 1
        key = (name, gamma, width, tree_size)
        if key not in self._drafters:
            self._drafters[key] = make_drafter(name, self.dir, self.manifest.drafters,
                                               self.config, self.max_len, gamma, width,
                                               tree_size)
        return self._drafters[key]

    def new_runner(self) -> TargetRunner:
        """Fresh KV buffers and IO bindings for one Generator."""
        mi = self.manifest.model
        kv = KVCache(mi.num_layers, mi.num_kv_heads, mi.head_dim, mi.max_len)
        return TargetRunner(self.session, self.manifest.target, mi, kv)
