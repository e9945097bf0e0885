"""LightGBM binary model -> ONNX (TreeEnsembleRegressor with double thresholds, then Sigmoid).

onnxmltools only converts with float32 inputs and thresholds, which moves split decisions for large
counters and breaks the 1e-6 agreement with LightGBM; this exporter keeps inputs and thresholds in
float64 (ai.onnx.ml opset 3 `nodes_values_as_tensor`). Numerical splits only (no categorical),
as `make train` produces. Needs the `onnx` package (training time only).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _walk(tree: dict[str, Any], tree_id: int, acc: dict[str, list[Any]]) -> None:
    counter = [0]

    def visit(node: dict[str, Any]) -> int:
        my = counter[0]
        counter[0] += 1
        acc["nodes_treeids"].append(tree_id)
        acc["nodes_nodeids"].append(my)
        if "leaf_value" in node or "split_index" not in node:
            acc["nodes_modes"].append("LEAF")
            acc["nodes_featureids"].append(0)
            acc["nodes_values"].append(0.0)
            acc["nodes_truenodeids"].append(0)
            acc["nodes_falsenodeids"].append(0)
            acc["nodes_missing_value_tracks_true"].append(0)
            acc["target_treeids"].append(tree_id)
            acc["target_nodeids"].append(my)
            acc["target_ids"].append(0)
            acc["target_weights"].append(float(node.get("leaf_value", 0.0)))
            return my
        if node.get("decision_type", "<=") != "<=":
            raise ValueError(f"unsupported split {node.get('decision_type')!r} (categorical?)")
        if node.get("missing_type") == "Zero":
            raise ValueError("zero-as-missing splits are not supported")
        idx = len(acc["nodes_modes"])
        acc["nodes_modes"].append("BRANCH_LEQ")
        acc["nodes_featureids"].append(int(node["split_feature"]))
        acc["nodes_values"].append(float(node["threshold"]))
        acc["nodes_truenodeids"].append(0)
        acc["nodes_falsenodeids"].append(0)
        acc["nodes_missing_value_tracks_true"].append(1 if node.get("default_left") else 0)
        left = visit(node["left_child"])
        right = visit(node["right_child"])
        acc["nodes_truenodeids"][idx] = left
        acc["nodes_falsenodeids"][idx] = right
        return my

    visit(tree["tree_structure"])


def lightgbm_to_onnx(model_json: dict[str, Any]) -> bytes:
    """Serialized ONNX model: input `input` float64 [N, F] -> output `probability` float32 [N, 1]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if model_json.get("num_class", 1) != 1 or not str(model_json.get("objective", "")).startswith("binary"):
        raise ValueError(f"only binary models are exported (objective {model_json.get('objective')!r})")
    n_features = int(model_json["max_feature_idx"]) + 1
    keys = [
        "nodes_treeids",
        "nodes_nodeids",
        "nodes_modes",
        "nodes_featureids",
        "nodes_values",
        "nodes_truenodeids",
        "nodes_falsenodeids",
        "nodes_missing_value_tracks_true",
        "target_treeids",
        "target_nodeids",
        "target_ids",
        "target_weights",
    ]
    acc: dict[str, list[Any]] = {k: [] for k in keys}
    for t in model_json["tree_info"]:
        _walk(t, int(t["tree_index"]), acc)
    values = np.asarray(acc.pop("nodes_values"), dtype=np.float64)
    weights = np.asarray(acc.pop("target_weights"), dtype=np.float64)
    node = helper.make_node(
        "TreeEnsembleRegressor",
        ["input"],
        ["raw"],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        nodes_values_as_tensor=numpy_helper.from_array(values, "nodes_values"),
        target_weights_as_tensor=numpy_helper.from_array(weights, "target_weights"),
        **acc,  # type: ignore[arg-type]
    )
    sig = helper.make_node("Sigmoid", ["raw"], ["probability"])
    graph = helper.make_graph(
        [node, sig],
        "lightgbm_binary",
        [helper.make_tensor_value_info("input", TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)], ir_version=9
    )
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
