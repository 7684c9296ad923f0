"""Torch side: our own model definitions (gpt-fast style: llama.py, moe.py, drafters.py, with
args.py, families.py, rope.py, weights.py, gguf.py loading checkpoints), the reference
(transformers' greedy decoding, reference.py) and drafter training (train.py, train_medusa2.py,
distill.py, low_rank.py, vocab_trim.py, mtp_import.py)."""
