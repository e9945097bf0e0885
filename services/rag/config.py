"""Settings of the rag service: one immutable pydantic object that `app.py` can swap atomically."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.common.settings import MetricsSettings, ServiceSettings
from services.rag.tuning import DEFAULT_BOUNDS, STEPPED

SERVICE = "rag"
PROG = "mld-rag"


class EmbedderSettings(BaseModel):
    """The ONNX sentence embedder; `model_dir` None means ~/.cache/ml-defender/rag."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model_dir: Path | None = None
    threads: int = Field(
        1,
        ge=0,
        le=64,
        description="onnxruntime intra-op threads; 0 = all cores (one is fastest for a question on a busy node)",
    )
    batch_size: int = Field(64, ge=1, le=1024)
    max_tokens: int = Field(128, ge=16, le=256, description="longer texts are truncated (model limit 256)")


class IndexSettings(BaseModel):
    """Where the FAISS index and the SQLite tables live, and when to switch from flat to HNSW."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dir: Path = Path("var/rag/index")
    hnsw_min_texts: int = Field(
        50_000, ge=1, description="flat (exact) below this many distinct texts, HNSW from it"
    )
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_search: int = Field(128, ge=8, le=4096)
    save_interval_s: float = Field(5.0, gt=0, le=3600, description="FAISS snapshot at most this often")


class IngestSettings(BaseModel):
    """Following the rag-logger's artifacts directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    artifacts_root: Path = Path("logs/rag/artifacts")
    poll_interval_ms: int = Field(
        200, ge=10, le=60_000, description="directory poll period (new pairs < 1 s)"
    )
    full_rescan_s: float = Field(
        60.0, gt=0, description="re-list every day dir even if its mtime did not move"
    )
    batch_events: int = Field(512, ge=1, le=100_000, description="events per SQLite transaction")


class QuerySettings(BaseModel):
    """The question socket and the meaning of the score words."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    endpoint: str = "tcp://127.0.0.1:5574"
    client_timeout_ms: int = Field(3000, ge=10, le=600_000, description="CLI waits this long for the service")
    default_limit: int = Field(10, ge=1, le=10_000)
    max_limit: int = Field(1000, ge=1, le=100_000)
    high_divergence: float = Field(
        0.30, ge=0, le=1, description="'high divergence' means divergence above this"
    )
    high_score: float = Field(0.85, ge=0, le=1, description="'high score', 'critical'")
    fast_fired: float = Field(0.5, ge=0, le=1, description="the fast detector 'triggered' at or above this")
    ml_disagree: float = Field(0.5, ge=0, le=1, description="ML 'disagreed' below this")
    min_similarity: float = Field(0.0, ge=-1, le=1, description="semantic answers below this are dropped")


class TuningSettings(BaseModel):
    """etcd keys, step sizes and safe bounds of accelerate/decelerate/optimize."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    etcd_endpoint: str = "http://127.0.0.1:2379"
    prefix: str = "/ml-defender/v1"
    detector_service: str = "ml-detector"
    sniffer_service: str = "sniffer"
    step: float = Field(0.05, gt=0, le=0.2, description="one accelerate/decelerate step on every threshold")
    bounds: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_BOUNDS),
        description="[low, high] per detector threshold; a step that would leave them is refused",
    )
    cas_retries: int = Field(3, ge=1, le=20)

    @model_validator(mode="after")
    def _bounds(self) -> TuningSettings:
        for name, (lo, hi) in self.bounds.items():
            if name not in STEPPED:
                raise ValueError(
                    f"tuning.bounds.{name}: not a stepped threshold (one of {', '.join(STEPPED)})"
                )
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"tuning.bounds.{name}: need 0 <= low < high <= 1, got [{lo}, {hi}]")
        return self


class RagSettings(ServiceSettings):
    """Everything the rag service reads; validated before any resource is opened."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    metrics: MetricsSettings = MetricsSettings(port=9104)
    embedder: EmbedderSettings = EmbedderSettings()
    index: IndexSettings = IndexSettings()
    ingest: IngestSettings = IngestSettings()
    query: QuerySettings = QuerySettings()
    tuning: TuningSettings = TuningSettings()


# Applied live by swapping the settings object; everything else needs a restart (sockets, paths, model).
HOT_FIELDS: tuple[str, ...] = (
    "log_level",
    "ingest.poll_interval_ms",
    "ingest.full_rescan_s",
    "ingest.batch_events",
    "index.save_interval_s",
    "index.hnsw_ef_search",
    "query.client_timeout_ms",
    "query.default_limit",
    "query.max_limit",
    "query.high_divergence",
    "query.high_score",
    "query.fast_fired",
    "query.ml_disagree",
    "query.min_similarity",
    "tuning",
)
