"""Writes deploy/grafana/dashboards/ml-defender.json from the panel list below.

The dashboard is generated so that its queries are short, reviewable lines and its layout is
uniform; edit this file, then run `.venv/bin/python deploy/grafana/build_dashboard.py`. A unit test
checks that the committed JSON is what this writes and that every metric a query names exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "ml-defender.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
R = "$__rate_interval"
SVC = 'job="ml-defender", service="{}"'


@dataclass
class Q:
    """One query of a panel; `legend` uses Grafana's {{label}} syntax."""

    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    queries: list[Q]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"  # or "stat"
    stack: bool = False
    width: int = 8
    height: int = 7
    extra: dict[str, Any] = field(default_factory=dict)


def rate(metric: str, by: str = "", sel: str = "") -> str:
    inner = f"rate({metric}{{{sel}}}[{R}])" if sel else f"rate({metric}[{R}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def quantile(q: float, metric: str, by: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket[{R}])))"


def process_panels(service: str) -> list[Panel]:
    """CPU and memory of one service, from prometheus-client's process collector."""
    sel = SVC.format(service)
    return [
        Panel(
            "CPU",
            [Q(f"rate(process_cpu_seconds_total{{{sel}}}[{R}])", "{{instance}}")],
            unit="percentunit",
            description="Share of one core used by the process.",
        ),
        Panel(
            "Memory (RSS)",
            [Q(f"process_resident_memory_bytes{{{sel}}}", "{{instance}}")],
            unit="bytes",
            description="Resident memory; it should be flat after warm-up (no growth over a soak).",
        ),
    ]


def transport_panels(service: str) -> list[Panel]:
    """ZeroMQ messages in, out and dropped for one service (libs/common/metrics.py)."""
    m = f"mld_{service}_zmq_"
    return [
        Panel(
            "Messages (ZeroMQ)",
            [
                Q(rate(m + "received_messages_total", "endpoint"), "in {{endpoint}}"),
                Q(rate(m + "sent_messages_total", "endpoint"), "out {{endpoint}}"),
                Q(rate(m + "dropped_messages_total", "endpoint, reason"), "dropped {{endpoint}} {{reason}}"),
                Q(rate(m + "decode_errors_total", "endpoint, type"), "undecodable {{endpoint}} {{type}}"),
            ],
            unit="ops",
            description="Dropped: the peer's queue stayed full (high-water mark). Both must stay at zero.",
        )
    ]


OVERVIEW: list[Panel] = [
    Panel(
        "Services up",
        [Q('up{job=~"ml-defender|etcd"}', "{{service}}")],
        kind="stat",
        width=24,
        height=4,
        description="1 when Prometheus scraped the service's /metrics at the last attempt.",
        extra={
            "mappings": [
                {"type": "value", "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP"}}}
            ],
            "thresholds": {
                "mode": "absolute",
                "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}],
            },
        },
    ),
    Panel(
        "Packets and flows per second",
        [
            Q(rate("mld_sniffer_packets_total"), "packets in"),
            Q(rate("mld_sniffer_flows_exported_total"), "flows exported"),
            Q(rate("mld_ml_detector_flows_scored_total"), "flows scored"),
        ],
        unit="ops",
        description="Packets the sniffer takes in, flow records it exports, flows the detectors score. "
        "Flows stopping while packets continue means the export path is stuck.",
    ),
    Panel(
        "Events by decision",
        [Q(rate("mld_ml_detector_events_total", "decision"), "{{decision}}")],
        unit="ops",
        stack=True,
        description="Detection events per second by decision (ALLOW, ALERT, DROP).",
    ),
    Panel(
        "Bans",
        [
            Q("sum by (family) (mld_firewall_banned_addresses)", "banned {{family}}"),
            Q(rate("mld_firewall_block_requests_total", sel='outcome="queued"'), "new bans/s"),
        ],
        description="Sources in the firewall's nftables sets now, and new bans per second.",
    ),
    Panel(
        "Pipeline latency (p95)",
        [
            Q(quantile(0.95, "mld_ml_detector_capture_to_score_seconds"), "capture → decision"),
            Q(quantile(0.95, "mld_rag_logger_event_latency_seconds"), "event → artifact committed"),
            Q(quantile(0.95, "mld_firewall_block_latency_seconds"), "capture → kernel block"),
            Q(quantile(0.95, "mld_rag_ingest_lag_seconds"), "logged → searchable (RAG)"),
        ],
        unit="s",
        description="From the stage timestamps carried in each event. Target: capture → block p95 ≤ 250 ms.",
    ),
    Panel(
        "Drops",
        [
            Q(
                f'sum(rate({{__name__=~"mld_.+_zmq_dropped_messages_total"}}[{R}])) or vector(0)',
                "all ZeroMQ drops",
            ),
            Q(
                f'sum by (service, endpoint, reason) (rate({{__name__=~"mld_.+_zmq_dropped_messages_total"}}[{R}]))',
                "{{service}} → {{endpoint}} {{reason}}",
            ),
            Q(rate("mld_sniffer_batches_dropped_total"), "sniffer flow batches"),
            Q(
                rate("mld_rag_logger_events_dropped_total", "reason", 'reason!="duplicate"'),
                "rag-logger {{reason}}",
            ),
        ],
        unit="ops",
        description="Messages or events lost anywhere in the pipeline. It should be flat zero.",
    ),
    Panel(
        "Kernel transactions",
        [Q(rate("mld_firewall_batches_total", "result"), "{{result}}")],
        unit="ops",
        description="nftables transactions of the firewall by result; failed ones mean bans are not applied.",
    ),
]

SNIFFER: list[Panel] = [
    Panel(
        "Capture",
        [
            Q(rate("mld_sniffer_packets_total"), "packets/s"),
            Q(rate("mld_sniffer_malformed_packets_total", "reason"), "skipped {{reason}}/s"),
            Q(f"sum(increase(mld_sniffer_capture_file_errors_total[{R}]))", "capture file errors"),
        ],
        unit="ops",
        description="Frames taken in and frames skipped by reason (non_ip is expected traffic).",
    ),
    Panel("Bytes", [Q(rate("mld_sniffer_bytes_total"), "captured")], unit="Bps"),
    Panel(
        "Flows exported",
        [Q(rate("mld_sniffer_flows_exported_total", "end_reason"), "{{end_reason}}")],
        unit="ops",
        stack=True,
        description="By end reason: IDLE, ACTIVE, FIN, RST, EVICTED, WINDOW. EVICTED means the table is too small.",
    ),
    Panel(
        "Flow table",
        [
            Q("sum(mld_sniffer_flow_table_flows)", "open flows"),
            Q(f"sum(increase(mld_sniffer_flow_table_evictions_total[{R}]))", "evictions"),
        ],
    ),
    Panel(
        "XDP flow map",
        [
            Q("sum(mld_sniffer_xdp_map_entries)", "entries"),
            Q("sum(mld_sniffer_xdp_map_capacity_entries)", "capacity"),
        ],
        description="Only with capture.source = xdp. Above 90 % the LRU map starts evicting live flows.",
    ),
    Panel(
        "Fast detector",
        [
            Q(rate("mld_sniffer_fast_rules_fired_total", "rule"), "{{rule}}"),
            Q(rate("mld_sniffer_flows_scored_total"), "flows with a fast score"),
            Q("sum(mld_sniffer_fast_detector_sources)", "sources tracked"),
        ],
        description="Flows scored by each heuristic rule (scans, SMB, RST ratio, SYN flood, ICMP sweep).",
    ),
    Panel(
        "Flow batches",
        [
            Q(rate("mld_sniffer_batches_sent_total"), "sent"),
            Q(rate("mld_sniffer_batches_dropped_total"), "dropped (detectors full)"),
        ],
        unit="ops",
    ),
]

RAG: list[Panel] = [
    Panel(
        "Ingest",
        [
            Q(rate("mld_rag_events_ingested_total"), "events ingested/s"),
            Q(rate("mld_rag_duplicate_events_total"), "duplicates/s"),
            Q(rate("mld_rag_pairs_damaged_total", "reason"), "damaged {{reason}}/s"),
        ],
        unit="ops",
    ),
    Panel(
        "Index",
        [
            Q("sum(mld_rag_index_events)", "events"),
            Q("sum(mld_rag_index_distinct_texts)", "distinct texts"),
        ],
    ),
    Panel(
        "Ingest latency",
        [
            Q(quantile(0.95, "mld_rag_ingest_lag_seconds"), "logged → searchable p95"),
            Q(quantile(0.95, "mld_rag_ingest_pass_seconds"), "ingest pass p95"),
        ],
        unit="s",
        description="New artifacts should be searchable within a second.",
    ),
    Panel(
        "Query latency",
        [Q(quantile(0.95, "mld_rag_query_seconds", "command"), "{{command}} p95")],
        unit="s",
        description="Embedding the question included. Target p95 ≤ 20 ms at 100k events.",
    ),
    Panel(
        "Requests",
        [Q(rate("mld_rag_queries_total", "command, result"), "{{command}} {{result}}")],
        unit="ops",
    ),
    Panel(
        "Index maintenance and tuning",
        [
            Q(f"sum(increase(mld_rag_index_saves_total[{R}]))", "snapshots"),
            Q(f"sum by (reason) (increase(mld_rag_index_rebuilds_total[{R}]))", "rebuilds ({{reason}})"),
            Q(
                f"sum by (command, result) (increase(mld_rag_tuning_changes_total[{R}]))",
                "{{command}} {{result}}",
            ),
        ],
        description="accelerate / decelerate / optimize edits of the etcd configuration, by result.",
    ),
]

ML_DETECTOR: list[Panel] = [
    Panel(
        "Throughput",
        [
            Q(rate("mld_ml_detector_flows_scored_total"), "flows/s"),
            Q(rate("mld_ml_detector_batches_scored_total"), "batches/s"),
            Q(rate("mld_ml_detector_kept_events_total"), "events kept by the rag-logger/s"),
            Q(rate("mld_ml_detector_unexplained_events_total"), "kept events without an explanation/s"),
        ],
        unit="ops",
    ),
    Panel(
        "Batch latency",
        [
            Q(quantile(0.5, "mld_ml_detector_batch_latency_seconds"), "p50"),
            Q(quantile(0.99, "mld_ml_detector_batch_latency_seconds"), "p99"),
        ],
        unit="s",
        description="One model call over a batch (features, four models, events). Target p99 ≤ 5 ms.",
    ),
    Panel(
        "Capture → decision",
        [
            Q(quantile(0.5, "mld_ml_detector_capture_to_score_seconds"), "p50"),
            Q(quantile(0.95, "mld_ml_detector_capture_to_score_seconds"), "p95"),
            Q(quantile(0.99, "mld_ml_detector_capture_to_score_seconds"), "p99"),
        ],
        unit="s",
        description="Wall time from the flow's capture timestamp to its score.",
    ),
    Panel(
        "Events by classification",
        [Q(rate("mld_ml_detector_events_total", "classification"), "{{classification}}")],
        unit="ops",
        stack=True,
        description="CONSENSUS, DIVERGENCE, FAST_ONLY, ML_ONLY, BENIGN; a DIVERGENCE rise deserves a look.",
    ),
    Panel(
        "Model scores",
        [Q(rate("mld_ml_detector_model_score_flows_total", "model, le"), "{{model}} ≤ {{le}}")],
        unit="ops",
        stack=True,
        description="Flows per model by score bucket; drift shows as mass moving between buckets.",
    ),
    Panel(
        "Models, context, gaps",
        [
            Q(
                "sum by (model, version, engine) (mld_ml_detector_model_info)",
                "{{model}} {{engine}} {{version}}",
            ),
            Q("sum(mld_ml_detector_context_sources)", "sources tracked"),
            Q(rate("mld_ml_detector_batch_sequence_gaps_total", "node"), "missing batches/s from {{node}}"),
            Q(rate("mld_ml_detector_unrouted_events_total", "node"), "events from unmapped node {{node}}/s"),
            Q(rate("mld_ml_detector_model_reloads_total", "result"), "model reloads {{result}}"),
        ],
        description="Loaded models (1 = in use), LRU context size, FlowBatch sequence gaps (lost batches) and "
        "events from nodes missing in firewall_nodes (sent to every firewall).",
    ),
]

FIREWALL: list[Panel] = [
    Panel(
        "Events received",
        [Q(rate("mld_firewall_decisions_total", "decision"), "{{decision}}")],
        unit="ops",
        stack=True,
    ),
    Panel(
        "Block requests",
        [
            Q(rate("mld_firewall_block_requests_total", "outcome"), "{{outcome}}"),
            Q(rate("mld_firewall_rejected_requests_total", "reason"), "rejected {{reason}}"),
        ],
        unit="ops",
        description="queued: new ban; refreshed/deduplicated/covered: already banned. Rejected: allow-listed, "
        "invalid or over capacity.",
    ),
    Panel(
        "Banned addresses",
        [
            Q("sum by (family, kind) (mld_firewall_banned_addresses)", "{{family}} {{kind}}"),
            Q(
                f"sum by (reason) (increase(mld_firewall_unbanned_addresses_total[{R}]))",
                "unbanned ({{reason}})",
            ),
        ],
        description="Bans in the kernel now by family and kind; unbans: expired, by an operator, allow-listed "
        "later, superseded by a CIDR.",
    ),
    Panel(
        "Latency",
        [
            Q(quantile(0.95, "mld_firewall_block_latency_seconds"), "capture → kernel p95"),
            Q(quantile(0.95, "mld_firewall_request_to_commit_seconds"), "request → commit p95"),
            Q(quantile(0.99, "mld_firewall_commit_duration_seconds"), "transaction p99"),
        ],
        unit="s",
    ),
    Panel(
        "Batches",
        [
            Q(rate("mld_firewall_batches_total", "result"), "{{result}}/s"),
            Q(quantile(0.95, "mld_firewall_batch_size_ops"), "ops per transaction p95"),
            Q("sum(mld_firewall_pending_operations)", "pending ops"),
            Q(rate("mld_firewall_failed_operations_total", "op"), "refused {{op}}/s"),
            Q("sum(mld_firewall_reconciled_elements)", "elements at last reconcile"),
        ],
    ),
]

RAG_LOGGER: list[Panel] = [
    Panel(
        "Events",
        [
            Q(rate("mld_rag_logger_events_received_total", "type"), "received {{type}}"),
            Q(rate("mld_rag_logger_events_kept_total", "reason"), "kept ({{reason}})"),
            Q(rate("mld_rag_logger_events_not_kept_total"), "not kept"),
            Q(rate("mld_rag_logger_events_written_total", "kind"), "written {{kind}}"),
        ],
        unit="ops",
    ),
    Panel(
        "Commit latency",
        [
            Q(quantile(0.99, "mld_rag_logger_commit_latency_seconds"), "group commit p99"),
            Q(quantile(0.95, "mld_rag_logger_event_latency_seconds"), "event accepted → committed p95"),
            Q(quantile(0.5, "mld_rag_logger_commit_batch_events"), "events per commit p50"),
        ],
        unit="s",
        extra={"overrides_unit": {"events per commit p50": "short"}},
    ),
    Panel(
        "Queue",
        [
            Q("sum(mld_rag_logger_queue_depth_events)", "waiting"),
            Q("sum(mld_rag_logger_queue_capacity_events)", "capacity"),
        ],
        description="Events waiting for the writer; at capacity new events are dropped (queue_full).",
    ),
    Panel(
        "Disk",
        [
            Q("min(mld_rag_logger_disk_free_bytes)", "free"),
            Q(rate("mld_rag_logger_written_bytes_total"), "written/s"),
        ],
        unit="bytes",
    ),
    Panel(
        "Storage state and errors",
        [
            Q("max(mld_rag_logger_disk_full)", "disk full"),
            Q("max(mld_rag_logger_storage_blocked)", "writer blocked"),
            Q(rate("mld_rag_logger_storage_errors_total", "reason"), "errors {{reason}}/s"),
            Q(rate("mld_rag_logger_events_dropped_total", "reason"), "dropped {{reason}}/s"),
            Q(rate("mld_rag_logger_jsonl_errors_total"), ".jsonl append errors/s"),
        ],
    ),
    Panel(
        "Housekeeping",
        [
            Q(f"sum(increase(mld_rag_logger_rotations_total[{R}]))", "day rotations"),
            Q(f"sum(increase(mld_rag_logger_temp_files_removed_total[{R}]))", "temp files removed at start"),
            Q(f"sum(increase(mld_rag_logger_pairs_repaired_total[{R}]))", "half pairs repaired at start"),
        ],
    ),
]

CONFIG: list[Panel] = [
    Panel(
        "Configuration reloads",
        [
            Q(
                f'sum by (service, result) (increase({{__name__=~"mld_.+_config_reloads_total"}}[{R}]))',
                "{{service}} {{result}}",
            )
        ],
        description="etcd documents each service handled: applied, rejected (last good kept), rolled_back.",
    ),
    Panel(
        "Configuration revision",
        [Q('max by (service) ({__name__=~"mld_.+_config_revision"})', "{{service}}")],
        description="etcd revision each service runs; after an edit every line should step up together.",
    ),
    Panel(
        "Configuration source and etcd watch",
        [
            Q(
                'max by (service, source) ({__name__=~"mld_.+_config_source"}) == 1',
                "{{service}} from {{source}}",
            ),
            Q('min by (service) ({__name__=~"mld_.+_etcd_connected"})', "{{service}} watch connected"),
            Q(
                'max by (service) ({__name__=~"mld_.+_config_pending_restart_fields"})',
                "{{service}} fields waiting for a restart",
            ),
        ],
        description="Where the running configuration came from (etcd, cache, file, defaults), whether the "
        "etcd watch is connected, and restart-required changes not applied yet.",
    ),
    Panel(
        "etcd",
        [
            Q("max(etcd_server_has_leader)", "has leader"),
            Q(f"sum(increase(etcd_server_leader_changes_seen_total[{R}]))", "leader changes"),
            Q(f"sum(rate(etcd_server_proposals_failed_total[{R}]))", "failed proposals/s"),
        ],
    ),
    Panel(
        "etcd database",
        [
            Q("max(etcd_mvcc_db_total_size_in_bytes)", "size"),
            Q("max(etcd_server_quota_backend_bytes)", "quota"),
        ],
        unit="bytes",
    ),
    Panel(
        "etcd disk latency (p99)",
        [
            Q(quantile(0.99, "etcd_disk_wal_fsync_duration_seconds"), "WAL fsync"),
            Q(quantile(0.99, "etcd_disk_backend_commit_duration_seconds"), "backend commit"),
        ],
        unit="s",
        description="Above ~10 ms etcd becomes slow for every writer (heartbeats, configuration).",
    ),
]

ROWS: list[tuple[str, list[Panel]]] = [
    ("Overview", OVERVIEW),
    ("Sniffer", SNIFFER + transport_panels("sniffer") + process_panels("sniffer")),
    ("ML detector", ML_DETECTOR + transport_panels("ml_detector") + process_panels("ml_detector")),
    ("Firewall", FIREWALL + transport_panels("firewall") + process_panels("firewall")),
    ("rag-logger", RAG_LOGGER + transport_panels("rag_logger") + process_panels("rag_logger")),
    ("RAG", RAG + process_panels("rag")),
    ("Configuration and etcd", CONFIG),
]


def panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {"datasource": DS, "refId": chr(ord("A") + i), "expr": q.expr, "legendFormat": q.legend or "__auto"}
        for i, q in enumerate(p.queries)
    ]
    defaults: dict[str, Any] = {"unit": p.unit}
    overrides = [
        {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}
        for name, unit in p.extra.get("overrides_unit", {}).items()
    ]
    if "mappings" in p.extra:
        defaults["mappings"] = p.extra["mappings"]
    if "thresholds" in p.extra:
        defaults["thresholds"] = p.extra["thresholds"]
    if p.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if p.stack else 0,
            "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
            "showPoints": "never",
        }
        options: dict[str, Any] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "colorMode": "background",
            "graphMode": "none",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value_and_name",
        }
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": overrides},
        "options": options,
        "targets": targets,
    }


def dashboard() -> dict[str, Any]:
    """The complete dashboard model (Grafana schema 39)."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for title, row_panels in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x = pid + 1, y + 1, 0
        line_height = 0
        for p in row_panels:
            if x + p.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(panel_json(p, pid, x, y))
            pid, x, line_height = pid + 1, x + p.width, max(line_height, p.height)
        y += line_height
    return {
        "uid": "ml-defender",
        "title": "ML Defender",
        "description": "Pipeline health: capture, detection, blocking, evidence, configuration. See docs/OPERATIONS.md.",
        "tags": ["ml-defender", "security"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                }
            ]
        },
        "annotations": {
            "list": [
                {
                    "name": "Alerts",
                    "datasource": DS,
                    "enable": True,
                    "iconColor": "red",
                    "expr": 'ALERTS{alertstate="firing", alertname=~"MLDefender.*"}',
                    "titleFormat": "{{alertname}}",
                    "textFormat": "{{service}} {{instance}}",
                }
            ]
        },
        "panels": panels,
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
