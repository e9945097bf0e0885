"""Validated, audited compare-and-swap edits of `config/<service>` — shared by `mld-config` and
tools such as `mld-rag accelerate`, so every writer validates with the service's own model first.
"""

from __future__ import annotations

import getpass
import importlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from libs.common.errors import UsageError
from libs.common.events import uuid7
from libs.common.settings import validate_settings
from libs.etcd_client.client import EtcdClient
from libs.etcd_client.errors import CasConflict

# service name in keys -> (module, settings class); imported lazily so mld-config stays light
SERVICE_MODELS: dict[str, tuple[str, str]] = {
    "sniffer": ("services.sniffer.config", "SnifferSettings"),
    "ml-detector": ("services.ml_detector.config", "DetectorSettings"),
    "rag-logger": ("services.rag_logger.config", "RagLoggerSettings"),
    "rag": ("services.rag.config", "RagSettings"),
    "firewall": ("services.firewall.config", "FirewallSettings"),
}
LOCAL_FIELDS = frozenset({"node_id"})  # identity of a node: never part of a shared document


def service_model(service: str) -> tuple[type[BaseModel], tuple[str, ...]]:
    """The pydantic settings model and HOT_FIELDS of a service, by its name in etcd keys."""
    if service not in SERVICE_MODELS:
        raise UsageError(
            f"unknown service {service!r}", "SERVICE", f"use one of: {', '.join(sorted(SERVICE_MODELS))}"
        )
    module_name, cls_name = SERVICE_MODELS[service]
    try:
        module = importlib.import_module(module_name)
        model: type[BaseModel] = getattr(module, cls_name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(
            f"cannot load the settings model {module_name}.{cls_name}: {exc}",
            service,
            "reinstall the project",
        ) from None
    return model, tuple(getattr(module, "HOT_FIELDS", ()))


def config_key(service: str, node: str | None = None) -> str:
    return f"config/{service}" + (f"/nodes/{node}" if node else "")


def default_document(model: type[BaseModel], hot_fields: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The model's defaults as a shared document (node-local fields left out).

    With `hot_fields`, only the live-tunable part: what deploy/config holds, so that endpoints,
    paths and interfaces stay with each node's --config file unless an operator sets them in etcd.
    """
    from libs.watcher.diff import MISSING, Change, apply_changes, flatten, is_hot

    doc = model().model_dump(mode="json", exclude=set(LOCAL_FIELDS) & set(model.model_fields))
    if hot_fields is None:
        return doc
    keep = [Change(p, MISSING, v) for p, v in flatten(doc).items() if is_hot(p, hot_fields)]
    return apply_changes({}, keep)


def validate_document(
    client: EtcdClient, service: str, doc: Any, node: str | None = None, model: type[BaseModel] | None = None
) -> BaseModel:
    """Validate a document the way the service will: a node override is merged over the base first."""
    from libs.watcher.diff import deep_merge

    model = model or service_model(service)[0]
    where = client.full_key(config_key(service, node))
    if node is not None:
        if not isinstance(doc, dict):
            return validate_settings(model, doc, where)
        base = client.get(config_key(service)) or {}
        doc = deep_merge(base if isinstance(base, dict) else {}, doc)
    return validate_settings(model, doc, where)


@dataclass(frozen=True)
class EditResult:
    key: str
    old: Any
    new: Any
    old_revision: int
    new_revision: int


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def write_audit(client: EtcdClient, command: str, result: EditResult, reason: str = "") -> str:
    """Record who changed what under `audit/<time>-<id>`; returns the audit key."""
    from libs.watcher.diff import MISSING, diff

    key = f"audit/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid7()}"
    changes = diff(
        result.old if isinstance(result.old, dict) else {}, result.new if isinstance(result.new, dict) else {}
    )
    client.set(
        key,
        {
            "who": who(),
            "command": command,
            "reason": reason,
            "key": client.full_key(result.key),
            "old_revision": result.old_revision,
            "new_revision": result.new_revision,
            "changes": [
                {
                    "path": c.path,
                    "old": None if c.old is MISSING else c.old,
                    "new": None if c.new is MISSING else c.new,
                }
                for c in changes
            ],
            "time": time.time(),
        },
    )
    return key


def cas_edit(
    client: EtcdClient,
    service: str,
    mutate: Callable[[dict[str, Any]], Any],
    *,
    node: str | None = None,
    command: str = "edit",
    reason: str = "",
    encrypt: bool = False,
    compress: bool = False,
    retries: int = 3,
    audit: bool = True,
) -> EditResult:
    """Read the document, apply `mutate` (it returns the new document), validate, CAS-write, audit.

    A concurrent writer makes the CAS fail; the edit is then re-read and re-applied, `retries` times.
    When the key is absent the model's defaults are the starting point.
    """
    model, hot = service_model(service)
    key = config_key(service, node)
    for attempt in range(retries + 1):
        kv = client.get_kv(key)
        old = client.decode(kv) if kv is not None else (default_document(model, hot) if node is None else {})
        new = mutate(dict(old) if isinstance(old, dict) else old)
        validate_document(client, service, new, node, model)
        try:
            rev = client.cas(key, new, kv.mod_revision if kv else 0, encrypt=encrypt, compress=compress)
        except CasConflict:
            if attempt == retries:
                raise
            continue
        result = EditResult(key, old if kv is not None else None, new, kv.mod_revision if kv else 0, rev)
        if audit:
            write_audit(client, command, result, reason)
        return result
    raise AssertionError("unreachable")
