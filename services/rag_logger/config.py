"""Settings of the rag-logger: one immutable pydantic object that `app.py` can swap atomically.

HOT_FIELDS can change while running (the writer reads the current object at every batch);
every other field needs a restart (sockets, metrics endpoint, artifacts root, queue capacity).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.common.settings import MetricsSettings, ServiceSettings
from libs.common.zmqio import SocketSettings

SERVICE = "rag-logger"
METRICS_SERVICE = "rag_logger"


class KeepPolicy(BaseModel):
    """Which DetectionEvents become artifacts (DESIGN.md section 3); ConfigChanges are always kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rag_required: bool = Field(True, description="keep every event the detector marked rag_required")
    final_min: float = Field(0.70, ge=0.0, le=1.0, description="keep when final_score >= this")
    divergence_min: float = Field(0.30, ge=0.0, le=1.0, description="keep when divergence >= this")
    keep_all: bool = Field(False, description="keep every event (debugging, benchmarks)")


class CommitSettings(BaseModel):
    """Group commit: one directory fsync for up to `max_batch_events` events or `max_delay_ms`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_events: int = Field(4096, ge=1, le=100_000)
    max_delay_ms: float = Field(5.0, ge=0.0, le=1000.0, description="wait this long for a batch to fill")
    fsync: bool = Field(True, description="fsync files and directories; false only for benchmarks")
    sync_method: Literal["syncfs", "fdatasync"] = Field(
        "syncfs",
        description="make a batch's file data durable with one syncfs (fast on a filesystem of its own) "
        "or one fdatasync per file (when the filesystem is shared with heavy writers)",
    )
    io_threads: int = Field(8, ge=1, le=64, description="threads syncing files with sync_method fdatasync")
    sync_group_events: int = Field(
        512,
        ge=1,
        le=50_000,
        description="events per syncfs: the next group is written while one group's syncfs runs",
    )


class StorageSettings(BaseModel):
    """What the writer does when the artifacts filesystem is full or unwritable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_free_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="treat the disk as full below this much free space (0: off)"
    )
    retry_interval_ms: int = Field(500, ge=10, le=60_000, description="how often a blocked writer retries")
    drain_timeout_s: float = Field(
        10.0, ge=0.0, le=3600.0, description="how long a stop waits for a blocked disk"
    )


class JsonlSettings(BaseModel):
    """The daily `events-YYYY-MM-DD.jsonl`, appended after the artifacts are committed (best effort)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    fsync: bool = Field(False, description="fsync the .jsonl after each batch (the artifacts are the truth)")
    max_open_files: int = Field(4, ge=1, le=64, description="open .jsonl files kept (one per day written)")


def default_writer_processes(cpus: int | None) -> int:
    """Two writer processes where there are two CPUs to run them; on one CPU they only cost memory."""
    return 2 if (cpus or 1) >= 2 else 0


class RagLoggerSettings(ServiceSettings):
    """Settings of `mld-rag-logger run`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: SocketSettings = SocketSettings(endpoint="tcp://127.0.0.1:5573", bind=True)
    metrics: MetricsSettings = MetricsSettings(port=9103)
    artifacts_root: Path = Field(Path("logs/rag/artifacts"), description="relative to the working directory")
    queue_max_events: int = Field(10_000, ge=1, le=10_000_000, description="events waiting for the writer")
    writer_processes: int = Field(
        default_factory=lambda: default_writer_processes(os.cpu_count()),
        ge=0,
        le=16,
        description="child processes that derive the .json and create, sync and name the files (events "
        "spread over them by id), so that work uses several cores; 0 keeps the writer a thread of the "
        "service. Default: 2 with two or more CPUs, 0 on one (each process costs ~30 MB)",
    )
    keep: KeepPolicy = KeepPolicy()
    commit: CommitSettings = CommitSettings()
    storage: StorageSettings = StorageSettings()
    jsonl: JsonlSettings = JsonlSettings()


HOT_FIELDS: tuple[str, ...] = ("log_level", "keep", "commit", "storage", "jsonl")
"""Top-level fields applied live; the rest (node_id, input, metrics, artifacts_root, queue_max_events,
writer_processes) need a restart."""
