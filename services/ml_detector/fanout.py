"""Which firewall agents get an event when the detector serves several nodes.

`drop_fanout = "all"`: a DROP is sent to the firewall of every node (an attacker seen at one site
is blocked at every site); `"origin"`: only to the node whose sensor saw the flow. Every other
decision goes to the origin node only (its firewall counts decisions). An event whose origin
node has no configured firewall goes to every firewall, so a block is never lost to a typo in
`node_id`; it is counted as unrouted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

FanoutPolicy = Literal["all", "origin"]


def targets(origin: str, drop: bool, nodes: Sequence[str], policy: FanoutPolicy) -> tuple[list[str], bool]:
    """(nodes whose firewall gets the event, whether the origin node was unknown)."""
    if drop and policy == "all":
        return list(nodes), origin not in nodes
    if origin in nodes:
        return [origin], False
    return list(nodes), True
