"""Settings of the ml-detector: thresholds (hot), models and engine (hot, validated before the swap),
endpoints (restart). One immutable pydantic object, swapped whole by `app.py` on a reload.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.common.settings import MetricsSettings, ServiceSettings
from libs.common.zmqio import SocketSettings
from services.ml_detector.fanout import FanoutPolicy

MODEL_NAMES: tuple[str, ...] = ("ddos", "ransomware", "traffic", "internal")
Engine = Literal["lightgbm", "lleaves", "onnx"]

# Dotted paths that `app.py` applies live; anything else needs a restart.
HOT_FIELDS: tuple[str, ...] = (
    "log_level",
    "thresholds.*",
    "models.*",
    "engine",
    "explain.*",
    "context.window_s",
    "batch.max_flows",
    "batch.max_wait_ms",
    "drop_fanout",
)
RESTART_FIELDS: tuple[str, ...] = (
    "node_id",
    "metrics.*",
    "input.*",
    "firewall.*",
    "rag_logger.*",
    "firewall_nodes.*",
    "models_dir",
)


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThresholdSettings(Frozen):
    """DESIGN.md section 3; every number live-tunable (rag accelerate/decelerate edit these)."""

    drop: float = Field(0.70, ge=0.0, le=1.0, description="final >= drop -> MALICIOUS / DROP")
    alert: float = Field(0.50, ge=0.0, le=1.0, description="alert <= final < drop -> SUSPICIOUS / ALERT")
    divergence: float = Field(0.30, ge=0.0, le=1.0, description="|fast - ml| > this -> DIVERGENCE, rag")
    rag_final: float = Field(0.85, ge=0.0, le=1.0, description="final >= this -> rag_required")
    consensus_ml: float = Field(0.50, ge=0.0, le=1.0, description="fast fired and ml > this -> CONSENSUS")
    fast_fired: float = Field(
        0.50, ge=0.0, le=1.0, description="fast >= this counts as 'the fast detector fired'"
    )
    ml_fired: float = Field(0.50, ge=0.0, le=1.0, description="ml >= this counts as 'ML fired' (ML_ONLY)")

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdSettings:
        if self.alert > self.drop:
            raise ValueError(f"alert ({self.alert}) must be <= drop ({self.drop})")
        return self


class ModelSettings(Frozen):
    """One detector; `path` is relative to models_dir unless absolute."""

    path: str
    enabled: bool = True
    version: str = Field("", description="expected sha256 of model.txt; empty accepts any")
    engine: Engine | None = Field(
        None, description="inference engine for this model; None = the global `engine`"
    )


def default_models() -> dict[str, ModelSettings]:
    return {name: ModelSettings(path=f"{name}/model.txt") for name in MODEL_NAMES}


class ContextSettings(Frozen):
    """Per-source context features (services/ml_detector/context.py); must match training."""

    window_s: float = Field(60.0, gt=0, description="look-back window over the same source's flows")
    max_sources: int = Field(65_536, ge=16, description="LRU bound on tracked sources")
    max_flows_per_source: int = Field(256, ge=8, description="flows kept per source")


class ExplainSettings(Frozen):
    """pred_contrib (TreeSHAP) costs ~0.1-1 ms per flow and model: a per-batch budget keeps a flood
    of kept events from stalling scoring; the strongest events are explained first and the rest
    are counted in mld_ml_detector_unexplained_events_total."""

    top_k: int = Field(5, ge=0, le=62, description="feature contributions per kept event (0 = off)")
    max_per_batch: int = Field(256, ge=0, description="kept events explained per batch, highest final first")


class BatchSettings(Frozen):
    max_flows: int = Field(4096, ge=1, description="flows scored in one model call")
    max_wait_ms: int = Field(2, ge=0, description="how long to gather more batches before scoring")


class DetectorSettings(ServiceSettings):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: MetricsSettings = MetricsSettings(port=9102)
    thresholds: ThresholdSettings = ThresholdSettings()
    models_dir: str = Field("models", description="root of model directories (relative to the working dir)")
    models: dict[str, ModelSettings] = Field(default_factory=default_models)
    engine: Engine = "lightgbm"
    engine_cache_dir: str = Field("var/cache/ml_detector", description="compiled lleaves objects")
    context: ContextSettings = ContextSettings()
    explain: ExplainSettings = ExplainSettings()
    batch: BatchSettings = BatchSettings()
    input: SocketSettings = SocketSettings(endpoint="tcp://127.0.0.1:5571")
    firewall: SocketSettings = SocketSettings(endpoint="tcp://127.0.0.1:5572")
    rag_logger: SocketSettings = SocketSettings(endpoint="tcp://127.0.0.1:5573")
    firewall_nodes: dict[str, SocketSettings] = Field(
        default_factory=dict,
        description="multi-node: node id -> that node's firewall endpoint (replaces `firewall` when set)",
    )
    drop_fanout: FanoutPolicy = Field(
        "all", description="DROP goes to the firewall of every node (all) or of the node that saw it (origin)"
    )

    @model_validator(mode="after")
    def _some_model(self) -> DetectorSettings:
        if self.models and not any(m.enabled for m in self.models.values()):
            raise ValueError("at least one model must be enabled (models.<name>.enabled)")
        return self
