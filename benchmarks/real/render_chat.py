"""Chat requests (../shared/data/chat_prompts.jsonl: OpenAI-style `messages`) rendered by a
bundle's chat template, with the assistant's turn opened, as a prompts file the benchmarks
read ({"id", "prompt"} per line); it checks that each text encodes back to the ids
Model.chat_prompt gives.

    python benchmarks/real/render_chat.py BUNDLE CHAT.jsonl OUT.jsonl [--n 16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer

from edgespec.runtime.model import Model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("chats")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=16)
    ns = ap.parse_args()
    model = Model(ns.bundle)
    raw = Tokenizer.from_file(str(Path(ns.bundle) / model.manifest.tokenizer.file))
    rows = [json.loads(line) for line in Path(ns.chats).read_text().splitlines()][: ns.n]
    with open(ns.out, "w", encoding="utf-8") as f:
        for r in rows:
            ids = model.chat_prompt(r["messages"])
            text = raw.decode(ids, skip_special_tokens=False)  # the template's own tokens kept
            if model.tokenizer.encode(text) != ids:
                raise SystemExit(f"{r['id']}: the rendered text does not encode back to its ids")
            f.write(json.dumps({"id": r["id"], "prompt": text}) + "\n")
    print(f"wrote {len(rows)} rendered chat prompts to {ns.out}")


if __name__ == "__main__":
    main()
