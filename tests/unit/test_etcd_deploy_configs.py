"""deploy/config/<service>.json (loaded into etcd by the lab) must validate against each service's model."""

from __future__ import annotations

import json

import pytest

from helpers import REPO
from libs.common.settings import validate_settings
from libs.etcd_client.edit import LOCAL_FIELDS, SERVICE_MODELS, service_model

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("service", sorted(SERVICE_MODELS))
def test_default_document_validates_and_has_no_node_identity(service: str) -> None:
    path = REPO / "deploy" / "config" / f"{service}.json"
    doc = json.loads(path.read_text())
    model, hot = service_model(service)
    validate_settings(model, doc, str(path))
    assert not LOCAL_FIELDS & doc.keys()
    assert hot, f"{service} declares no HOT_FIELDS"
