from ml_defender.v1 import flow_pb2 as _flow_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Classification(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLASSIFICATION_UNSPECIFIED: _ClassVar[Classification]
    CLASSIFICATION_BENIGN: _ClassVar[Classification]
    CLASSIFICATION_CONSENSUS: _ClassVar[Classification]
    CLASSIFICATION_DIVERGENCE: _ClassVar[Classification]
    CLASSIFICATION_FAST_ONLY: _ClassVar[Classification]
    CLASSIFICATION_ML_ONLY: _ClassVar[Classification]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_BENIGN: _ClassVar[Verdict]
    VERDICT_SUSPICIOUS: _ClassVar[Verdict]
    VERDICT_MALICIOUS: _ClassVar[Verdict]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_ALERT: _ClassVar[Decision]
    DECISION_DROP: _ClassVar[Decision]
CLASSIFICATION_UNSPECIFIED: Classification
CLASSIFICATION_BENIGN: Classification
CLASSIFICATION_CONSENSUS: Classification
CLASSIFICATION_DIVERGENCE: Classification
CLASSIFICATION_FAST_ONLY: Classification
CLASSIFICATION_ML_ONLY: Classification
VERDICT_UNSPECIFIED: Verdict
VERDICT_BENIGN: Verdict
VERDICT_SUSPICIOUS: Verdict
VERDICT_MALICIOUS: Verdict
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_ALERT: Decision
DECISION_DROP: Decision

class FeatureContribution(_message.Message):
    __slots__ = ("feature", "value", "contribution", "model")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    feature: str
    value: float
    contribution: float
    model: str
    def __init__(self, feature: _Optional[str] = ..., value: _Optional[float] = ..., contribution: _Optional[float] = ..., model: _Optional[str] = ...) -> None: ...

class Thresholds(_message.Message):
    __slots__ = ("drop", "alert", "divergence", "rag_final", "consensus_ml")
    DROP_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    RAG_FINAL_FIELD_NUMBER: _ClassVar[int]
    CONSENSUS_ML_FIELD_NUMBER: _ClassVar[int]
    drop: float
    alert: float
    divergence: float
    rag_final: float
    consensus_ml: float
    def __init__(self, drop: _Optional[float] = ..., alert: _Optional[float] = ..., divergence: _Optional[float] = ..., rag_final: _Optional[float] = ..., consensus_ml: _Optional[float] = ...) -> None: ...

class StageTimestamps(_message.Message):
    __slots__ = ("captured_ns", "exported_ns", "scored_ns", "logged_ns")
    CAPTURED_NS_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_NS_FIELD_NUMBER: _ClassVar[int]
    SCORED_NS_FIELD_NUMBER: _ClassVar[int]
    LOGGED_NS_FIELD_NUMBER: _ClassVar[int]
    captured_ns: int
    exported_ns: int
    scored_ns: int
    logged_ns: int
    def __init__(self, captured_ns: _Optional[int] = ..., exported_ns: _Optional[int] = ..., scored_ns: _Optional[int] = ..., logged_ns: _Optional[int] = ...) -> None: ...

class DetectionEvent(_message.Message):
    __slots__ = ("event_id", "flow", "fast_score", "rules", "ml_scores", "ml_score", "final_score", "divergence", "classification", "verdict", "decision", "attack_type", "rag_required", "explanation", "model_versions", "config_revision", "thresholds", "timestamps", "node_id")
    class MlScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    FAST_SCORE_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    ML_SCORES_FIELD_NUMBER: _ClassVar[int]
    ML_SCORE_FIELD_NUMBER: _ClassVar[int]
    FINAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    ATTACK_TYPE_FIELD_NUMBER: _ClassVar[int]
    RAG_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_REVISION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    flow: _flow_pb2.FlowRecord
    fast_score: float
    rules: _containers.RepeatedScalarFieldContainer[str]
    ml_scores: _containers.ScalarMap[str, float]
    ml_score: float
    final_score: float
    divergence: float
    classification: Classification
    verdict: Verdict
    decision: Decision
    attack_type: str
    rag_required: bool
    explanation: _containers.RepeatedCompositeFieldContainer[FeatureContribution]
    model_versions: _containers.ScalarMap[str, str]
    config_revision: int
    thresholds: Thresholds
    timestamps: StageTimestamps
    node_id: str
    def __init__(self, event_id: _Optional[str] = ..., flow: _Optional[_Union[_flow_pb2.FlowRecord, _Mapping]] = ..., fast_score: _Optional[float] = ..., rules: _Optional[_Iterable[str]] = ..., ml_scores: _Optional[_Mapping[str, float]] = ..., ml_score: _Optional[float] = ..., final_score: _Optional[float] = ..., divergence: _Optional[float] = ..., classification: _Optional[_Union[Classification, str]] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., decision: _Optional[_Union[Decision, str]] = ..., attack_type: _Optional[str] = ..., rag_required: _Optional[bool] = ..., explanation: _Optional[_Iterable[_Union[FeatureContribution, _Mapping]]] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., config_revision: _Optional[int] = ..., thresholds: _Optional[_Union[Thresholds, _Mapping]] = ..., timestamps: _Optional[_Union[StageTimestamps, _Mapping]] = ..., node_id: _Optional[str] = ...) -> None: ...
