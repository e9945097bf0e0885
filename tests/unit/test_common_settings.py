"""Settings loading: every failure names the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from libs.common.errors import ConfigError
from libs.common.settings import ServiceSettings, load_settings, settings_json

pytestmark = pytest.mark.unit


class Demo(ServiceSettings):
    threshold: float = Field(0.7, ge=0.0, le=1.0)


def test_defaults_when_no_file() -> None:
    s = load_settings(Demo, None)
    assert s.threshold == 0.7 and s.node_id


def test_round_trip_through_show_config_form(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text(settings_json(Demo(threshold=0.5)))
    assert load_settings(Demo, p).threshold == 0.5


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"threshold": 2}', "threshold: Input should be less than or equal to 1"),
        ('{"threshold": "high"}', "threshold"),
        ('{"thresold": 0.5}', "thresold: Extra inputs are not permitted"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_invalid_documents_say_what_and_where(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(Demo, p)
    assert needle in info.value.message
    assert str(p) in info.value.message
    assert info.value.exit_code == 2


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="settings file not found"):
        load_settings(Demo, tmp_path / "nope.json")
