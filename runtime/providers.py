"""onnxruntime import, execution-provider presets and session creation."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from dataclasses import dataclass, field


def import_ort():
    """onnxruntime, or one clear error naming both extras (they install the same module)."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            "edgespec's runtime needs onnxruntime: `pip install edgespec[cpu]` (onnxruntime) or "
            "`pip install edgespec[gpu]` (onnxruntime-gpu), not both") from e
    return onnxruntime


@dataclass(frozen=True)
class Provider:
    """What the runtime knows about one execution provider: adding one is a table entry."""

    sessions: list  # onnxruntime's provider list, with the options that matter for decode
    device: str  # where onnxruntime allocates its buffers: cpu | cuda | dml
    kv_on_device: bool  # kv_device "auto": K/V buffers stay on the device
    captures: bool  # cuda_graphs "auto": a CUDA graph per verify shape (runtime/graph_capture)
    gqa_takes_bias: bool  # its GroupQueryAttention accepts an attention_bias (tree verify)
    cache_option: str | None = None  # the provider option SessionConfig.cache_dir fills
    capture_option: str | None = None  # the option that turns CUDA graph capture on
    # onnxruntime-gpu links the CUDA libraries, which pip installs where the loader does not
    # look: they are preloaded before its first session
    needs_cuda_libraries: bool = False


# Provider options: device-resident buffers; CUDA graphs stay off unless asked for (shapes
# change every step on the plain graph); TensorRT caches its engines (in the bundle's folder).
PROVIDERS: dict[str, Provider] = {
    "cpu": Provider(["CPUExecutionProvider"], "cpu", kv_on_device=False, captures=False,
                    gqa_takes_bias=True),
    "cuda": Provider([("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested",
                                                 "cudnn_conv_algo_search": "HEURISTIC",
                                                 "do_copy_in_default_stream": "1"}),
                      "CPUExecutionProvider"], "cuda", kv_on_device=True, captures=True,
                     gqa_takes_bias=False,  # CUDA GQA: float16, no bias (runner_pool)
                     capture_option="enable_cuda_graph", needs_cuda_libraries=True),
    "tensorrt": Provider([("TensorrtExecutionProvider", {"trt_fp16_enable": "1",
                                                         "trt_engine_cache_enable": "1"}),
                          ("CUDAExecutionProvider", {}), "CPUExecutionProvider"], "cuda",
                         kv_on_device=True, captures=False, gqa_takes_bias=False,
                         cache_option="trt_engine_cache_path",
                         capture_option="trt_cuda_graph_enable", needs_cuda_libraries=True),
    "dml": Provider([("DmlExecutionProvider", {}), "CPUExecutionProvider"], "dml",
                    kv_on_device=False, captures=False, gqa_takes_bias=True),
}


def provider(cfg) -> Provider:
    """The table entry of a SessionConfig's provider (resolve_providers refused unknown ones)."""
    return PROVIDERS[cfg.provider]


def _entry(providers: list) -> Provider:
    """The table entry whose provider list starts as `providers` does (resolved lists, the CPU
    fallback included, start with one entry's first provider; anything else: the CPU's)."""
    first = _first(providers)
    return next((p for p in PROVIDERS.values() if _first(p.sessions) == first),
                PROVIDERS["cpu"])


def capture_providers(providers: list) -> list:
    """The provider list with graph capture on for its first provider, if that can capture
    (runtime/graph_capture.py)."""
    option = _entry(providers).capture_option
    if option is None:  # the CPU: nothing to capture with
        return providers
    name, opts = providers[0] if isinstance(providers[0], tuple) else (providers[0], {})
    return [(name, {**opts, option: "1"}), *providers[1:]]


# A target and its drafter take turns on the cores: the verify run, then the drafter's runs. Each
# session's thread pool spins while its run lasts and stops when the run returns, so that no pool
# steals the cores from the next session's run. Measured on 2 cores (pyref-large, int4 draft
# model, gamma 8, 6 alternating rounds in one process): 1.94x plain decoding, against 1.76x with
# the drafter on one thread that never spins; plain decoding and n-gram lookup within 2-3 %.
TURN_TAKING = {"session.force_spinning_stop": "1"}


@dataclass(frozen=True)
class SessionConfig:
    provider: str = "cpu"
    threads: int = 0  # intra-op threads; 0 = onnxruntime's default (physical cores)
    allow_fallback: bool = False  # fall back to CPU (with a warning) if the provider is missing
    cache_dir: str | None = None  # where TensorRT may cache engines
    extra_options: dict = field(default_factory=dict)
    # where K/V buffers live: "auto" (on the GPU for the cuda / tensorrt presets, else on the
    # host), "device" (allocated by onnxruntime on the provider's device; on CPU a test of that
    # path) or "host" (numpy arrays)
    kv_device: str = "auto"
    # CUDA graphs per verify shape (runtime/graph_capture.py): "auto" (on the cuda preset when
    # the bundle has static shapes and K/V are on the device), "on" (required) or "off"
    cuda_graphs: str = "auto"
    # every target run gets at least 2 rows (a decode step is padded with one unread row), so
    # a token's logits and K/V do not depend on how many tokens its run held: speculative and
    # autoregressive greedy output then agree token for token on kernels that compute a 1-row
    # run differently from a batched one (onnxruntime's int4 MatMulNBits on the CPU: up to 1.0
    # in a logit on SmolLM2); it costs the padded decode step (int4 1.3x here, fp32 1.1x)
    batch_invariant: bool = False

    def __post_init__(self):
        if self.kv_device not in ("auto", "device", "host"):
            raise ValueError(f"kv_device must be auto, device or host, got {self.kv_device!r}")
        if self.cuda_graphs not in ("auto", "on", "off"):
            raise ValueError(f"cuda_graphs must be auto, on or off, got {self.cuda_graphs!r}")
        if not isinstance(self.batch_invariant, bool):
            raise ValueError(f"batch_invariant must be True or False, got "
                             f"{self.batch_invariant!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ValueError(f"threads must be an integer >= 0 (0 = onnxruntime's default), "
                             f"got {self.threads!r}")


def resolve_providers(cfg: SessionConfig) -> tuple[list, str]:
    """Provider list and buffer device for `cfg`; a missing provider is a clear error."""
    ort = import_ort()
    if cfg.provider not in PROVIDERS:
        raise ValueError(f"unknown provider {cfg.provider!r}; choose one of "
                         f"{', '.join(PROVIDERS)}")
    entry = PROVIDERS[cfg.provider]
    providers = entry.sessions
    first = _first(providers)
    available = ort.get_available_providers()
    if first not in available:
        msg = (f"provider {cfg.provider!r} needs {first}, which this onnxruntime lacks "
               f"(available: {', '.join(available)}); install onnxruntime-gpu "
               "(`pip install edgespec[gpu]`) or use --provider cpu")
        if not cfg.allow_fallback:
            raise RuntimeError(msg)
        warnings.warn(msg + "; falling back to CPU", RuntimeWarning, stacklevel=2)
        return PROVIDERS["cpu"].sessions, PROVIDERS["cpu"].device
    if entry.cache_option and cfg.cache_dir:
        providers = [(providers[0][0], {**providers[0][1], entry.cache_option:
                                        os.fspath(cfg.cache_dir)}), *providers[1:]]
    return providers, entry.device


def create_session(onnx_path: str, cfg: SessionConfig, capture: bool = False,
                   errors_only: bool = False):
    """An InferenceSession with full graph optimisation and the configured providers; capture:
    with CUDA graph capture on (runtime/graph_capture.py; the CPU has none); errors_only:
    onnxruntime logs errors only (its warnings about this graph are known noise)."""
    ort = import_ort()
    providers, _ = resolve_providers(cfg)
    if capture:
        providers = capture_providers(providers)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if cfg.threads:
        so.intra_op_num_threads = cfg.threads
    so.inter_op_num_threads = 1
    if errors_only:
        so.log_severity_level = 3
    for key, value in {**TURN_TAKING, **cfg.extra_options}.items():
        so.add_session_config_entry(key, str(value))
    preload_gpu_libraries(providers)
    try:
        session = ort.InferenceSession(onnx_path, sess_options=so, providers=providers)
    except ort_errors() as e:
        from edgespec.manifest import BundleError

        raise BundleError(f"onnxruntime refused {os.path.basename(onnx_path)} ("
                          f"{type(e).__name__}: {str(e).splitlines()[0][:200]}); re-export the "
                          "bundle with this edgespec") from None
    check_provider_loaded(session, providers, cfg)
    return session


def _first(providers: list) -> str:
    return providers[0][0] if isinstance(providers[0], tuple) else providers[0]


@functools.cache
def _preload(first: str) -> str:
    """onnxruntime-gpu's CUDA provider links libcublas, libcudart and cuDNN, which pip's
    `onnxruntime-gpu[cuda,cudnn]` installs as nvidia-* packages that the loader does not search:
    onnxruntime's preload_dlls (>= 1.21) loads them first. What it prints about libraries it
    could not load is kept for the error below, not written to the caller's stdout."""
    ort = import_ort()
    preload = getattr(ort, "preload_dlls", None)  # absent before onnxruntime 1.21
    said = io.StringIO()
    if preload is not None:
        with contextlib.redirect_stdout(said):
            try:
                preload()
            except Exception as e:  # noqa: BLE001 - best effort: the session check decides
                print(f"preload_dlls failed: {e}")
    return " ".join(said.getvalue().split())[:300]


def preload_gpu_libraries(providers: list) -> str:
    """Load the CUDA libraries before the first CUDA or TensorRT session (once per process)."""
    return _preload(_first(providers)) if _entry(providers).needs_cuda_libraries else ""


def check_provider_loaded(session, providers: list, cfg: SessionConfig) -> None:
    """onnxruntime falls back to the CPU, with only a logged message, when a GPU provider's
    library fails to load (a missing libcublas, say): a decode that the caller asked to run on
    the GPU must not run on the CPU unnoticed."""
    first = _first(providers)
    if first in session.get_providers():
        return
    said = preload_gpu_libraries(providers)
    msg = (f"onnxruntime could not start {first}: it needs the CUDA and cuDNN libraries its "
           "build links (`pip install onnxruntime-gpu[cuda,cudnn]`, or their folder on "
           "LD_LIBRARY_PATH)"
           + (f"; {said}" if said else ""))
    if not cfg.allow_fallback:
        raise RuntimeError(msg)
    warnings.warn(msg + "; running on the CPU", RuntimeWarning, stacklevel=3)


@functools.cache
def ort_errors() -> tuple[type[Exception], ...]:
    """Every exception type onnxruntime raises for a graph it cannot load or run: its own
    (Fail, InvalidArgument, NoSuchFile, NotImplemented, RuntimeException, ...) and the
    RuntimeError its Python layer raises after a failed provider fallback."""
    state = import_ort().capi.onnxruntime_pybind11_state
    own = tuple(v for v in vars(state).values()
                if isinstance(v, type) and issubclass(v, Exception))
    return (*own, RuntimeError)


def run_failed(file: str, e: Exception):
    """The BundleError for a graph that loaded but failed in a run (its IO or ops disagree
    with what the manifest declared)."""
    from edgespec.manifest import BundleError

    return BundleError(f"onnxruntime failed running {file} ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]}); re-export the bundle")
