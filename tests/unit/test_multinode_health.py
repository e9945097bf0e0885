"""`mld-config nodes` health from a heartbeat, its lease and the last config result."""

from __future__ import annotations

import pytest

from libs.common.zmqio import SocketSettings
from libs.etcd_client.cli import node_health

pytestmark = pytest.mark.unit
HB = {"status": "running", "pending_restart": []}


def test_health_from_heartbeat_lease_and_config_status() -> None:
    assert node_health(HB, 9, 10, {"result": "APPLIED"}) == "healthy"
    assert node_health(HB, 2, 10, {"result": "APPLIED"}) == "stale"  # two beats missed
    assert node_health({**HB, "pending_restart": ["input"]}, 9, 10, None) == "degraded"
    assert node_health({**HB, "status": "running (last config change failed)"}, 9, 10, None) == "degraded"
    assert node_health(HB, 9, 10, {"result": "REJECTED"}) == "degraded"
    assert node_health(HB, -1, 0, None) == "healthy"  # no lease information: judged by its own status


def test_extra_endpoints_only_on_the_connecting_side() -> None:
    s = SocketSettings(endpoint="tcp://198.18.0.11:5571", extra_endpoints=("tcp://198.18.0.12:5571",))
    assert s.extra_endpoints == ("tcp://198.18.0.12:5571",)
    with pytest.raises(ValueError, match="extra_endpoints"):
        SocketSettings(endpoint="tcp://198.18.0.1:5571", bind=True, extra_endpoints=("tcp://x:1",))
