from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EndReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    END_REASON_UNSPECIFIED: _ClassVar[EndReason]
    END_REASON_IDLE: _ClassVar[EndReason]
    END_REASON_ACTIVE: _ClassVar[EndReason]
    END_REASON_FIN: _ClassVar[EndReason]
    END_REASON_RST: _ClassVar[EndReason]
    END_REASON_EVICTED: _ClassVar[EndReason]
    END_REASON_WINDOW: _ClassVar[EndReason]
END_REASON_UNSPECIFIED: EndReason
END_REASON_IDLE: EndReason
END_REASON_ACTIVE: EndReason
END_REASON_FIN: EndReason
END_REASON_RST: EndReason
END_REASON_EVICTED: EndReason
END_REASON_WINDOW: EndReason

class FlowKey(_message.Message):
    __slots__ = ("src_addr", "dst_addr", "src_port", "dst_port", "protocol", "vlan_id")
    SRC_ADDR_FIELD_NUMBER: _ClassVar[int]
    DST_ADDR_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    VLAN_ID_FIELD_NUMBER: _ClassVar[int]
    src_addr: bytes
    dst_addr: bytes
    src_port: int
    dst_port: int
    protocol: int
    vlan_id: int
    def __init__(self, src_addr: _Optional[bytes] = ..., dst_addr: _Optional[bytes] = ..., src_port: _Optional[int] = ..., dst_port: _Optional[int] = ..., protocol: _Optional[int] = ..., vlan_id: _Optional[int] = ...) -> None: ...

class FlowFeatures(_message.Message):
    __slots__ = ("bidirectional_packets", "bidirectional_bytes", "bidirectional_duration_ms", "bidirectional_min_ps", "bidirectional_mean_ps", "bidirectional_stddev_ps", "bidirectional_max_ps", "bidirectional_min_piat_ms", "bidirectional_mean_piat_ms", "bidirectional_stddev_piat_ms", "bidirectional_max_piat_ms", "bidirectional_syn_packets", "bidirectional_ack_packets", "bidirectional_psh_packets", "bidirectional_rst_packets", "bidirectional_fin_packets", "bidirectional_urg_packets", "src2dst_packets", "src2dst_bytes", "src2dst_duration_ms", "src2dst_min_ps", "src2dst_mean_ps", "src2dst_stddev_ps", "src2dst_max_ps", "src2dst_min_piat_ms", "src2dst_mean_piat_ms", "src2dst_stddev_piat_ms", "src2dst_max_piat_ms", "src2dst_syn_packets", "src2dst_ack_packets", "src2dst_psh_packets", "src2dst_rst_packets", "src2dst_fin_packets", "src2dst_urg_packets", "dst2src_packets", "dst2src_bytes", "dst2src_duration_ms", "dst2src_min_ps", "dst2src_mean_ps", "dst2src_stddev_ps", "dst2src_max_ps", "dst2src_min_piat_ms", "dst2src_mean_piat_ms", "dst2src_stddev_piat_ms", "dst2src_max_piat_ms", "dst2src_syn_packets", "dst2src_ack_packets", "dst2src_psh_packets", "dst2src_rst_packets", "dst2src_fin_packets", "dst2src_urg_packets", "dst_port", "protocol")
    BIDIRECTIONAL_PACKETS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_MIN_PS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_MEAN_PS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_STDDEV_PS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_MAX_PS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_MIN_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_MEAN_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_STDDEV_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_MAX_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_SYN_PACKETS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_ACK_PACKETS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_PSH_PACKETS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_RST_PACKETS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_FIN_PACKETS_FIELD_NUMBER: _ClassVar[int]
    BIDIRECTIONAL_URG_PACKETS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_PACKETS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_BYTES_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_MIN_PS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_MEAN_PS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_STDDEV_PS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_MAX_PS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_MIN_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_MEAN_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_STDDEV_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_MAX_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_SYN_PACKETS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_ACK_PACKETS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_PSH_PACKETS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_RST_PACKETS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_FIN_PACKETS_FIELD_NUMBER: _ClassVar[int]
    SRC2DST_URG_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_BYTES_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_MIN_PS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_MEAN_PS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_STDDEV_PS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_MAX_PS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_MIN_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_MEAN_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_STDDEV_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_MAX_PIAT_MS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_SYN_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_ACK_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_PSH_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_RST_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_FIN_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DST2SRC_URG_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    bidirectional_packets: int
    bidirectional_bytes: int
    bidirectional_duration_ms: float
    bidirectional_min_ps: float
    bidirectional_mean_ps: float
    bidirectional_stddev_ps: float
    bidirectional_max_ps: float
    bidirectional_min_piat_ms: float
    bidirectional_mean_piat_ms: float
    bidirectional_stddev_piat_ms: float
    bidirectional_max_piat_ms: float
    bidirectional_syn_packets: int
    bidirectional_ack_packets: int
    bidirectional_psh_packets: int
    bidirectional_rst_packets: int
    bidirectional_fin_packets: int
    bidirectional_urg_packets: int
    src2dst_packets: int
    src2dst_bytes: int
    src2dst_duration_ms: float
    src2dst_min_ps: float
    src2dst_mean_ps: float
    src2dst_stddev_ps: float
    src2dst_max_ps: float
    src2dst_min_piat_ms: float
    src2dst_mean_piat_ms: float
    src2dst_stddev_piat_ms: float
    src2dst_max_piat_ms: float
    src2dst_syn_packets: int
    src2dst_ack_packets: int
    src2dst_psh_packets: int
    src2dst_rst_packets: int
    src2dst_fin_packets: int
    src2dst_urg_packets: int
    dst2src_packets: int
    dst2src_bytes: int
    dst2src_duration_ms: float
    dst2src_min_ps: float
    dst2src_mean_ps: float
    dst2src_stddev_ps: float
    dst2src_max_ps: float
    dst2src_min_piat_ms: float
    dst2src_mean_piat_ms: float
    dst2src_stddev_piat_ms: float
    dst2src_max_piat_ms: float
    dst2src_syn_packets: int
    dst2src_ack_packets: int
    dst2src_psh_packets: int
    dst2src_rst_packets: int
    dst2src_fin_packets: int
    dst2src_urg_packets: int
    dst_port: int
    protocol: int
    def __init__(self, bidirectional_packets: _Optional[int] = ..., bidirectional_bytes: _Optional[int] = ..., bidirectional_duration_ms: _Optional[float] = ..., bidirectional_min_ps: _Optional[float] = ..., bidirectional_mean_ps: _Optional[float] = ..., bidirectional_stddev_ps: _Optional[float] = ..., bidirectional_max_ps: _Optional[float] = ..., bidirectional_min_piat_ms: _Optional[float] = ..., bidirectional_mean_piat_ms: _Optional[float] = ..., bidirectional_stddev_piat_ms: _Optional[float] = ..., bidirectional_max_piat_ms: _Optional[float] = ..., bidirectional_syn_packets: _Optional[int] = ..., bidirectional_ack_packets: _Optional[int] = ..., bidirectional_psh_packets: _Optional[int] = ..., bidirectional_rst_packets: _Optional[int] = ..., bidirectional_fin_packets: _Optional[int] = ..., bidirectional_urg_packets: _Optional[int] = ..., src2dst_packets: _Optional[int] = ..., src2dst_bytes: _Optional[int] = ..., src2dst_duration_ms: _Optional[float] = ..., src2dst_min_ps: _Optional[float] = ..., src2dst_mean_ps: _Optional[float] = ..., src2dst_stddev_ps: _Optional[float] = ..., src2dst_max_ps: _Optional[float] = ..., src2dst_min_piat_ms: _Optional[float] = ..., src2dst_mean_piat_ms: _Optional[float] = ..., src2dst_stddev_piat_ms: _Optional[float] = ..., src2dst_max_piat_ms: _Optional[float] = ..., src2dst_syn_packets: _Optional[int] = ..., src2dst_ack_packets: _Optional[int] = ..., src2dst_psh_packets: _Optional[int] = ..., src2dst_rst_packets: _Optional[int] = ..., src2dst_fin_packets: _Optional[int] = ..., src2dst_urg_packets: _Optional[int] = ..., dst2src_packets: _Optional[int] = ..., dst2src_bytes: _Optional[int] = ..., dst2src_duration_ms: _Optional[float] = ..., dst2src_min_ps: _Optional[float] = ..., dst2src_mean_ps: _Optional[float] = ..., dst2src_stddev_ps: _Optional[float] = ..., dst2src_max_ps: _Optional[float] = ..., dst2src_min_piat_ms: _Optional[float] = ..., dst2src_mean_piat_ms: _Optional[float] = ..., dst2src_stddev_piat_ms: _Optional[float] = ..., dst2src_max_piat_ms: _Optional[float] = ..., dst2src_syn_packets: _Optional[int] = ..., dst2src_ack_packets: _Optional[int] = ..., dst2src_psh_packets: _Optional[int] = ..., dst2src_rst_packets: _Optional[int] = ..., dst2src_fin_packets: _Optional[int] = ..., dst2src_urg_packets: _Optional[int] = ..., dst_port: _Optional[int] = ..., protocol: _Optional[int] = ...) -> None: ...

class FlowRecord(_message.Message):
    __slots__ = ("flow_id", "community_id", "key", "first_seen_ns", "last_seen_ns", "end_reason", "node_id", "interface", "features", "captured_ns", "exported_ns")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    COMMUNITY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_NS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_NS_FIELD_NUMBER: _ClassVar[int]
    END_REASON_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_NS_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_NS_FIELD_NUMBER: _ClassVar[int]
    flow_id: int
    community_id: str
    key: FlowKey
    first_seen_ns: int
    last_seen_ns: int
    end_reason: EndReason
    node_id: str
    interface: str
    features: FlowFeatures
    captured_ns: int
    exported_ns: int
    def __init__(self, flow_id: _Optional[int] = ..., community_id: _Optional[str] = ..., key: _Optional[_Union[FlowKey, _Mapping]] = ..., first_seen_ns: _Optional[int] = ..., last_seen_ns: _Optional[int] = ..., end_reason: _Optional[_Union[EndReason, str]] = ..., node_id: _Optional[str] = ..., interface: _Optional[str] = ..., features: _Optional[_Union[FlowFeatures, _Mapping]] = ..., captured_ns: _Optional[int] = ..., exported_ns: _Optional[int] = ...) -> None: ...

class FastResult(_message.Message):
    __slots__ = ("score", "rules")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    score: float
    rules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, score: _Optional[float] = ..., rules: _Optional[_Iterable[str]] = ...) -> None: ...

class FlowBatch(_message.Message):
    __slots__ = ("flows", "fast", "node_id", "sequence", "sent_ns", "batch_id")
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    FAST_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SENT_NS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[FlowRecord]
    fast: _containers.RepeatedCompositeFieldContainer[FastResult]
    node_id: str
    sequence: int
    sent_ns: int
    batch_id: str
    def __init__(self, flows: _Optional[_Iterable[_Union[FlowRecord, _Mapping]]] = ..., fast: _Optional[_Iterable[_Union[FastResult, _Mapping]]] = ..., node_id: _Optional[str] = ..., sequence: _Optional[int] = ..., sent_ns: _Optional[int] = ..., batch_id: _Optional[str] = ...) -> None: ...
