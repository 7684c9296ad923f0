"""edgespec: lossless speculative decoding for small LLMs on memory-bound GPUs and CPUs.

`edgespec.runtime` runs bundles with numpy + onnxruntime + tokenizers only;
`edgespec.export` and `edgespec.models` (torch, transformers) make them.
"""

__version__ = "0.1.0"
