"""A small helper that emits ONNX nodes and initializers with unique names."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
              np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int32): TensorProto.INT32}
NAME_TO_ONNX = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
                "int64": TensorProto.INT64, "int32": TensorProto.INT32, "bool": TensorProto.BOOL}


class Builder:
    """float_dtype: the dtype every floating-point initializer is stored in (computed in fp32
    by the caller, rounded here): np.float16 for an fp16 graph."""

    def __init__(self, float_dtype=np.float32):
        self.float_dtype = np.dtype(float_dtype)
        self.float_name = self.float_dtype.name  # "float32" or "float16"
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}
        self._alias: dict[str, str] = {}  # internal value -> the graph output it became

    def _fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def weight(self, name: str, array: np.ndarray, own_dtype: bool = False) -> str:
        """An initializer; floats are stored in the graph's float dtype unless own_dtype."""
        array = np.asarray(array)
        if array.dtype.kind == "f" and not own_dtype:
            array = array.astype(self.float_dtype)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def to_float32(self, value: str) -> str:
        """`value` as float32 (a Cast in an fp16 graph): what graph outputs hand the runtime."""
        if self.float_dtype == np.float32:
            return value
        return self.op("Cast", value, to=TensorProto.FLOAT)

    def from_float32(self, value: str) -> str:
        """A float32 graph input in the graph's float dtype (a Cast in an fp16 graph)."""
        if self.float_dtype == np.float32:
            return value
        return self.op("Cast", value, to=NP_TO_ONNX[self.float_dtype])

    def const(self, values, dtype=np.int64) -> str:
        """A small constant, shared between all nodes that use the same value."""
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.weight(self._fresh("const"), arr)
        return self._consts[key]

    def op(self, op_type: str, *inputs: str, name: str | None = None, n_out: int = 1,
           domain: str = "", names: tuple = (), **attrs) -> str | list[str]:
        """Add a node; outputs get fresh names unless given (`name`, or `names` per output)."""
        inputs = tuple(self._alias.get(i, i) for i in inputs)
        outs = [name] if name and n_out == 1 else [
            (names[j] if j < len(names) and names[j] else self._fresh(op_type.lower()))
            for j in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs,
                                           name=self._fresh(f"n_{op_type}"), domain=domain,
                                           **attrs))
        return outs[0] if n_out == 1 else outs

    def input(self, name: str, dtype: str, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, NAME_TO_ONNX[dtype], shape))
        return name

    def output(self, value: str, name: str, dtype: str, shape: list) -> str:
        """Expose `value` as graph output `name`. The node that computes it writes `name`
        directly (an Identity would copy the tensor on every run); a graph input, an
        initializer or a value already exposed under another name goes through an Identity."""
        value = self._alias.get(value, value)
        producer = next((n for n in reversed(self.nodes) if value in n.output), None)
        exposed = {o.name for o in self.outputs}
        if producer is None or value in exposed:
            self.op("Identity", value, name=name)
        else:
            for node in self.nodes:  # fresh names are unique: a plain rename is exact
                for j, x in enumerate(node.input):
                    if x == value:
                        node.input[j] = name
            producer.output[list(producer.output).index(value)] = name
            self._alias[value] = name
        self.outputs.append(helper.make_tensor_value_info(name, NAME_TO_ONNX[dtype], shape))
        return name

    def declare_output(self, name: str, dtype: str, shape: list) -> str:
        """Declare an existing node output `name` as a graph output."""
        self.outputs.append(helper.make_tensor_value_info(name, NAME_TO_ONNX[dtype], shape))
        return name

    def model(self, graph_name: str, producer: str, opset: int = OPSET,
              extra_domains: dict[str, int] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.inits)
        opsets = [helper.make_opsetid("", opset)] + [
            helper.make_opsetid(d, v) for d, v in (extra_domains or {}).items()]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer)
        model.ir_version = 9 if opset <= 20 else 10  # what onnxruntime >= 1.16 / 1.20 read
        return model
