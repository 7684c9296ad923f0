"""HF checkpoint -> bundle folder: ONNX graphs, manifest.json, tokenizer. Needs the [export] extra."""
