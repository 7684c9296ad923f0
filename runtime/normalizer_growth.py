"""How many times longer a tokenizer.json normalizer can make a text, bounded from its config
alone (runtime/bundle_checks.py refuses a large one). Encoding costs memory per normalized
character (tokenizers keeps an alignment per character: ~400 bytes measured), so a normalizer
that multiplies text multiplies the cost of every prompt.

Each step's worst case over every input character: Unicode normalization's longest expansion
(NFKC / NFKD 18: U+FDFA; NFD 4; NFC 3; lowercase 2, Unicode 14), a Replace's content over its
pattern (a regex may match one character: 1 + content), a Precompiled charsmap's longest
replacement string, ByteLevel's 4 (a character's UTF-8 bytes), Bert's CJK padding (3) or its
accent-stripping decomposition and lowercasing; a Sequence multiplies its steps, Prepend adds
its text. A type not known here is unbounded (refused): it could write anything.
"""

from __future__ import annotations

import base64
import math
import struct

FIXED = {"NFKC": 18, "NFKD": 18, "NFD": 4, "NFC": 3, "Lowercase": 2, "ByteLevel": 4,
         "Strip": 1, "StripAccents": 1, "Nmt": 1}


def _replace(node: dict) -> float:
    pattern, content = node.get("pattern") or {}, node.get("content")
    if not isinstance(content, str):
        return math.inf
    text = pattern.get("String") if isinstance(pattern, dict) else None
    if isinstance(text, str) and text:
        return max(1.0, len(content) / len(text))
    return 1.0 + len(content)  # a regex (or an odd pattern): it may match one character


def _precompiled(node: dict) -> float:
    """SentencePiece's charsmap: a uint32 trie size, the trie, then the replacement strings,
    each ending in a NUL; one input character (at least) becomes one of them."""
    try:
        blob = base64.b64decode(node.get("precompiled_charsmap") or "", validate=True)
        (trie,) = struct.unpack_from("<I", blob)
        strings = blob[4 + trie:]
    except (ValueError, TypeError, struct.error):
        return math.inf
    longest = max((len(s.decode("utf-8", "replace")) for s in strings.split(b"\0")), default=1)
    return float(max(1, longest))


def _bert(node: dict) -> float:
    lowercase = node.get("lowercase", True) is not False
    strip = node.get("strip_accents")
    strip = lowercase if strip is None else bool(strip)
    word = (4 if strip else 1) * (2 if lowercase else 1)
    return float(max(word, 3 if node.get("handle_chinese_chars", True) else 1))


def growth(node) -> float:
    """The factor for one normalizer node (tokenizers' JSON form); None: no normalizer."""
    if node is None:
        return 1.0
    if not isinstance(node, dict):
        return math.inf
    kind = node.get("type")
    if kind == "Sequence":
        factor, added = 1.0, 0.0
        for step in node.get("normalizers") or ():
            if isinstance(step, dict) and step.get("type") == "Prepend":
                added += len(step.get("prepend") or "")
            else:
                factor *= growth(step)
        return factor + added
    if kind == "Prepend":
        return 1.0 + len(node.get("prepend") or "")
    if kind in FIXED:
        return float(FIXED[kind])
    return {"Replace": _replace, "Precompiled": _precompiled, "BertNormalizer": _bert}.get(
        kind, lambda _: math.inf)(node)
