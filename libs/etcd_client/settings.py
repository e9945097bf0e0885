"""Where etcd is and how a service talks to it; one immutable object built from CLI options or env."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from libs.etcd_client.client import DEFAULT_ENDPOINT, DEFAULT_PREFIX


class EtcdSettings(BaseModel, extra="forbid", frozen=True):
    """etcd connection and live-configuration behaviour (restart-required: read once at start)."""

    endpoint: str = Field(DEFAULT_ENDPOINT, description="http://HOST:PORT of etcd's client URL")
    prefix: str = Field(DEFAULT_PREFIX, description="root of every key this project uses")
    key_file: Path | None = Field(None, description="0600 file with the ChaCha20-Poly1305 key (64 hex chars)")
    timeout_s: float = Field(2.0, gt=0, le=60, description="per-request timeout")
    lease_ttl_s: int = Field(10, ge=2, le=300, description="TTL of the nodes/<node>/<service> heartbeat")
    backoff_initial_s: float = Field(0.1, gt=0, le=10, description="first reconnect delay; doubles each try")
    backoff_max_s: float = Field(5.0, gt=0, le=120, description="longest reconnect delay")
    events_endpoint: str | None = Field(
        "tcp://127.0.0.1:5573", description="rag-logger PULL endpoint for ConfigChange events; null disables"
    )
    cache_dir: Path = Field(Path("var/config-cache"), description="last good configuration per service/node")
