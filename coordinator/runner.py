"""`lepton coordinator start`: the SuperLink and the admin API, in the foreground until told
to stop."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from coordinator.superlink import SuperLink, SuperLinkSettings
from lepton_fl.processes import ProcessError, require_free_port


@dataclass(frozen=True)
class ApiOptions:
    """Where the admin API listens and which database it uses."""

    host: str = "127.0.0.1"
    port: int = 9080
    database_url: str | None = None  # None: sqlite:///<data-dir>/admin.db


def run_coordinator(
    settings: SuperLinkSettings,
    *,
    api: ApiOptions | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Start the SuperLink (and the admin API), wait for SIGTERM/SIGINT, stop; exit code."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def handler(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    api_server = _prepare_api(settings, api) if api is not None else None
    if api is not None and api.database_url:
        _export_database_password(api.database_url)
    superlink = SuperLink(settings)
    process = superlink.start()
    print(f"SuperLink listening on https://{settings.address} (pid {process.pid})", flush=True)
    api_thread = None
    try:
        if api_server is not None and api is not None:
            api_thread = threading.Thread(target=api_server.run, name="admin-api", daemon=True)
            api_thread.start()
            print(f"Admin API on http://{api.host}:{api.port}/api/v1 (docs at /docs)", flush=True)
        while not stop.wait(0.5):
            code = process.poll()
            if code is not None:
                raise ProcessError(
                    f"flower-superlink exited with code {code}. Last lines of "
                    f"{process.log_path}:\n{process.log_tail()}"
                )
            if api_thread is not None and not api_thread.is_alive():
                raise ProcessError(
                    "The admin API stopped serving; see the coordinator's output above.",
                    code="api_failed",
                )
        return 0
    finally:
        if api_server is not None:
            api_server.should_exit = True
        if api_thread is not None:
            api_thread.join(timeout=10)
        superlink.stop()


def _prepare_api(settings: SuperLinkSettings, api: ApiOptions) -> uvicorn.Server:
    """Upgrade the database and build the server before anything is started."""
    from coordinator.api import AdminSettings, create_app

    require_free_port(api.host, api.port, what="admin API")
    app = create_app(
        AdminSettings(
            data_dir=Path(settings.data_dir), database_url=api.database_url, superlink=settings
        )
    )
    config = uvicorn.Config(app, host=api.host, port=api.port, log_level="warning")
    return uvicorn.Server(config)


def _export_database_password(url: str) -> None:
    """Put the admin database's password in PGPASSWORD for the SuperLink's ServerApps.

    Run specs name the database without its password (they are stored by the SuperLink);
    the ServerApps inherit this process's environment, and psycopg reads PGPASSWORD.
    """
    from sqlalchemy.engine import make_url

    password = make_url(url).password
    if password:
        os.environ["PGPASSWORD"] = str(password)
