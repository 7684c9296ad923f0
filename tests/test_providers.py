"""Execution providers and runtime libraries: a GPU provider that onnxruntime could not start is
an error, not a silent run on the CPU; a missing library is named as such, not blamed on the
bundle."""

import warnings

import pytest

from edgespec.runtime.providers import (SessionConfig, check_provider_loaded,
                                        preload_gpu_libraries)

CUDA = [("CUDAExecutionProvider", {}), "CPUExecutionProvider"]


class FellBack:
    """What onnxruntime hands back when the CUDA provider's library failed to load."""

    def get_providers(self):
        return ["CPUExecutionProvider"]


class Started:
    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_a_gpu_provider_that_did_not_start_is_an_error():
    with pytest.raises(RuntimeError, match="could not start CUDAExecutionProvider"):
        check_provider_loaded(FellBack(), CUDA, SessionConfig(provider="cuda"))


def test_allow_fallback_turns_it_into_a_warning():
    with pytest.warns(RuntimeWarning, match="running on the CPU"):
        check_provider_loaded(FellBack(), CUDA,
                              SessionConfig(provider="cuda", allow_fallback=True))


def test_a_started_provider_and_the_cpu_pass_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_provider_loaded(Started(), CUDA, SessionConfig(provider="cuda"))
        check_provider_loaded(FellBack(), ["CPUExecutionProvider"], SessionConfig())


def test_the_cpu_preloads_nothing(capsys):
    assert preload_gpu_libraries(["CPUExecutionProvider"]) == ""
    assert capsys.readouterr().out == ""


def test_a_missing_tokenizers_library_is_not_blamed_on_the_bundle(trimmed_bundle, monkeypatch):
    from edgespec.manifest import BundleError
    from edgespec.runtime.model import Model

    monkeypatch.setitem(__import__("sys").modules, "tokenizers", None)  # import fails
    with pytest.raises(ImportError) as e:
        Model(trimmed_bundle)
    assert not isinstance(e.value, BundleError) and "tokenizers" in str(e.value)
