"""edgespec: lossless speculative decoding for small LLMs on memory-bound GPUs and CPUs.

`edgespec.runtime` runs bundles with numpy + onnxruntime + tokenizers only;
`edgespec.export` and `edgespec.models` (torch, transformers) make them.
"""

__version__ = "0.1.0"

# The flat API, loaded on first use so that `import edgespec` stays light (no onnxruntime):
#   model = edgespec.Model("bundles/demo"); print(model.generate("def f(x):").text)
_LAZY = {
    "Model": "edgespec.runtime.model",
    "SessionConfig": "edgespec.runtime.providers",
    "Generator": "edgespec.runtime.generator",
    "GenerationParams": "edgespec.runtime.generation_params",
    "StopReason": "edgespec.runtime.generation_params",
    "Accept": "edgespec.runtime.generation_params",
    "Completion": "edgespec.runtime.completions",
    "CompletionStream": "edgespec.runtime.completions",
    "Stats": "edgespec.runtime.generation_params",
    "Drafter": "edgespec.runtime.drafter_base",
    "SamplingParams": "edgespec.sampling",
    "BundleError": "edgespec.errors",
}
__all__ = ["__version__", *_LAZY]


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'edgespec' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
