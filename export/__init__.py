"""HF checkpoint -> bundle folder: ONNX graphs, manifest.json, tokenizer ([export] extra)."""
