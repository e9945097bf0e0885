"""`mld-rag-logger run`: PULL socket → LoggerCore → artifacts; SIGTERM drains and flushes."""

from __future__ import annotations

import logging
import time

from libs.common.cli import package_version
from libs.common.lifecycle import StopFlag
from libs.common.log import setup_logging
from libs.common.metrics import build_info, start_metrics_server
from libs.common.zmqio import Puller
from libs.watcher import ConfigRuntime
from ml_defender.v1 import config_pb2, detection_pb2
from services.rag_logger import fsio
from services.rag_logger.config import METRICS_SERVICE, SERVICE, RagLoggerSettings
from services.rag_logger.core import Clock, LoggerCore

log = logging.getLogger(__name__)

MESSAGE_TYPES = {
    "ml_defender.v1.DetectionEvent": detection_pb2.DetectionEvent,
    "ml_defender.v1.ConfigChange": config_pb2.ConfigChange,
}


def run(
    settings: RagLoggerSettings,
    stop: StopFlag | None = None,
    clock: Clock = time.time_ns,
    runtime: ConfigRuntime[RagLoggerSettings] | None = None,
) -> int:
    """Serve until stopped; returns the exit code (0 after a clean drain, 1 when events were lost at stop).

    `runtime` (libs.watcher, when settings come from etcd) gets a step that swaps the writer's settings.
    """
    setup_logging(SERVICE, settings.log_level)
    flag = stop or StopFlag()
    if stop is None:
        flag.install_signal_handlers()
    server = start_metrics_server(settings.metrics.host, settings.metrics.port)
    build_info(METRICS_SERVICE, package_version(), settings.node_id)
    fsio.raise_fd_limit()  # group commit holds a group's files open (the writer process does this too)
    core = LoggerCore(settings, clock, on_fatal=lambda exc: flag.set(f"writer failed: {exc!r}"))
    core.start()
    if runtime is not None:
        runtime.add_step(lambda _old, new: core.update_settings(new))
    try:
        puller = Puller(METRICS_SERVICE, settings.input, dict(MESSAGE_TYPES))
    except BaseException:
        core.stop()
        raise
    log.info(
        "rag-logger running",
        extra={"endpoint": settings.input.endpoint, "root": str(settings.artifacts_root.resolve())},
    )
    try:
        for msg in puller.messages(flag):
            core.submit(msg)
    finally:
        puller.close()
        unwritten = core.stop()
        if server is not None:
            server.shutdown()
    log.info("rag-logger stopped", extra={"reason": flag.reason, "unwritten": unwritten})
    return 1 if unwritten or core.failed else 0
