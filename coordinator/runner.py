"""`lepton coordinator start`: run the SuperLink in the foreground until told to stop."""

from __future__ import annotations

import signal
import threading
from types import FrameType

from coordinator.superlink import SuperLink, SuperLinkSettings
from lepton_fl.processes import ProcessError


def run_coordinator(settings: SuperLinkSettings, *, stop: threading.Event | None = None) -> int:
    """Start the SuperLink, wait for SIGTERM/SIGINT, stop it; return an exit code."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def handler(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    superlink = SuperLink(settings)
    process = superlink.start()
    print(f"SuperLink listening on https://{settings.address} (pid {process.pid})", flush=True)
    try:
        while not stop.wait(0.5):
            code = process.poll()
            if code is not None:
                raise ProcessError(
                    f"flower-superlink exited with code {code}. Last lines of "
                    f"{process.log_path}:\n{process.log_tail()}"
                )
        return 0
    finally:
        superlink.stop()
