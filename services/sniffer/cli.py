"""`mld-sniffer`: run the service, or turn captures into flow records offline.

Thin: parses arguments, loads settings, maps errors to exit codes (1 bad input, 2 usage/config).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from libs.common.cli import add_config_commands, config_option, handle_errors, package_version
from libs.common.errors import UsageError
from libs.common.events import features_dict, flow_dict, ip_text
from libs.common.lifecycle import StopFlag
from libs.common.log import setup_logging
from libs.common.settings import load_settings, validate_settings
from libs.watcher import EtcdSettings, etcd_options
from services.sniffer.config import SnifferSettings

PROG = "mld-sniffer"


def load(config_path: Path | None) -> SnifferSettings:
    return load_settings(SnifferSettings, config_path)


def with_overrides(settings: SnifferSettings, where: str, **capture: object) -> SnifferSettings:
    """Settings with command-line overrides of capture fields, validated like a file."""
    doc = settings.model_dump()
    doc["capture"].update({k: v for k, v in capture.items() if v is not None})
    return validate_settings(SnifferSettings, doc, where)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), prog_name=PROG)
def main() -> None:
    """ML Defender sniffer: packets in, flow records (with fast-detector scores) out."""


add_config_commands(main, PROG, "sniffer", SnifferSettings)


@main.command("run")
@config_option("sniffer")
@click.option("--pcap", "pcaps", multiple=True, type=click.Path(dir_okay=False), help="Replay these files.")
@click.option("--pace", type=click.Choice(["fast", "realtime"]), default=None, help="Override capture.pace.")
@click.option("--loop/--no-loop", default=None, help="Override capture.loop.")
@click.option("--exit-when-done", is_flag=True, help="Exit when the pcap source is done instead of idling.")
@etcd_options
@handle_errors(PROG)
def run_cmd(
    config_path: Path | None,
    pcaps: tuple[str, ...],
    pace: str | None,
    loop: bool | None,
    exit_when_done: bool,
    etcd: EtcdSettings | None,
) -> None:
    """Run the service: capture, score, PUSH FlowBatch messages; SIGTERM drains and exits 0.

    With --etcd, settings follow config/sniffer live (libs/watcher); command-line flags win over etcd.
    """
    from libs.watcher import ConfigRuntime
    from services.sniffer.config import HOT_FIELDS

    settings = load(config_path)
    overrides: dict[str, object] = {}
    if pcaps or pace or loop is not None:
        overrides = {"pace": pace, "loop": loop}
        if pcaps:
            overrides.update(pcap_paths=list(pcaps), source="pcap")
        settings = with_overrides(settings, "command line", **overrides)
    setup_logging("sniffer", settings.log_level)
    from services.sniffer.app import SnifferApp

    runtime = ConfigRuntime(
        "sniffer",
        SnifferSettings,
        initial=settings,
        hot_fields=HOT_FIELDS,
        etcd=etcd,
        version=package_version(),
        overrides={"capture": {k: v for k, v in overrides.items() if v is not None}} if overrides else None,
    )
    settings = runtime.start()  # before capture opens: etcd, else its disk cache, else the file
    try:
        stop = StopFlag()
        stop.install_signal_handlers()
        app = SnifferApp(settings, stop=stop, exit_when_done=exit_when_done)
        runtime.add_step(lambda _old, new: app.update_settings(new))
        code = app.run()
    finally:
        runtime.stop()
    sys.exit(code)


@main.command("flows")
@config_option("sniffer")
@click.argument("pcaps", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--jsonl", is_flag=True, help="One JSON object per flow record (flow fields + features).")
@click.option("--fast", "with_fast", is_flag=True, help="Add the fast detector's score and rules.")
@handle_errors(PROG)
def flows_cmd(config_path: Path | None, pcaps: tuple[str, ...], jsonl: bool, with_fast: bool) -> None:
    """Turn pcap/pcapng files into flow records (the offline path); summary on stderr."""
    from services.sniffer.fast_detector import FastDetector
    from services.sniffer.flows import extract_flows

    settings = load(config_path)
    if not pcaps:
        raise UsageError("no capture files given", "arguments", "pass one or more .pcap/.pcapng files")
    result = extract_flows(pcaps, settings)
    fast = FastDetector(settings.fast_detector).observe(result.records) if with_fast else None
    out = sys.stdout
    for i, rec in enumerate(result.records):
        if jsonl:
            doc = flow_dict(rec)
            doc["features"] = features_dict(rec.features)
            if fast is not None:
                doc["fast"] = {"score": fast[i].score, "rules": list(fast[i].rules)}
            out.write(json.dumps(doc) + "\n")
        else:
            k, f = rec.key, rec.features
            rules = f" {','.join(fast[i].rules)}" if fast is not None and fast[i].rules else ""
            out.write(
                f"{flow_dict(rec)['first_seen']} {flow_dict(rec)['protocol']:>4} "
                f"{ip_text(k.src_addr)}:{k.src_port} -> {ip_text(k.dst_addr)}:{k.dst_port} "
                f"pkts={f.bidirectional_packets} bytes={f.bidirectional_bytes} "
                f"end={flow_dict(rec)['end_reason']}{rules}\n"
            )
    out.flush()
    st = result.stats
    malformed = ", ".join(f"{k}={v}" for k, v in st["malformed"].items()) or "none"
    click.echo(
        f"{PROG}: {st['packets']} packets ({st['bytes']} bytes), {st['flows']} flows, "
        f"malformed: {malformed}, {st['packets_per_s']:.0f} packets/s in {st['seconds']:.3f} s",
        err=True,
    )
    if result.error is not None:
        raise result.error
