"""Loading a service's pydantic settings from a JSON file, or the model's defaults.

Validation happens before any resource is opened (two-phase configuration); a failure becomes a
ConfigError that names the file, the field and the bad value.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from libs.common.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: `field.path: message (got value)`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<document>"
        got = err.get("input")
        got_text = json.dumps(got, default=str) if not isinstance(got, dict) else "{...}"
        if len(got_text) > 80:
            got_text = got_text[:77] + "..."
        lines.append(f"{loc}: {err['msg']} (got {got_text})")
    return "; ".join(lines)


def validate_settings(model: type[M], data: Any, where: str) -> M:
    """Validate a decoded document against `model`, raising ConfigError with every problem."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"settings must be a JSON object, got {type(data).__name__}", where, "write a JSON object"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid settings: {describe_validation_error(exc)}",
            where,
            f"correct the listed fields; `show-config` prints the defaults of {model.__name__}",
        ) from None


def load_settings(model: type[M], path: Path | str | None = None) -> M:
    """Read settings from a JSON file when given, else take the model's defaults."""
    if path is None:
        return model()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("settings file not found", str(p), "pass an existing file with --config") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read settings: {exc.strerror}", str(p), "check the path and permissions"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            str(p),
            "fix the JSON syntax",
        ) from None
    return validate_settings(model, data, str(p))


def settings_json(settings: BaseModel) -> str:
    """Settings as pretty JSON, the same form `load_settings` reads back."""
    return settings.model_dump_json(indent=2)


class MetricsSettings(BaseModel, extra="forbid"):
    """Where `/metrics` is served; port 0 turns it off."""

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)


def default_node_id() -> str:
    return socket.gethostname()


class ServiceSettings(BaseModel, extra="forbid"):
    """Fields every service has; each service's model extends this one."""

    node_id: str = Field(default_factory=default_node_id, min_length=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
