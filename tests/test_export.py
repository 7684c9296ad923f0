"""Export: ONNX vs torch parity on every architecture, atomic writes, clear errors."""

import pytest
from hf_tiny import CONFIGS

from edgespec.export import pipeline
from edgespec.export.pipeline import ExportOptions, export_bundle
from edgespec.export.validate import ParityError
from edgespec.manifest import load_manifest


@pytest.mark.parametrize("graph", ["fused", "plain"])
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_export_parity_every_architecture(tiny_bundles, kind, graph):
    manifest, path = tiny_bundles[kind if graph == "fused" else (kind, graph)]
    assert manifest.target.kind == graph
    # export itself fails above 1e-3; on fp32 graphs we see ~1e-6
    assert manifest.target.parity_max_abs <= 1e-4
    assert load_manifest(path).target.parity_max_abs == manifest.target.parity_max_abs


def test_reference_bundle_parity(ref_bundle):
    assert load_manifest(ref_bundle).target.parity_max_abs <= 1e-4


def test_failed_export_leaves_nothing(tiny_dirs, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise ParityError("simulated parity failure")

    monkeypatch.setattr(pipeline, "check_parity", fail)
    out = tmp_path / "bundle"
    with pytest.raises(ParityError):
        export_bundle(tiny_dirs["llama"], out, ExportOptions(max_len=32, progress=False))
    assert list(tmp_path.iterdir()) == []  # no bundle, no temporary folder


def test_failed_overwrite_keeps_previous_bundle(tiny_dirs, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    export_bundle(tiny_dirs["llama"], out, ExportOptions(max_len=32, progress=False))
    before = (out / "manifest.json").read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_bundle(tiny_dirs["qwen2"], out, ExportOptions(max_len=32, progress=False))
    monkeypatch.setattr(pipeline, "check_parity",
                        lambda *a, **k: (_ for _ in ()).throw(ParityError("boom")))
    with pytest.raises(ParityError):
        export_bundle(tiny_dirs["qwen2"], out, ExportOptions(max_len=32, overwrite=True,
                                                             progress=False))
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_overwrite_replaces(tiny_dirs, tmp_path):
    out = tmp_path / "bundle"
    export_bundle(tiny_dirs["llama"], out, ExportOptions(max_len=32, progress=False))
    m = export_bundle(tiny_dirs["qwen3"], out, ExportOptions(max_len=48, overwrite=True,
                                                             progress=False))
    assert load_manifest(out).model.architecture == "qwen3" == m.model.architecture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_missing_tokenizer_is_a_clear_error(tiny_dirs, tmp_path):
    import shutil

    src = tmp_path / "hf"
    shutil.copytree(tiny_dirs["llama"], src)
    (src / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        export_bundle(src, tmp_path / "b", ExportOptions(progress=False))


def test_int4_export_is_smaller_and_still_agrees(tmp_path, prompts):
    import onnx
    from conftest import REF_TARGET

    from edgespec.runtime.generator import GenerationParams, Generator
    from edgespec.runtime.model import Model

    out = tmp_path / "int4"
    m = export_bundle(REF_TARGET, out, ExportOptions(max_len=512, weights="int4",
                                                     progress=False))
    assert m.target.weights == "int4"  # the export's top-1 gate vs fp32 torch passed
    ops = {n.op_type for n in onnx.load(str(out / "target.onnx")).graph.node}
    assert "MatMulNBits" in ops and "MatMul" not in ops  # every projection and the head
    fp32 = export_bundle(REF_TARGET, tmp_path / "fp32", ExportOptions(max_len=512,
                                                                      progress=False))
    assert fp32.target.weights == "fp32"
    assert (out / "target.onnx").stat().st_size < 0.6 * (tmp_path / "fp32/target.onnx").stat(
    ).st_size
    model = Model(out)
    gen = Generator(model, GenerationParams(max_new_tokens=16))
    gen.append_tokens(model.tokenizer.encode(prompts[0]["prompt"]))
    while not gen.is_done():
        gen.step()
    assert len(gen.new_tokens) == 16


def test_an_int4_draft_model_beside_an_fp32_target_stays_lossless(tiny_dirs, tmp_path):
    import onnx
    from conftest import run_to_end

    from edgespec.runtime.generator import GenerationParams
    from edgespec.runtime.model import Model

    out = tmp_path / "b"
    m = export_bundle(tiny_dirs["llama"], out, ExportOptions(
        max_len=64, draft_model=tiny_dirs["qwen2"], draft_weights="int4", block_size=16,
        progress=False))
    assert m.target.weights == "fp32" and m.drafters["draft_model"].graph.weights == "int4"
    ops = {n.op_type for n in onnx.load(str(out / "draft_model.onnx")).graph.node}
    assert "MatMulNBits" in ops
    assert "MatMulNBits" not in {n.op_type for n in onnx.load(str(out / "target.onnx")).graph.node}
    model = Model(out)
    params = GenerationParams(max_new_tokens=16, stop_on_eos=False)
    for ids in ([5, 9, 11], [7, 8]):
        assert run_to_end(model, params, ids, model.drafter("draft_model", 3)).tokens == \
            run_to_end(model, params, ids).tokens
    with pytest.raises(ValueError, match="--draft-weights 'int8'"):
        export_bundle(tiny_dirs["llama"], tmp_path / "c", ExportOptions(
            draft_model=tiny_dirs["qwen2"], draft_weights="int8", progress=False))


def test_a_graph_variant_checks_its_flags_once():
    from edgespec.export.variant import GraphVariant

    assert GraphVariant.from_flags("fused", "fp16", None, "tree-gpu").builder_args == {
        "dtype": "float16", "static": True, "trees": True, "attention": "matmul"}
    assert GraphVariant.from_flags("plain", "fp32", None, "tree").builder_args == {}
    for flags, why in ((("plain", "fp16", None, "tree"), "fused graph only"),
                       (("plain", "fp32", "static", "tree"), "--shapes static"),
                       (("fused", "fp32", "dynamic", "chain"), "static shapes only"),
                       (("fused", "fp8", None, "tree"), "--weights 'fp8'"),
                       (("fused", "fp32", "wide", "tree"), "--shapes 'wide'")):
        with pytest.raises(ValueError, match=why):
            GraphVariant.from_flags(*flags)
    plain = GraphVariant("plain", "fp32", False, "tree")
    with pytest.raises(ValueError, match="--draft-weights fp16 builds the fused graph only"):
        plain.with_weights("fp16", "--draft-weights")
