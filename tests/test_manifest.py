"""The bundle contract refuses what the runtime cannot trust, before any session exists."""

import json
import shutil

import pytest

from edgespec.bundle_paths import safe_path
from edgespec.manifest import BundleError, load_manifest


@pytest.fixture
def bundle_copy(tiny_bundles, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundles["llama"][1], dst)
    return dst


def _edit(bundle, fn):
    path = bundle / "manifest.json"
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def test_round_trip(bundle_copy):
    m = load_manifest(bundle_copy)
    assert m.model.num_layers == 2 and m.target.kind == "fused"
    assert m.target.kv.update == "in_graph"
    assert [t.name for t in m.target.inputs][:4] == ["input_ids", "position_ids",
                                                     "attention_bias", "logits_index"]


def test_newer_format_refused(bundle_copy):
    _edit(bundle_copy, lambda d: d.update(format_version=99))
    with pytest.raises(BundleError, match="newer than this edgespec reads.*upgrade"):
        load_manifest(bundle_copy)


def test_missing_file_refused(bundle_copy):
    (bundle_copy / "target.onnx").unlink()
    with pytest.raises(BundleError, match="missing 'target.onnx'"):
        load_manifest(bundle_copy)


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", "sub/../../x.onnx"])
def test_escaping_paths_refused(bundle_copy, bad):
    _edit(bundle_copy, lambda d: d["target"].update(file=bad))
    with pytest.raises(BundleError, match="absolute|leaves the bundle folder"):
        load_manifest(bundle_copy)


def test_symlink_out_of_bundle_refused(bundle_copy, tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"x")
    (bundle_copy / "link.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        safe_path(bundle_copy, "link.onnx")


def test_wrong_types_and_missing_keys_refused(bundle_copy):
    _edit(bundle_copy, lambda d: d["model"].update(num_layers="6"))
    with pytest.raises(BundleError, match="model.num_layers.*wrong type"):
        load_manifest(bundle_copy)
    _edit(bundle_copy, lambda d: (d["model"].update(num_layers=2), d.pop("tokenizer")))
    with pytest.raises(BundleError, match="missing key 'manifest.tokenizer'"):
        load_manifest(bundle_copy)


def test_huge_dims_refused(bundle_copy):
    _edit(bundle_copy, lambda d: d["model"].update(max_len=10**12))
    with pytest.raises(BundleError, match="max_len.*out of range"):
        load_manifest(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no manifest.json"):
        load_manifest(tmp_path)


def _identity_with_external_weight(path, location):
    from onnx import TensorProto, helper

    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        t.external_data.add(key=k, value=v)
    g = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [t])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    path.write_bytes(m.SerializeToString())


@pytest.mark.parametrize("location", ["../secret.bin", "ABSOLUTE"])
def test_external_data_escaping_the_bundle_is_refused(tmp_path, location):
    from edgespec.runtime.providers import SessionConfig, create_session

    import os
    import time

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x" * 16)
    os.utime(secret, (946684800, time.time()))  # a read would move atime (relatime)
    bundle = tmp_path / "b"
    bundle.mkdir()
    _identity_with_external_weight(bundle / "m.onnx",
                                   str(secret) if location == "ABSOLUTE" else location)
    with pytest.raises(BundleError, match="onnxruntime refused"):
        create_session(str(bundle / "m.onnx"), SessionConfig())
    assert os.stat(secret).st_atime == 946684800  # refused before it read the data


def test_symlinked_external_data_is_refused(bundle_copy, tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"x" * 16)
    (bundle_copy / "weights.data").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(BundleError, match="symlink 'weights.data' that points outside"):
        load_manifest(bundle_copy)
