"""The lean runtime: numpy + onnxruntime + tokenizers only (never torch or transformers)."""
