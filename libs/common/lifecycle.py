"""Clean stop: SIGTERM and SIGINT set a flag that every loop checks, so services drain and flush."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)


class StopFlag:
    """A thread-safe stop request, settable by a signal, a test or a fatal error."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str = "requested") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def install_signal_handlers(self) -> None:
        """Route SIGTERM/SIGINT to this flag (main thread only)."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self.is_set():
                log.warning("second %s: stopping without waiting for the drain", name)
                raise SystemExit(128 + signum)
            log.info("stop requested by %s: draining", name)
            self.set(name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
