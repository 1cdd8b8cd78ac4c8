"""`lepton coordinator start`: the SuperLink and the admin API, in the foreground until told
to stop."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from coordinator.db import Database
from coordinator.fl.launcher import ServerAppLauncher
from coordinator.services import nodes
from coordinator.services.errors import ServiceError
from coordinator.services.gateway import RunLauncher
from coordinator.services.reconcile import RunReconciler, reconcile_runs
from coordinator.services.round_sink import JournalFollower
from coordinator.superlink import Registration, SuperLink, SuperLinkSettings, key_text
from lepton_fl.processes import ProcessError, require_free_port


@dataclass(frozen=True)
class ApiOptions:
    """Where the admin API listens and which database it uses."""

    host: str = "127.0.0.1"
    port: int = 9080
    database_url: str | None = None  # None: sqlite:///<data-dir>/admin.db
    metrics_node_labels: bool = True  # False: /metrics labels the ledger by tenant only


def run_coordinator(
    settings: SuperLinkSettings,
    *,
    api: ApiOptions | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Start the SuperLink, its Fleet front, the ServerApp launcher and the admin API (with
    its journal follower); wait for SIGTERM/SIGINT; stop everything; return the exit code."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def handler(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    prepared = _prepare_api(settings, api) if api is not None else None
    superlink = SuperLink(settings)
    process = superlink.start()
    print(
        f"SuperLink on https://{settings.loopback_address} (loopback only, pid {process.pid}); "
        f"Fleet API for nodes on https://{settings.address}",
        flush=True,
    )
    try:
        _register_nodes_again(superlink, prepared[1] if prepared is not None else None)
    except Exception:
        superlink.stop()
        raise
    launcher = ServerAppLauncher(
        runtime_api=settings.loopback_address,
        ca_certificate=settings.loopback_ca,
        work_dir=settings.data_dir / "serverapp",
        log_dir=settings.data_dir / "logs",
    )
    api_thread = None
    follower = None
    reconciler = None
    try:
        if prepared is not None:
            _settle_runs_at_start(prepared[1], prepared[2])
        launcher.start()
        if prepared is not None and api is not None:
            api_server, db, run_launcher = prepared
            follower = JournalFollower(db)
            follower.start()
            if run_launcher is not None:
                reconciler = RunReconciler(db, run_launcher)
                reconciler.start()
            api_thread = threading.Thread(target=api_server.run, name="admin-api", daemon=True)
            api_thread.start()
            print(f"Admin API on http://{api.host}:{api.port}/api/v1 (docs at /docs)", flush=True)
        while not stop.wait(0.5):
            for child in superlink.processes():
                code = child.poll()
                if code is not None:
                    raise ProcessError(
                        f"{child.name} exited with code {code}. Last lines of "
                        f"{child.log_path}:\n{child.log_tail()}"
                    )
            if not launcher.alive():
                raise ProcessError(
                    f"The ServerApp launcher stopped: {launcher.error!r}", code="launcher_failed"
                )
            if api_thread is not None and not api_thread.is_alive():
                raise ProcessError(
                    "The admin API stopped serving; see the coordinator's output above.",
                    code="api_failed",
                )
        return 0
    finally:
        if prepared is not None:
            prepared[0].should_exit = True
        if api_thread is not None:
            api_thread.join(timeout=10)
        launcher.stop()
        if reconciler is not None:
            reconciler.stop()
        if follower is not None:
            follower.stop()
        superlink.stop()


def _register_nodes_again(superlink: SuperLink, db: Database | None) -> None:
    """The SuperLink keeps its state in memory and starts empty: register the nodes' keys
    again before any node, run or request arrives: the keys it held before
    (`SuperLink.registrations`), and with the admin API every enrolled node of its database
    (their new node ids written back, one audit event), never a key the database revoked."""
    wanted = superlink.registrations()
    if db is not None:
        # the admin database decides for every key it knows (revoked ones stay out); keys
        # registered around it (`lepton coordinator register-node`) are kept as they were
        enrolled = [Registration(*row) for row in nodes.enrolled_keys(db)]
        known = nodes.known_keys(db)
        wanted = enrolled + [r for r in wanted if key_text(r.public_key) not in known]
    moved = superlink.register_again(wanted)
    if db is not None:
        nodes.record_new_node_ids(db, moved)
    if moved:
        print(f"Registered {len(moved)} node keys with the SuperLink again", flush=True)


def _settle_runs_at_start(db: Database, launcher: RunLauncher | None) -> None:
    """End the runs the previous coordinator process left active (`reconcile_runs`), before
    this one claims any ServerApp task or serves any request."""
    if launcher is None:
        return
    try:
        settled = reconcile_runs(db, launcher, at_start=True)
    except ServiceError as err:
        print(f"Could not reconcile runs with the SuperLink: {err.message}", flush=True)
        return
    for run in settled:
        print(f"Run {run.run_id} ended: {run.reason}", flush=True)


def _prepare_api(
    settings: SuperLinkSettings, api: ApiOptions
) -> tuple[uvicorn.Server, Database, RunLauncher | None]:
    """Upgrade the database and build the server before anything is started."""
    from coordinator.api import AdminSettings, create_app

    require_free_port(api.host, api.port, what="admin API")
    app = create_app(
        AdminSettings(
            data_dir=Path(settings.data_dir),
            database_url=api.database_url,
            superlink=settings,
            metrics_node_labels=api.metrics_node_labels,
        )
    )
    config = uvicorn.Config(app, host=api.host, port=api.port, log_level="warning")
    context = app.state.context
    return uvicorn.Server(config), context.db, context.launcher
