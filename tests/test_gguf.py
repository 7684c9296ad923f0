"""GGUF files as export sources: the block types unpacked exactly, MatMulNBits over a file's
own blocks computing its weights, tiny GGUFs (written in-process) exported and decoded like
transformers reads them, and the errors a bad file gets."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

from edgespec.export.gguf_blocks import DECODERS, unpack  # noqa: E402
from gguf_tiny import write_tiny_gguf  # noqa: E402

LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")  # gguf-py quantises these itself
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")


def _k_blocks(name: str, rows: int, rng) -> np.ndarray:
    """Random K-quant rows (2 super-blocks each) with finite fp16 scales where they sit."""
    nbytes = DECODERS[name][1]
    raw = rng.integers(0, 256, (rows * 2, nbytes), dtype=np.uint8)
    scale = lambda n: (rng.random((n, 1)) * 0.01 + 1e-3).astype(np.float16).view(np.uint8)
    if name == "Q6_K":
        raw[:, 208:210] = scale(rows * 2)
    else:
        raw[:, 0:2], raw[:, 2:4] = scale(rows * 2), scale(rows * 2)
    return raw.reshape(rows, 2 * nbytes)


@pytest.mark.parametrize("name", LEGACY + K_QUANTS)
def test_unpacked_blocks_hold_exactly_what_gguf_dequantizes(name):
    rng = np.random.default_rng(1)
    qtype = gguf.GGMLQuantizationType[name]
    if name in LEGACY:
        data = quantize(rng.standard_normal((6, 128)).astype(np.float32), qtype)
    else:
        data = _k_blocks(name, 3, rng)
    row_len = 128 if name in LEGACY else 512
    blocks = unpack(name, data, row_len)
    ref = dequantize(data, qtype).reshape(-1, row_len)
    np.testing.assert_allclose(blocks.dequantize(), ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    assert blocks.bits == (4 if name in ("Q4_0", "Q4_1", "Q4_K") else 8)
    assert blocks.codes.max() < 1 << blocks.bits
    symmetric = name in ("Q4_0", "Q5_0", "Q8_0", "Q6_K")
    assert (not np.any(blocks.mins)) == symmetric  # offsets only where the type has a min


def test_float_and_unknown_types_have_no_block_form():
    assert unpack("F16", np.zeros((2, 64), np.uint8), 32) is None
    assert unpack("IQ2_XS", np.zeros((2, 64), np.uint8), 256) is None


def _matmul_model(w_t: np.ndarray):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = w_t.shape
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "S", n])],
        [numpy_helper.from_array(w_t, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("mix", [("Q4_1", "Q4_0"), ("Q4_1", "Q8_0"), ("Q5_1",)])
def test_matmul_over_a_files_own_blocks_computes_its_weights(tmp_path, mix):
    """Columns from tensors of different types (a packed QKV of Q4_1 and Q8_0 rows widens to
    8 bits) -> one MatMulNBits (+ offsets) whose output is x @ W of gguf's dequantised W."""
    import onnxruntime as ort

    from edgespec.export.gguf_matmul import GgufRows, apply_gguf_blocks

    rng = np.random.default_rng(2)
    path = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    parts = []
    for i, name in enumerate(mix):
        qtype = gguf.GGMLQuantizationType[name]
        raw = quantize(rng.standard_normal((48, 96)).astype(np.float32) * 0.1, qtype)
        w.add_tensor(f"t{i}", raw, raw_dtype=qtype)
        parts.append(dequantize(raw, qtype).reshape(48, 96))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    weight = np.concatenate(parts)[rng.permutation(48 * len(mix))]  # rows in any order
    proto = _matmul_model(np.ascontiguousarray(weight.T))
    kept, report = apply_gguf_blocks(proto, GgufRows(path), accuracy_level=0)
    bits = 8 if any(DECODERS[m][0](np.zeros((1, DECODERS[m][1]), np.uint8))[0] > 4
                    for m in mix) else 4
    assert report.forms == {f"int{bits} exact": 1}
    assert [n.op_type for n in proto.graph.node][0] in ("MatMulNBits", "Reshape")
    assert bool(kept) == any(m in ("Q4_1", "Q5_1") for m in mix)
    x = rng.standard_normal((1, 5, 96)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ weight.T, rtol=1e-4, atol=1e-4)
    # --gguf-bits 4: a weight that needs 8 bits is left to the int4 quantiser
    proto = _matmul_model(np.ascontiguousarray(weight.T))
    kept, report = apply_gguf_blocks(proto, GgufRows(path), max_bits=4)
    assert report.forms == ({"int4 exact": 1} if bits == 4 else {"requantized": 1})


def test_weights_the_file_does_not_hold_are_left_alone(tmp_path):
    from edgespec.export.gguf_matmul import GgufRows, apply_gguf_blocks

    path = write_tiny_gguf(tmp_path / "t.gguf")
    proto = _matmul_model(np.ones((64, 32), np.float32))
    kept, report = apply_gguf_blocks(proto, GgufRows(path))
    assert report.forms == {"requantized": 1} and not kept
    assert [n.op_type for n in proto.graph.node] == ["MatMul"]


# ------------------------------------------------------------------ export from a GGUF file

TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf",
                           chat_template=TEMPLATE)


@pytest.fixture(scope="module")
def gguf_bundles(tiny_gguf, tmp_path_factory):
    from edgespec.export.pipeline import ExportOptions, export_bundle

    root = tmp_path_factory.mktemp("gguf-bundles")
    out = {}
    for name, opts in {"fp32": ExportOptions(max_len=128, progress=False),
                       "int4": ExportOptions(max_len=128, weights="int4", progress=False)
                       }.items():
        out[name] = (export_bundle(tiny_gguf, root / name, opts), root / name)
    return out


def test_gguf_export_decodes_like_transformers_reading_the_file(tiny_gguf, gguf_bundles):
    import edgespec
    from edgespec.models.reference import hf_greedy_many

    m, path = gguf_bundles["fp32"]
    assert m.target.parity_max_abs < 1e-3 and m.target.parity_top1 == 1.0
    assert (path / "chat_template.jinja").read_text() == TEMPLATE
    model = edgespec.Model(path)
    prompts = [model.tokenizer.encode(p) for p in ("def add(a, b):\n", "import os\n")]
    ref = hf_greedy_many(tiny_gguf, prompts, 16)
    for ids, want in zip(prompts, ref):
        for drafter in ("none", "ngram"):
            with edgespec.Generator(model, edgespec.GenerationParams(max_new_tokens=16),
                                    model.drafter(drafter)) as gen:
                gen.append_tokens(ids)
                while not gen.is_done():
                    gen.step()
                assert gen.new_tokens == want


def test_gguf_int4_keeps_the_files_blocks(gguf_bundles):
    import onnx

    m, path = gguf_bundles["int4"]
    ops = [n.op_type for n in onnx.load(str(path / m.target.file), load_external_data=False)
           .graph.node]
    # 2 layers x (QKV, o, gate, up, down) + the head: every projection from the file's blocks
    assert ops.count("MatMulNBits") == 11 and "MatMul" in ops  # offsets' MatMuls only
    assert m.target.parity_top1 >= 0.9 and m.target.parity_kl < 0.05


def test_gguf_checks_and_errors(tmp_path, tiny_gguf):
    from edgespec.checkpoints import is_gguf, resolve_checkpoint
    from edgespec.export.pipeline import ExportOptions, export_bundle
    from edgespec.models.families import UnsupportedModelError

    assert is_gguf(tiny_gguf) and resolve_checkpoint(str(tiny_gguf)) == tiny_gguf
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(NotADirectoryError, match="not a GGUF file"):
        resolve_checkpoint(str(text))
    odd = write_tiny_gguf(tmp_path / "odd.gguf", arch="notamodel")
    with pytest.raises(UnsupportedModelError, match="GGUF architecture 'notamodel'"):
        export_bundle(odd, tmp_path / "b", ExportOptions(progress=False))
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="--gguf-bits"):
        export_bundle(tiny_gguf, tmp_path / "b", ExportOptions(gguf_bits=6, progress=False))
    run = subprocess.run([sys.executable, "-m", "edgespec.cli", "export", str(odd), "-o",
                          str(tmp_path / "c")], capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "notamodel" in run.stderr.strip().splitlines()[-1]


def test_the_export_check_reads_real_text():
    from tokenizers import Tokenizer

    from conftest import REF_TARGET
    from edgespec.export.validate import CHECK_TEXT, check_ids

    ids = check_ids(REF_TARGET / "tokenizer.json", 8192, n=64)
    text = Tokenizer.from_file(str(REF_TARGET / "tokenizer.json")).decode(ids.tolist())
    assert len(ids) == 64 and CHECK_TEXT.read_text().startswith(text[:40])
    small = check_ids(REF_TARGET / "tokenizer.json", 300, n=64)  # a tiny test vocab
    assert small.max() < 300 and len(small) == 64
    assert json.dumps(small.tolist())  # plain ints
