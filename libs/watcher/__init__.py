"""Live configuration for services: `ConfigRuntime` (see README.md), the click options, pure diffs."""

from libs.etcd_client.settings import EtcdSettings
from libs.watcher.diff import Change, apply_changes, deep_merge, diff, flatten, is_hot, split
from libs.watcher.options import build_etcd_settings, etcd_options
from libs.watcher.runtime import ConfigRuntime

__all__ = [
    "Change",
    "ConfigRuntime",
    "EtcdSettings",
    "apply_changes",
    "build_etcd_settings",
    "deep_merge",
    "diff",
    "etcd_options",
    "flatten",
    "is_hot",
    "split",
]
