"""Torch definitions only: our own models (gpt-fast style: llama.py, moe.py, drafters.py, with
args.py, families.py, rope.py), loading checkpoints into them (weights.py, gguf.py, and
mtp_import.py for a checkpoint's own MTP head) and the reference (transformers' greedy decoding,
reference.py). Never imports the runtime; training lives in export/train/."""
