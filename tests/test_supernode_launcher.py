"""The shortened waits of the SuperNode launcher and the executor, pinned to the Flower version
they were read from."""

from __future__ import annotations

import functools
import inspect
import time
from pathlib import Path
from types import ModuleType

import pytest
from flwr.common import constant
from flwr.common.constant import NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
from flwr.proto.fleet_pb2 import ActivateNodeRequest
from flwr.proto.heartbeat_pb2 import SendNodeHeartbeatRequest
from flwr.proto.node_pb2 import Node
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.supercore import heartbeat
from flwr.supercore.error import FlowerError
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager
from flwr.superlink.grid import http_grid
from flwr.superlink.servicer.fleet import fleet_handlers
from flwr.supernode import fleet_http_connection, start_client_internal
from flwr.supernode.runtime import run_clientapp
from supernode_support import pull_one_message

from client_node.executor import TASK_INPUT_WAIT_S, NodeExecutor
from client_node.runner import (
    REACTIVATION_GRACE_S,
    REFUSED_EXIT,
    _refusal_line,
    _supernode_exit_message,
)
from client_node.settings import load_node_settings
from client_node.supernode_launcher import (
    BUSY_MAX_S,
    HEARTBEAT_INTERVAL_S,
    IDLE_MAX_S,
    IDLE_MIN_S,
    STALE_SESSION_S,
    AdaptiveWaits,
    FlowerVersionError,
    check_flower_version,
    install,
)
from lepton_fl.flower_pins import shorten_object_pull_backoff


def test_the_waits_we_replace_are_still_flowers_literals() -> None:
    source = inspect.getsource(start_client_internal)

    assert "import time\n" in source
    assert source.count("time.sleep(3)") == 1  # after an empty pull
    assert source.count("time.sleep(0.5)") == 2  # waiting for a reply, and for an object


def test_another_flower_version_is_refused_loudly() -> None:
    check_flower_version("1.42.0")

    with pytest.raises(FlowerVersionError, match=r"flwr 1\.43\.0 is installed"):
        check_flower_version("1.43.0")


def test_install_replaces_time_and_the_pull_backoff_in_the_supernode_loop_only() -> None:
    original_time, original_pull = start_client_internal.time, start_client_internal.pull_objects
    original_interval = fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL
    try:
        install()
        waits = install()  # a second install wraps nothing twice

        assert start_client_internal.time is waits
        assert time.sleep is not waits.sleep  # the rest of the process keeps the real one
        assert waits.monotonic is time.monotonic
        pull = start_client_internal.pull_objects
        assert isinstance(pull, functools.partial)
        assert pull.func is inflatable_utils.pull_objects
        assert pull.keywords == {"initial_backoff": 0.05, "backoff_cap": 1.0}
        assert inflatable_utils.pull_objects is original_pull  # Flower's own is untouched
        assert fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL == HEARTBEAT_INTERVAL_S == 10
        assert heartbeat.HEARTBEAT_DEFAULT_INTERVAL == HEARTBEAT_INTERVAL_S
        assert constant.HEARTBEAT_DEFAULT_INTERVAL == 30  # Flower's own is untouched
    finally:
        start_client_internal.time = original_time  # type: ignore[attr-defined]
        start_client_internal.pull_objects = original_pull  # type: ignore[attr-defined]
        fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL = original_interval  # type: ignore[attr-defined]
        heartbeat.HEARTBEAT_DEFAULT_INTERVAL = original_interval  # type: ignore[attr-defined]


def test_the_heartbeat_interval_we_shorten_is_the_one_the_supernode_sends_and_waits() -> None:
    # Flower 1.42 reads HEARTBEAT_DEFAULT_INTERVAL by name: in the Fleet connection for
    # ActivateNode and every SendNodeHeartbeat, and in the sender's wait between heartbeats.
    connection = inspect.getsource(fleet_http_connection)
    sender = inspect.getsource(heartbeat.HeartbeatSender._run)

    assert "from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL\n" in connection
    assert connection.count("heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL") == 2
    assert "HeartbeatSender(send_node_heartbeat)" in connection
    assert "HEARTBEAT_DEFAULT_INTERVAL - HEARTBEAT_CALL_TIMEOUT" in sender
    # A heartbeat every (10 - 5) * 0.7..0.9 = 3.5..4.5 s; a call may take up to 5 s.
    assert constant.HEARTBEAT_CALL_TIMEOUT == 5
    assert constant.HEARTBEAT_BASE_MULTIPLIER + max(constant.HEARTBEAT_RANDOM_RANGE) == 0.9
    assert constant.HEARTBEAT_MIN_INTERVAL == HEARTBEAT_INTERVAL_S  # the shortest it accepts
    assert constant.HEARTBEAT_PATIENCE == 2
    assert STALE_SESSION_S == 20
    assert REACTIVATION_GRACE_S > STALE_SESSION_S


def test_the_superlink_honours_the_interval_the_node_asks_for() -> None:
    # The SuperLink's own state and Fleet handlers (in-memory SQLite): a node activated with
    # our interval counts as online for 2 x 10 s, a heartbeat extends that by 20 s, its key
    # is refused a second activation meanwhile (exit 305 on the node), and a shorter interval
    # than Flower's minimum is refused outright.
    state = LinkStateFactory(":memory:", NoOpFederationManager(), ObjectStoreFactory()).state()
    node_id = state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, b"node-key", 30)

    def activate(interval: float) -> None:
        request = ActivateNodeRequest(public_key=b"node-key", heartbeat_interval=interval)
        fleet_handlers.activate_node(request, state)

    def online_for() -> float:
        (info,) = state.get_node_info(node_ids=[node_id])
        assert info.status == "online"
        assert info.heartbeat_interval == HEARTBEAT_INTERVAL_S
        return info.online_until - time.time()

    activate(HEARTBEAT_INTERVAL_S)
    assert STALE_SESSION_S - 2 < online_for() <= STALE_SESSION_S
    with pytest.raises(FlowerError, match="could not be activated"):
        activate(HEARTBEAT_INTERVAL_S)  # the session still counts as online
    beat = SendNodeHeartbeatRequest(
        node=Node(node_id=node_id), heartbeat_interval=HEARTBEAT_INTERVAL_S
    )
    assert fleet_handlers.send_node_heartbeat(beat, state).success
    assert STALE_SESSION_S - 2 < online_for() <= STALE_SESSION_S
    with pytest.raises(FlowerError) as caught:
        fleet_handlers.send_node_heartbeat(
            SendNodeHeartbeatRequest(
                node=Node(node_id=node_id), heartbeat_interval=HEARTBEAT_INTERVAL_S - 1
            ),
            state,
        )
    assert "out of bounds" in str(caught.value)


def test_flowers_object_pull_backoff_is_what_we_shorten() -> None:
    defaults = inspect.signature(inflatable_utils.pull_objects).parameters

    assert defaults["initial_backoff"].default == 1  # Flower 1.42: 1 s, doubling to 10 s
    assert defaults["backoff_cap"].default == 10
    assert "pull_objects" in vars(http_grid)  # imported by name: replaced there for the grid


def test_empty_pulls_back_off_to_a_second_and_activity_resets() -> None:
    waits = AdaptiveWaits(busy_window_s=0.3)
    delays = []
    for _ in range(12):
        before = waits.idle_s
        started = time.monotonic()
        waits.sleep(3)
        delays.append(before)
        assert time.monotonic() - started < 2.0  # never Flower's 3 s

    assert delays[0] == IDLE_MIN_S
    assert delays == sorted(delays)
    assert waits.idle_s == IDLE_MAX_S

    waits.sleep(0.5)  # waiting for a reply: a run is active

    assert waits.idle_s == IDLE_MIN_S
    # While the run is active, empty pulls start short and grow only to half a second: the
    # next round's message is not kept waiting behind a wait grown while the slowest trained.
    busy = [waits.delay_for(3) for _ in range(20)]
    assert busy[0] == IDLE_MIN_S
    assert busy == sorted(busy)
    assert busy[-1] == BUSY_MAX_S < IDLE_MAX_S
    waits.delay_for(0.5)  # the next message came: the node waits for its reply
    assert waits.delay_for(3) == IDLE_MIN_S  # and polls fast again after answering
    time.sleep(0.3)  # the busy window has passed: back off again
    assert waits.delay_for(3) < waits.delay_for(3) < waits.delay_for(3)


def test_the_wait_after_an_empty_pull_counts_from_the_start_of_that_pull() -> None:
    # Our SuperLink holds an empty pull open (coordinator.superlink_launcher): the next pull
    # starts at once after a pull that took longer than the schedule's wait.
    waits = AdaptiveWaits()
    waits.pull_started()
    time.sleep(IDLE_MIN_S + 0.05)  # the pull waited at the SuperLink
    assert waits.delay_for(3) == 0.0

    waits.pull_started()  # a pull answered at once (another SuperLink): the schedule holds
    assert 0.0 < waits.delay_for(3) <= IDLE_MIN_S * 1.5
    assert waits.delay_for(3) == pytest.approx(IDLE_MIN_S * 1.5**2)  # no pull marked: all of it


def test_the_executor_shortens_the_backoff_of_its_task_input_pulls() -> None:
    # A task is claimable before the SuperNode holds its objects: with Flower's 1 s first
    # retry, pulling the task input took 1.2 s of a 2 s round (bench/round_overhead.py).
    original = run_clientapp.pull_and_inflate_object_from_tree
    assert "pull_and_inflate_object_from_tree" in vars(run_clientapp)  # used by pull_task_input
    executor = NodeExecutor(lambda e, r: r, "127.0.0.1:1", auth_secret=None)
    try:
        executor.start()
        pull = run_clientapp.pull_and_inflate_object_from_tree
        assert isinstance(pull, functools.partial)
        assert pull.func is inflatable_utils.pull_and_inflate_object_from_tree
        # bounded: objects the SuperNode lost (the run ended mid-pull) never come, and the
        # one executor thread must go on to the next run's tasks
        assert pull.keywords == {
            "initial_backoff": 0.05,
            "backoff_cap": 1.0,
            "max_time": TASK_INPUT_WAIT_S,
        }
    finally:
        executor.stop()
        run_clientapp.pull_and_inflate_object_from_tree = original  # type: ignore[attr-defined]


def test_a_module_without_flowers_pull_helpers_is_refused_loudly() -> None:
    with pytest.raises(FlowerVersionError, match="imports none of"):
        shorten_object_pull_backoff(ModuleType("elsewhere"))


def test_the_serverapp_bounds_how_long_a_pull_waits_for_missing_objects() -> None:
    # A reply whose node died mid-upload must not hold back the wave's other replies for
    # Flower's 2 hours (coordinator/fl/serverapp_process.py, REPLY_UPLOAD_WAIT_S).
    module = ModuleType("grid_like")
    module.pull_objects = inflatable_utils.pull_objects  # type: ignore[attr-defined]

    shorten_object_pull_backoff(module, max_time_s=30.0)

    pull = module.pull_objects
    assert pull.keywords == {"initial_backoff": 0.05, "backoff_cap": 1.0, "max_time": 30.0}
    assert inspect.signature(inflatable_utils.pull_objects).parameters["max_time"].default == 7200


NODE_TOML = """
[node]
name = "clinic"
state_dir = "state"

[data]
task = "breast_cancer"
partition = "site-0-of-3"

[privacy]
epsilon_budget = 4.0
federations = ["f"]

[superlink]
address = "127.0.0.1:9093"
root_certificates = "ca.pem"

[auth]
private_key = "clinic"
"""


def test_a_refused_activation_never_claims_the_key_is_unregistered_while_it_may_be_stale(
    tmp_path: Path,
) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "clinic").write_text("key")
    (tmp_path / "node.toml").write_text(NODE_TOML)
    settings = load_node_settings(tmp_path / "node.toml")

    restarted = _refusal_line(settings, 5.0, restarted=True)
    fresh = _refusal_line(settings, 5.0, restarted=False)
    final = _supernode_exit_message(settings, 1, f"Exit Code: {REFUSED_EXIT}", waited_s=31.0)

    assert "previous session" in restarted
    assert "within 15 s" in restarted  # 20 s at most after its last heartbeat
    assert "Retrying for up to 25 s" in restarted
    assert "not registered" not in restarted
    assert "either a session with its key" in fresh
    assert "or the key is not registered" in fresh
    assert "for 31 s" in final
    assert "(1) its key" in final
    assert "(2) a session with this key is still online" in final


def test_a_stale_reply_no_longer_holds_back_the_reply_after_it() -> None:
    """Flower's SuperNode pushes replies once per pulled message. A reply of a run that ended
    (the coordinator died while the node answered) took that push and was refused; the reply
    to the newly pulled message then waited for a pull that never came. With
    `push_every_reply` both are pushed, with Flower's own push function and node state."""
    from flwr.app import Message, RecordDict
    from flwr.app.message.message import make_message
    from flwr.app.metadata import Metadata
    from flwr.supernode.nodestate import NodeStateFactory

    from client_node.supernode_launcher import pending_replies, push_every_reply

    stores = ObjectStoreFactory()
    store = stores.store()
    state = NodeStateFactory(stores).state()
    replies = {}
    for run_id in (7, 8):  # 7 ended at the SuperLink, 8 is the new run
        metadata = Metadata(run_id, "", 0, 1, "", "1", time.time(), 60.0, "query")
        incoming = make_message(metadata, RecordDict())
        start_client_internal._insert_message(incoming, state, store)
        state.get_messages_legacy(is_reply=False)  # the executor took the task
        replies[run_id] = Message(RecordDict(), reply_to=incoming)
    start_client_internal._insert_message(replies[7], state, store)
    sent: list[int] = []

    def send(message: Message, tree: object, runtime: float) -> tuple[set[str], str]:
        if message.metadata.run_id == 7:  # meanwhile the executor answers run 8's message
            start_client_internal._insert_message(replies[8], state, store)
            raise start_client_internal.RunNotRunningException
        sent.append(message.metadata.run_id)
        return set(), "session"

    module = ModuleType("supernode_loop")
    module._push_messages = start_client_internal._push_messages  # type: ignore[attr-defined]
    assert pending_replies(state) == 1

    push_every_reply(module)
    push_every_reply(module)  # idempotent: still one wrapper around Flower's function
    module._push_messages(  # type: ignore[attr-defined]
        state=state, object_store=store, send=send, push_object=lambda *a: None
    )

    assert sent == [8]
    assert pending_replies(state) == 0
    assert "_push_messages(\n                state=state," in inspect.getsource(
        start_client_internal.start_client_internal
    )


def test_a_reply_waiting_after_an_empty_pull_still_reaches_the_push_stage() -> None:
    """The reply to a run's first message may come after the push that followed that message
    was spent on a stale reply; Flower's loop would then wait for a message that never
    comes. With `pull_or_push` an empty pull leads to the push stage while a reply waits."""
    from flwr.app import Message, RecordDict
    from flwr.app.message.message import make_message
    from flwr.app.metadata import Metadata
    from flwr.supernode.nodestate import NodeStateFactory

    from client_node.supernode_launcher import pull_or_push

    stores = ObjectStoreFactory()
    store = stores.store()
    state = NodeStateFactory(stores).state()
    module = ModuleType("supernode_loop")
    module._pull_and_store_message = lambda **kwargs: None  # type: ignore[attr-defined]
    pull_or_push(module)
    pull_or_push(module)  # idempotent
    assert module._pull_and_store_message(state=state) is None  # type: ignore[attr-defined]

    incoming = make_message(
        Metadata(8, "", 0, 1, "", "1", time.time(), 60.0, "query"), RecordDict()
    )
    start_client_internal._insert_message(incoming, state, store)
    state.get_messages_legacy(is_reply=False)
    start_client_internal._insert_message(Message(RecordDict(), reply_to=incoming), state, store)

    assert module._pull_and_store_message(state=state) is not None  # type: ignore[attr-defined]
    loop = inspect.getsource(start_client_internal.start_client_internal)
    assert loop.count("run_id") == 2  # assigned from the pull, tested against None: nothing else
    assert "if run_id is None:" in loop


def _pull_a_message_of_a_run_that_ends_mid_pull(patched: bool) -> tuple[list[str], int]:
    """Flower's own `_pull_and_store_message`, real node state and object store; the
    SuperLink answers the object pull as it does for a run it ended. Returns the statuses of
    the node's tasks and how many messages the state still holds."""
    from client_node.supernode_launcher import pull_or_push

    def ended(*_args: object) -> bytes:
        raise start_client_internal.RunNotRunningException

    pulled = pull_one_message(pull_object=ended, wrap=pull_or_push if patched else None)
    statuses = [task.status.status for task in pulled.state.get_tasks()]
    return statuses, len(pulled.state.msg_store)


def test_a_message_whose_run_ended_mid_pull_leaves_no_claimable_task() -> None:
    """After a coordinator kill, the restarted coordinator ends the run; a SuperNode that was
    pulling one of its messages got `RunNotRunningException` (a BaseException) and left a
    pending task whose objects never come. The executor claimed it and waited 60 s while
    the next run's messages queued behind it. With `pull_or_push` the failed pull is
    cleaned up as Flower cleans up any other: message gone, task finished as failed."""
    stock_statuses, stock_messages = _pull_a_message_of_a_run_that_ends_mid_pull(patched=False)
    assert stock_statuses == ["pending"]  # what Flower 1.42 leaves: a task to claim, and
    assert stock_messages == 1  # its message, whose objects never come

    statuses, messages = _pull_a_message_of_a_run_that_ends_mid_pull(patched=True)
    assert statuses == ["finished"]
    assert messages == 0


def test_a_failed_heartbeat_is_retried_within_two_seconds() -> None:
    """Flower retries a failed SuperNode heartbeat after 1, 2, 4, 8, 16 s: a node could stay
    silent 8 s after a restarted coordinator is back and be marked offline. The capped
    backoff is what the sender's own retry invoker draws (built by Flower's constructor)."""
    from itertools import islice

    from client_node.supernode_launcher import HEARTBEAT_RETRY_CAP_S, cap_heartbeat_retries

    flower_exponential = getattr(heartbeat.exponential, "__wrapped__", heartbeat.exponential)
    module = ModuleType("heartbeat_copy")
    module.exponential = flower_exponential  # type: ignore[attr-defined]
    stock = list(islice(flower_exponential(max_delay=20), 6))
    cap_heartbeat_retries(module)
    cap_heartbeat_retries(module)  # idempotent
    capped = list(islice(module.exponential(max_delay=20), 6))  # type: ignore[attr-defined]

    assert stock[:5] == [1, 2, 4, 8, 16]
    assert capped == [1, 2, 2, 2, 2, 2]
    assert max(capped) == HEARTBEAT_RETRY_CAP_S
    assert "lambda: exponential(max_delay=20)" in inspect.getsource(heartbeat.HeartbeatSender)
