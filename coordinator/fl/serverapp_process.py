"""One run's ServerApp process, started by `coordinator.fl.launcher` with a clean environment.

It does what Flower's ``flwr-serverapp`` does for a task (pull the task input with the
task's token, send heartbeats, push the task's output), except that it never installs or
imports the run's app bundle: it checks the bundle (`lepton_fl.app_bundle`) and then runs
the installed `coordinator.fl.server_app`. Everything it needs arrives in three environment
variables (the task token, the loopback Runtime API address and the CA that signs it).
"""

from __future__ import annotations

import logging
import os
import sys

from flwr.app import RecordDict
from flwr.common.config import get_fused_config_from_fab
from flwr.common.constant import SubStatus
from flwr.common.serde import context_from_proto, context_to_proto, fab_from_proto, run_from_proto
from flwr.proto.runtime_pb2 import (
    PullTaskInputRequest,
    PushTaskOutputRequest,
)
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.grid import HttpGrid, http_grid

from coordinator.fl.launcher import CA_ENV, RUNTIME_ENV, TOKEN_ENV
from lepton_fl.app_bundle import AppBundleError, check_app_bundle
from lepton_fl.flower_pins import check_flower_version, shorten_object_pull_backoff

log = logging.getLogger("lepton.serverapp")

REPLY_UPLOAD_WAIT_S = 30.0
"""How long the ServerApp waits for a reply's objects once the reply is listed. A node pushes
its reply message first and its objects after; a node that dies in between leaves a reply
whose objects never come, and Flower pulls the replies one after the other, so without a
bound (Flower's is 2 hours) that one reply held back every other reply of the wave for
minutes, until the SuperLink expired the upload. After the bound the reply counts as
never arrived (`coordinator.fl.messaging.read_reply`)."""


def main() -> int:
    """Run the task named by the environment; the exit code says whether it completed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    check_flower_version(who="The coordinator's ServerApp process")
    shorten_object_pull_backoff(http_grid, max_time_s=REPLY_UPLOAD_WAIT_S)
    token = os.environ.pop(TOKEN_ENV)
    grid = HttpGrid(
        runtime_api_address=os.environ[RUNTIME_ENV],
        insecure=False,
        root_certificates=open(os.environ[CA_ENV], "rb").read(),  # noqa: SIM115
        token=token,
    )
    client = grid._runtime_client  # the task's own token-bearing Runtime API client
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    status, details, context = SubStatus.FAILED, "The ServerApp did not start.", None
    try:
        task = client.PullTaskInput(PullTaskInputRequest())
        TaskIdentity.task_id = task.task_id  # Flower's Runtime client stamps calls with it
        TaskIdentity.run_id = task.run.run_id
        TaskIdentity.node_id = task.context.node_id
        context = context_from_proto(task.context)
        run = run_from_proto(task.run)
        fab = fab_from_proto(task.fab)
        check_app_bundle(fab.content, components=("serverapp", "clientapp"))
        grid.set_run(run)
        context.run_config = get_fused_config_from_fab(fab.content, run)
        from coordinator.fl.server_app import run_lepton  # the installed ServerApp, only

        log.info("run %s: running the installed ServerApp", run.run_id)
        run_lepton(grid, context)
        status, details = SubStatus.COMPLETED, ""
    except AppBundleError as err:
        log.error("refused the run's app bundle: %s", err)
        details = str(err)
    except BaseException as err:  # report every failure as the task's output
        log.exception("the ServerApp failed")
        details = f"ServerApp failed: {err}"
    finally:
        heartbeat.stop()
        if context is not None:
            context.state = RecordDict()  # as flwr-serverapp: the state stays here
        try:
            client.PushTaskOutput(
                PushTaskOutputRequest(
                    context=context_to_proto(context) if context is not None else None,
                    sub_status=status,
                    details=details,
                )
            )
        except Exception:
            log.exception("could not push the task output")
        grid.close()
    return 0 if status == SubStatus.COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
