"""etcd access for every service: JSON values in optional zstd/ChaCha20-Poly1305 envelopes, CAS,
leases and a watch that never misses an update. `testing.FakeEtcd` has the same interface."""

from libs.etcd_client.client import (
    DEFAULT_ENDPOINT,
    DEFAULT_PREFIX,
    EtcdClient,
    KeepAlive,
    KeyValue,
    Watch,
    WatchEvent,
    validate_schema,
)
from libs.etcd_client.errors import CasConflict, EnvelopeError, EtcdError, EtcdUnavailable, KeyFileError

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_PREFIX",
    "CasConflict",
    "EnvelopeError",
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "KeepAlive",
    "KeyFileError",
    "KeyValue",
    "Watch",
    "WatchEvent",
    "validate_schema",
]
