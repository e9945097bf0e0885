"""Block-target validation and the allow-list: what may and may not be banned."""

from __future__ import annotations

import ipaddress

import pytest

from services.firewall.errors import TargetError
from services.firewall.targets import AllowList, parse_target, peer_host

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.18.0.1", "198.18.0.1/32"),
        (" 198.18.0.1 ", "198.18.0.1/32"),
        ("198.18.4.0/24", "198.18.4.0/24"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("2001:DB8:0:1::/64", "2001:db8:0:1::/64"),
        ("::ffff:198.18.0.9", "198.18.0.9/32"),  # IPv4-mapped: one ban for both forms
    ],
)
def test_valid_targets_are_normalised(text: str, expected: str) -> None:
    assert parse_target(text, 16, 32) == ipaddress.ip_network(expected)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "is empty"),
        ("198.18.0.256", "not an IP address"),
        ("example.org", "not an IP address"),
        ("198.18.0.1/24", "host bits set"),
        ("198.18.0.0/33", "not a valid prefix"),
        ("2001:db8::/129", "not a valid prefix"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("198.0.0.0/8", "wider than /16"),
        ("2001::/16", "wider than /32"),
        ("fe80::1%eth0", "zone index"),
    ],
)
def test_invalid_targets_are_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(TargetError) as exc:
        parse_target(text, 16, 32)
    assert exc.value.reason == "invalid"
    assert why in exc.value.message
    assert exc.value.fix  # every refusal says how to fix it


def test_host_bits_error_suggests_the_network() -> None:
    with pytest.raises(TargetError, match=r"use 198\.18\.0\.0/24"):
        parse_target("198.18.0.9/24")


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "169.254.10.1",
        "fe80::1",
        "198.18.7.7",
        "198.18.0.0/16",
        "2001:db8:ff::9",
    ],
)
def test_allow_list_refuses_overlapping_targets(text: str) -> None:
    allow = AllowList([ipaddress.ip_network("198.18.7.7/32"), ipaddress.ip_network("2001:db8:ff::/48")])
    net = ipaddress.ip_network(text)
    with pytest.raises(TargetError) as exc:
        allow.check(net)
    assert exc.value.reason == "allow_listed"


def test_allow_list_lets_other_targets_through() -> None:
    allow = AllowList([ipaddress.ip_network("198.18.7.7/32")])
    for text in ("198.18.7.8", "198.19.0.0/16", "2001:db8::1"):
        allow.check(ipaddress.ip_network(text))
    assert allow.match(ipaddress.ip_network("198.18.0.0/16")) == ipaddress.ip_network("198.18.7.7/32")


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("http://198.18.0.2:2379", "198.18.0.2"),
        ("tcp://[2001:db8::2]:5572", "2001:db8::2"),
        ("198.18.0.2:2379", "198.18.0.2"),
        ("[2001:db8::3]:2379", "2001:db8::3"),
        ("2001:db8::4", "2001:db8::4"),
        ("etcd.local", "etcd.local"),
    ],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host
