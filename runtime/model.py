"""A loaded bundle: manifest, tokenizer and the target session, shared by many Generators."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from edgespec.drafter_options import INT_OPTIONS, check_tree, valid_int
from edgespec.errors import BundleError
from edgespec.graph_contract import verifies_trees
from edgespec.manifest import Manifest, load_manifest

from .bundle_checks import check_bundle, load_tokenizer
from .chat import load_chat_template
from .drafter_base import BundleDrafter, DraftSetting
from .drafters import make_drafter
from .pacing import PacedDrafter
from .runner_pool import RunnerPool
from .providers import SessionConfig, resolve_providers
from .graph_runner import GraphRunner
from .tuning import auto_choice, check_tuning_fits, load_tuning, tuned_setting


class Model:
    """Load once, then create a Generator per conversation (sessions are shared, state is not)."""

    def __init__(self, bundle_dir: str | Path, config: SessionConfig = SessionConfig()):
        # every check that reads the bundle runs before onnxruntime opens any of its graphs
        self.manifest: Manifest = load_manifest(bundle_dir)
        self.dir = Path(bundle_dir)
        m = self.manifest
        if not isinstance(config, SessionConfig):
            raise ValueError(f"config must be a SessionConfig, got {type(config).__name__}")
        self.tokenizer = load_tokenizer(self.dir, m)
        self._d2t = check_bundle(self.dir, m)  # VocabTrim maps by drafter name, checked
        self._chat = load_chat_template(self.dir, m, self.tokenizer)  # None: the bundle has none
        self.tuning = load_tuning(self.dir)  # per-device settings from `edgespec tune`
        check_tuning_fits(self.tuning, m)
        _, device = resolve_providers(config)  # an unknown or missing provider: one clear error
        if device == "cpu" and config.provider != "cpu":  # allowed to fall back: run as the CPU
            config = dataclasses.replace(config, provider="cpu")
        self.config = config
        # the target's session and its runners (K/V buffers, IO bindings; CUDA graphs)
        self.runners = RunnerPool(self.dir, m.target, m.model, config,
                                  min_rows=2 if config.batch_invariant else 1)
        self.session = self.runners.session
        # (name, DraftSetting) -> drafter; (name, DraftSetting, "auto") -> it, paced
        self._drafters: dict[tuple, object] = {}
        self._lock = threading.Lock()  # generators in several threads may ask at once

    def generate(self, prompt: str | bytes | list[int], *, drafter: str = "auto", **keywords):
        """The completion of `prompt` (text, UTF-8 bytes, or token ids such as chat_prompt's):
        its text, ids, stop reason and statistics. Keywords:
        max_new_tokens, temperature, top_k, top_p, seed, stop, accept; drafter: 'auto' (what
        `edgespec tune` chose here, else n-gram lookup), 'none' or one of the bundle's."""
        from .completions import complete

        return complete(self, prompt, drafter, **keywords)

    def chat_prompt(self, messages: list[dict], max_chars: int | None = None) -> list[int]:
        """The token ids of chat `messages` ([{"role", "content"}, ...]) rendered by the
        bundle's chat template, with the assistant's turn opened; pass them to generate() or
        stream(). A rendered text past `max_chars` (default 4 M) or a bundle without a
        template: a ValueError that says so."""
        if self._chat is None:
            raise ValueError("this bundle has no chat template (its checkpoint had none); "
                             "use a plain completion, or export a checkpoint whose "
                             "tokenizer_config.json has a chat_template")
        if max_chars is None:
            return self._chat.encode(messages, self.tokenizer)
        return self._chat.encode(messages, self.tokenizer, max_chars)

    def stream(self, prompt: str | bytes | list[int], *, drafter: str = "auto", **keywords):
        """Iterate text pieces as they are generated; afterwards `.completion` holds what
        generate() returns. Same keywords as generate()."""
        from .completions import CompletionStream, params_from

        return CompletionStream(self, prompt, params_from(**keywords), drafter)

    @property
    def max_len(self) -> int:
        return self.manifest.model.max_len

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.manifest.tokenizer.eos_token_ids

    def resolve_drafter(self, name: str | None) -> str:
        """A drafter name as given to drafter(): 'auto' becomes what `edgespec tune --drafter
        auto` measured fastest on this provider (possibly 'none'), else n-gram lookup when the
        bundle has it (it runs no network, so a miss costs a plain step at most), else 'none'."""
        if name is None:
            return "none"
        if name != "auto":
            return name
        choice = auto_choice(self.tuning, self.config.provider)
        if choice is not None:
            return choice["drafter"]
        return "ngram" if "ngram" in self.manifest.drafters else "none"

    def tuned_speedup(self, name: str) -> float | None:
        """The speedup over plain decoding `edgespec tune` measured for drafter `name` (resolved)
        at its tuned setting on this provider, or None if it was never measured."""
        choice = auto_choice(self.tuning, self.config.provider)
        if choice is not None and choice["drafter"] == name and "speedup" in choice:
            return float(choice["speedup"])
        if name == "none":
            return 1.0 if choice is not None else None
        setting = tuned_setting(self.tuning, self.config.provider, name, raw=True)
        if setting.get("measured_tok_s") and setting.get("measured_plain_tok_s"):
            return setting["measured_tok_s"] / setting["measured_plain_tok_s"]
        return None

    def drafter(self, name: str | None, gamma: int | None = None,
                tree_width: int | None = None, tree_size: int | None = None,
                tree: list | None = None, min_n: int | None = None):
        """The bundle's drafter `name` (None or 'none': autoregressive; 'auto': see
        resolve_drafter; drafting and verifying only what pays, with n-gram lookup beside a
        network drafter: runtime/pacing.py), loaded once.

        gamma: draft length (tree depth); tree_width: nodes expanded per depth (1 = a chain);
        tree_size: nodes kept in a tree (medusa, eagle3); tree: Medusa rank paths; min_n:
        ngram's shortest match worth a proposal. All None = the setting `edgespec tune` chose
        for this provider, if any, else the bundle's."""
        if name is not None and not isinstance(name, str):
            raise ValueError(f"a drafter name is a str (or None), got {type(name).__name__}")
        paced = name == "auto"
        name = self.resolve_drafter(name)
        if name == "none":
            return None
        ints = {}
        for what, value in (("gamma", gamma), ("tree_width", tree_width),
                            ("tree_size", tree_size), ("min_n", min_n)):
            if value is not None and not valid_int(what, value):
                low, high = INT_OPTIONS[what]
                raise ValueError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
            ints[what] = None if value is None else int(value)  # numpy integers too
        gamma, tree_width, tree_size, min_n = (ints[k] for k in ("gamma", "tree_width",
                                                                 "tree_size", "min_n"))
        if tree is not None:  # Medusa rank paths from a caller: the manifest's rules
            try:
                check_tree(tree, "tree", INT_OPTIONS["tree_size"][1])
            except BundleError:
                raise ValueError(f"tree must be a list of rank paths, each path's parent "
                                 f"listed, ranks >= 0 (got {str(tree)[:60]})") from None
        if gamma is None and tree_width is None and tree_size is None and tree is None \
                and min_n is None:
            tuned = tuned_setting(self.tuning, self.config.provider, name)
            gamma, tree_width, tree_size, tree, min_n = (tuned.get(k) for k in (
                "gamma", "tree_width", "tree_size", "tree", "min_n"))
        if name not in self.manifest.drafters:
            raise ValueError(f"unknown drafter {name!r}; this bundle has: "
                             f"{', '.join(['none', *self.manifest.drafters])}")
        setting = DraftSetting(gamma, tree_width, tree_size, tree and tuple(map(tuple, tree)),
                               min_n)
        # n-gram lookup beside a network drafter under auto: it costs nothing to ask
        lookup = self.drafter("ngram") if paced and name != "ngram" \
            and "ngram" in self.manifest.drafters else None
        with self._lock:
            if (name, setting) not in self._drafters:
                bundle = BundleDrafter(self.dir, self.manifest.drafters[name], self.config,
                                       self.max_len, self._d2t.get(name), self.verifies_trees)
                self._drafters[name, setting] = make_drafter(bundle, setting)
            if paced and (name, setting, "auto") not in self._drafters:
                inner = self._drafters[name, setting]
                self._drafters[name, setting, "auto"] = PacedDrafter(
                    inner, lookup if inner.forwards_per_step else None)
            return self._drafters[(name, setting, "auto") if paced else (name, setting)]

    @property
    def verifies_trees(self) -> bool:
        """False for a `--verify chain` bundle: every drafter then drafts a chain."""
        return verifies_trees(self.manifest.target)

    @property
    def graph_ids(self):
        """The target's CUDA graph ids (runtime/graph_capture.py), or None: no capture."""
        return self.runners.graph_ids

    def new_runner(self) -> GraphRunner:
        """KV buffers and IO bindings for one Generator: fresh ones, or under CUDA graphs a
        closed Generator's (its captured graphs replay those very buffers)."""
        return self.runners.take()

    def release_runner(self, runner: GraphRunner) -> None:
        """A closed (or collected) Generator's runner: kept for the next Generator under CUDA
        graphs, else dropped with its buffers."""
        self.runners.give(runner)
