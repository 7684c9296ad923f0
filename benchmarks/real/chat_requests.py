"""Chat requests for self-distillation, made the way ../shared/data/chat_prompts.jsonl was:
"Write a Python function `name(params)`. <docstring>" from documented functions of the Python
standard library. Modules the held-out chat prompts (and the held-out code prompts) come from
are skipped whole, so training never sees a request the benchmarks ask.

    python benchmarks/real/chat_requests.py OUT.jsonl --n 800 --holdout ../shared/data/*.jsonl

Deterministic for a seed: rows are {"id", "source", "messages"} like the benchmark's.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sysconfig
from pathlib import Path


def held_modules(paths: list[str]) -> set[str]:
    """Module stems named by held-out rows: `id` "typing:575" or `source` ".../typing.py"."""
    out = set()
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out.add(str(row.get("id", "")).split(":")[0])
            out.add(Path(str(row.get("source", ""))).stem)
    return out - {"", "general", "stdlib-docstring"}


def requests_in(path: Path) -> list[dict]:
    """One request per public function with a docstring of at least four words."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        if not doc or node.name.startswith("_"):
            continue
        text = " ".join(doc.split("\n\n")[0].split())  # the first paragraph, on one line
        if len(text.split()) < 4 or len(text) > 400:
            continue
        params = [a.arg for a in node.args.args if a.arg not in ("self", "cls")]
        out.append({"id": f"{path.stem}:{node.lineno}", "source": "stdlib-docstring",
                    "messages": [{"role": "user", "content":
                                  f"Write a Python function `{node.name}({', '.join(params)})`. "
                                  f"{text}"}]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--holdout", nargs="*", default=[], help="jsonl files whose modules to skip")
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = held_modules(ns.holdout)
    rows = []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root).as_posix()
        if "test" in rel or "site-packages" in rel or f.stem in skip:
            continue
        rows += requests_in(f)
    random.Random(ns.seed).shuffle(rows)
    with open(ns.out, "w", encoding="utf-8") as fh:
        for r in rows[: ns.n]:
            fh.write(json.dumps(r) + "\n")
    print(f"wrote {min(ns.n, len(rows))} of {len(rows)} requests to {ns.out} "
          f"({len(skip)} held-out modules skipped)")


if __name__ == "__main__":
    main()
