from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConfigResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONFIG_RESULT_UNSPECIFIED: _ClassVar[ConfigResult]
    CONFIG_RESULT_APPLIED: _ClassVar[ConfigResult]
    CONFIG_RESULT_REJECTED: _ClassVar[ConfigResult]
    CONFIG_RESULT_ROLLED_BACK: _ClassVar[ConfigResult]
CONFIG_RESULT_UNSPECIFIED: ConfigResult
CONFIG_RESULT_APPLIED: ConfigResult
CONFIG_RESULT_REJECTED: ConfigResult
CONFIG_RESULT_ROLLED_BACK: ConfigResult

class FieldChange(_message.Message):
    __slots__ = ("path", "old_json", "new_json", "hot")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OLD_JSON_FIELD_NUMBER: _ClassVar[int]
    NEW_JSON_FIELD_NUMBER: _ClassVar[int]
    HOT_FIELD_NUMBER: _ClassVar[int]
    path: str
    old_json: str
    new_json: str
    hot: bool
    def __init__(self, path: _Optional[str] = ..., old_json: _Optional[str] = ..., new_json: _Optional[str] = ..., hot: _Optional[bool] = ...) -> None: ...

class ConfigChange(_message.Message):
    __slots__ = ("service", "node", "old_revision", "new_revision", "diff", "result", "error", "timestamp_ns", "change_id")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    OLD_REVISION_FIELD_NUMBER: _ClassVar[int]
    NEW_REVISION_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    CHANGE_ID_FIELD_NUMBER: _ClassVar[int]
    service: str
    node: str
    old_revision: int
    new_revision: int
    diff: _containers.RepeatedCompositeFieldContainer[FieldChange]
    result: ConfigResult
    error: str
    timestamp_ns: int
    change_id: str
    def __init__(self, service: _Optional[str] = ..., node: _Optional[str] = ..., old_revision: _Optional[int] = ..., new_revision: _Optional[int] = ..., diff: _Optional[_Iterable[_Union[FieldChange, _Mapping]]] = ..., result: _Optional[_Union[ConfigResult, str]] = ..., error: _Optional[str] = ..., timestamp_ns: _Optional[int] = ..., change_id: _Optional[str] = ...) -> None: ...
