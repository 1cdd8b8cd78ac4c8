"""The coordinator's ServerApp launcher: runs only the installed ServerApp, with no secrets.

The SuperLink runs with ``--isolation process``, so it starts no ServerApp itself. This
launcher (a thread of `lepton coordinator start`) claims ServerApp tasks from the SuperLink's
Runtime API over loopback, as Flower's SuperExec would, and starts one
`coordinator.fl.serverapp_process` per run with:

* an environment of its own (PATH, locale, Flower's no-telemetry switches and the task's
  token): no database password, no API key, nothing else of the coordinator's process;
* an empty working directory of its own (``DATA_DIR/serverapp/<task id>``), not the data
  directory that holds ``admin.db``, the SuperLink state and the signing keys.

That process checks the run's app bundle and runs `coordinator.fl.server_app` whatever the
bundle names (`lepton_fl.app_bundle`): a hand-made bundle's code never runs here.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient

from lepton_fl.processes import QUIET_FLOWER_ENV, ManagedProcess

log = logging.getLogger("lepton.coordinator.launcher")

TOKEN_ENV = "LEPTON_TASK_TOKEN"  # noqa: S105 - the variable's name, not a secret
RUNTIME_ENV = "LEPTON_RUNTIME_API"
CA_ENV = "LEPTON_RUNTIME_CA"
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""The only variables of the coordinator's environment a ServerApp sees."""


def serverapp_environment(*, token: str, runtime_api: str, ca_certificate: Path) -> dict[str, str]:
    """The complete environment of a ServerApp process."""
    env = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
    env.update(QUIET_FLOWER_ENV)
    env.update({TOKEN_ENV: token, RUNTIME_ENV: runtime_api, CA_ENV: str(ca_certificate)})
    return env


class ServerAppLauncher:
    """Claims ServerApp tasks and starts one clean ServerApp process per run."""

    def __init__(
        self,
        *,
        runtime_api: str,
        ca_certificate: Path,
        work_dir: Path,
        log_dir: Path,
        poll_interval_s: float = 0.2,
    ) -> None:
        self.runtime_api = runtime_api
        self.ca_certificate = ca_certificate
        self.work_dir = work_dir
        self.log_dir = log_dir
        self.poll_interval_s = poll_interval_s
        self.processes: list[ManagedProcess] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        """Start claiming tasks in a thread (the ServerApps it starts die with it)."""
        self._thread = threading.Thread(target=self._run, name="serverapp-launcher", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        """Whether the launcher thread is still claiming tasks."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop claiming; stop the ServerApps still running (a stopped coordinator ends them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for process in self.processes:
            process.stop()

    def _run(self) -> None:
        try:
            self._claim_tasks()
        except BaseException as err:  # reported by the coordinator's watch loop
            self.error = err
            raise

    def _claim_tasks(self) -> None:
        client = RuntimeHttpClient.from_server_address(
            server_address=self.runtime_api,
            insecure=False,
            root_certificates=self.ca_certificate.read_bytes(),
            interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
            retry_invoker=make_simple_http_retry_invoker(),
        )
        try:
            while not self._stop.is_set():
                self.processes = [p for p in self.processes if p.running()]
                try:
                    res = client.AcquireTask(
                        AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP])
                    )
                except Exception:  # the SuperLink restarts or is stopping: try again
                    log.exception("could not claim ServerApp tasks")
                    self._stop.wait(1.0)
                    continue
                if res.HasField("task") and res.token:
                    self._launch(res.token, int(res.task.task_id), int(res.task.run_id))
                    continue
                self._stop.wait(self.poll_interval_s)
        finally:
            client.close()

    def _launch(self, token: str, task_id: int, run_id: int) -> None:
        work = self.work_dir / str(task_id)
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        process = ManagedProcess(
            name=f"serverapp (run {run_id})",
            argv=[sys.executable, "-m", "coordinator.fl.serverapp_process"],
            log_path=self.log_dir / f"serverapp-{run_id}.log",
            env=serverapp_environment(
                token=token, runtime_api=self.runtime_api, ca_certificate=self.ca_certificate
            ),
            cwd=work,
            die_with_parent=True,
        ).start()
        log.info("run %s: ServerApp task %s started (pid %s)", run_id, task_id, process.pid)
        self.processes.append(process)
