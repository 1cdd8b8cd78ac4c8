"""The SuperLink launcher's long polls, on Flower's own SuperLink state and pull handlers, and
what they rely on in Flower 1.42."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.app.metadata import Metadata
from flwr.common.constant import NOOP_ACCOUNT_NAME, NOOP_FLWR_AID, SUPERLINK_NODE_ID
from flwr.proto.fleet_pb2 import PullMessagesRequest, PullMessagesResponse
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import PullAppMessagesRequest
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink import main as superlink_main
from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager
from flwr.superlink.routers.fleet import router as fleet_router
from flwr.superlink.servicer.fleet import fleet_handlers
from flwr.superlink.servicer.runtime import runtime_handlers

from coordinator import superlink_launcher
from coordinator.superlink import SuperLink, SuperLinkSettings
from coordinator.superlink_launcher import (
    OBJECT_METHOD,
    STATE_METHOD,
    Doorbells,
    ring_on_store,
    wait_in_fleet_pulls,
    wait_in_runtime_pulls,
)

LONG = 60.0  # a wait no test sits out: a pull that returns before it was woken


@dataclass
class Link:
    """Flower's SuperLink state (in memory, as the coordinator runs it) with one run and
    its online nodes, our bells on it, and the pull handlers wrapped as the launcher wraps
    them (in modules of their own, so Flower's modules stay as they are)."""

    state: Any
    run_id: int
    nodes: list[int]
    bells: Doorbells
    fleet: ModuleType
    runtime: ModuleType
    session: str = ""
    pending: dict[str, bytes] = field(default_factory=dict)

    def instruct(self, node_id: int, *, objects: bool = True) -> Message:
        """Store a message for `node_id` as the Runtime API's push does."""
        metadata = Metadata(
            self.run_id, "", SUPERLINK_NODE_ID, node_id, "", "1", time.time(), 600.0, "train"
        )
        return self._store(metadata, objects=objects)

    def reply(self, to: Message) -> Message:
        """Store the node's reply to `to` as the Fleet API's push does."""
        metadata = Metadata(
            self.run_id,
            "",
            to.metadata.dst_node_id,
            SUPERLINK_NODE_ID,
            to.metadata.message_id,
            "1",
            time.time(),
            600.0,
            "train",
        )
        return self._store(metadata)

    def _store(self, metadata: Metadata, *, objects: bool = True) -> Message:
        """Store the message and its tree, then (with `objects`) push its objects, as both
        APIs' pushes do."""
        message = make_message(metadata, RecordDict({"c": ConfigRecord({"n": time.time()})}))
        message.metadata.__dict__["_message_id"] = message.object_id
        self.session = self.state.start_session(self.run_id)
        stored, missing = self.state.store_message_and_object_tree(
            message, get_object_tree(message), self.session
        )
        assert stored
        assert missing  # the objects the sender pushes next
        self.pending = {oid: o.deflate() for oid, o in get_all_nested_objects(message).items()}
        if objects:
            self.push_objects()
        return message

    def push_objects(self) -> None:
        for object_id, content in self.pending.items():
            assert self.state.store_object(self.run_id, self.session, object_id, content)

    def pull(self, node_id: int) -> PullMessagesResponse:
        request = PullMessagesRequest(node=Node(node_id=node_id))
        response: PullMessagesResponse = self.fleet.pull_messages(
            request=request, state=self.state, store=self.state.object_store
        )
        return response

    def pull_replies(self, ids: list[str]) -> Any:
        request = PullAppMessagesRequest(message_ids=ids)
        return self.runtime.pull_messages(request, self.state, Task(run_id=self.run_id))


@pytest.fixture
def link(monkeypatch: pytest.MonkeyPatch) -> Link:
    # ring_on_store patches the state class: put Flower's method back afterwards
    for method in (STATE_METHOD, OBJECT_METHOD):
        monkeypatch.setattr(InMemoryLinkState, method, getattr(InMemoryLinkState, method))
    monkeypatch.setattr(superlink_launcher, "FLEET_WAIT_S", LONG)
    monkeypatch.setattr(superlink_launcher, "RUNTIME_WAIT_S", LONG)
    bells = Doorbells(max_waiting=3)
    ring_on_store(InMemoryLinkState, bells)
    fleet = ModuleType("fleet_handlers")
    fleet.pull_messages = fleet_handlers.pull_messages  # type: ignore[attr-defined]
    wait_in_fleet_pulls(fleet, bells)
    runtime = ModuleType("runtime_handlers")
    runtime.pull_messages = runtime_handlers.pull_messages  # type: ignore[attr-defined]
    wait_in_runtime_pulls(runtime, bells)

    state = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    ).state()
    nodes = []
    for i in range(5):
        node_id = state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, f"key-{i}".encode(), 30)
        assert state.activate_node(node_id, 30)
        nodes.append(node_id)
    run_id = state.create_run(
        None, None, None, {}, NOOP_FEDERATION_ID, None, NOOP_FLWR_AID, "serverapp"
    )
    return Link(state, run_id, nodes, bells, fleet, runtime)


class Background:
    """A call on a thread of its own, like a request on one of the SuperLink's workers."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.started = time.monotonic()
        self.ended: float | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        self.result = call()
        self.ended = time.monotonic()

    def join(self, timeout: float = 10.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the pull is still waiting"
        return self.result

    @property
    def waiting(self) -> bool:
        return self._thread.is_alive()


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_nodes_empty_pull_waits_and_returns_the_message_stored_meanwhile(link: Link) -> None:
    node = link.nodes[0]
    pull = Background(lambda: link.pull(node))
    until(lambda: link.bells.waiting == 1)

    link.instruct(link.nodes[1])  # another node's message does not answer this pull
    time.sleep(0.05)
    assert pull.waiting
    sent = link.instruct(node)

    response = pull.join()  # woken: long before its 60 s
    assert [m.metadata.message_id for m in response.messages_list] == [sent.metadata.message_id]
    assert len(response.message_object_trees) == 1  # Flower's handler answered, as always
    assert link.bells.waiting == 0


def test_a_pull_that_found_a_message_answers_once_its_objects_are_there(link: Link) -> None:
    # The ServerApp pushes a message's objects right after the message: the node's pull
    # returns when they are stored, so the node pulls them at once instead of backing off.
    node = link.nodes[0]
    pull = Background(lambda: link.pull(node))
    until(lambda: link.bells.waiting == 1)
    sent = link.instruct(node, objects=False)

    time.sleep(0.1)
    assert pull.waiting  # the message is there, its objects are not
    link.push_objects()

    response = pull.join()
    assert [m.metadata.message_id for m in response.messages_list] == [sent.metadata.message_id]
    assert all(link.state.object_store.get(oid) for oid in link.pending)


def test_objects_that_never_come_hold_a_pull_only_briefly(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(superlink_launcher, "OBJECTS_WAIT_S", 0.2)
    sent = link.instruct(link.nodes[0], objects=False)

    response = Background(lambda: link.pull(link.nodes[0])).join()

    # Answered with the message after the bounded wait: the node's own backoff takes over.
    assert [m.metadata.message_id for m in response.messages_list] == [sent.metadata.message_id]
    assert link.bells.waiting == 0


def test_a_waiting_pull_with_nothing_for_it_answers_empty_when_its_time_is_up(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(superlink_launcher, "FLEET_WAIT_S", 0.2)
    started = time.monotonic()

    response = link.pull(link.nodes[0])

    assert list(response.messages_list) == []
    assert time.monotonic() - started >= 0.2
    assert link.bells.waiting == 0


def test_a_message_already_there_is_returned_without_waiting(link: Link) -> None:
    sent = link.instruct(link.nodes[0])

    pull = Background(lambda: link.pull(link.nodes[0]))
    response = pull.join()

    assert [m.metadata.message_id for m in response.messages_list] == [sent.metadata.message_id]


def test_a_node_holds_at_most_one_waiting_pull_and_all_nodes_at_most_max_waiting(
    link: Link,
) -> None:
    # The attack: a node (holding a registered key, as every Fleet request must) opens pull
    # after pull to tie up the SuperLink's worker threads. Only its first pull waits; the
    # others are answered at once, as Flower answers every pull.
    first = Background(lambda: link.pull(link.nodes[0]))
    until(lambda: link.bells.waiting == 1)
    floods = [Background(lambda: link.pull(link.nodes[0])) for _ in range(5)]
    for flood in floods:
        assert list(flood.join().messages_list) == []
    assert first.waiting
    assert link.bells.waiting == 1

    # Many nodes: at most max_waiting (3 here) pulls wait; the next node's pull answers at once.
    others = [Background(lambda n=n: link.pull(n)) for n in link.nodes[1:3]]  # type: ignore[misc]
    until(lambda: link.bells.waiting == 3)
    assert list(link.pull(link.nodes[3]).messages_list) == []
    assert link.bells.waiting == 3

    for node, waiter in zip(link.nodes[:3], [first, *others], strict=True):
        sent = link.instruct(node)
        got = waiter.join().messages_list
        assert [m.metadata.message_id for m in got] == [sent.metadata.message_id]
    assert link.bells.waiting == 0


def test_the_serverapps_empty_pull_waits_for_a_reply_of_its_run(link: Link) -> None:
    node = link.nodes[0]
    sent = link.instruct(node)
    (delivered,) = link.pull(node).messages_list
    assert delivered.metadata.message_id == sent.metadata.message_id

    pull = Background(lambda: link.pull_replies([sent.metadata.message_id]))
    until(lambda: link.bells.waiting == 1)
    reply = link.reply(sent)

    response = pull.join()
    assert [m.metadata.message_id for m in response.messages_list] == [reply.metadata.message_id]


# -- what the launcher relies on in Flower 1.42 ---------------------------------------------


def test_both_pushes_store_through_the_state_method_that_rings() -> None:
    runtime_push = inspect.getsource(runtime_handlers.push_messages)
    fleet_push = inspect.getsource(fleet_handlers.push_messages)

    assert "state.store_message_and_object_tree(" in runtime_push
    assert "state.store_message_and_object_tree(" in fleet_push
    for push_object in (runtime_handlers.push_object, fleet_handlers.push_object):
        assert "state.store_object(" in inspect.getsource(push_object)
    for state_class in (InMemoryLinkState, SqlLinkState):
        assert STATE_METHOD in vars(state_class)
        assert callable(getattr(state_class, OBJECT_METHOD))


def test_the_routers_call_the_pull_handlers_through_their_modules() -> None:
    # Replacing the module attribute is what replaces the handler the router runs.
    fleet_route = inspect.getsource(fleet_router.fleet_pull_messages)
    assert "fleet_handlers.pull_messages(" in fleet_route
    assert "request=request, state=state, store=state.object_store" in fleet_route
    assert superlink_main._RUNTIME_HANDLERS is runtime_handlers
    assert list(inspect.signature(runtime_handlers.pull_messages).parameters) == [
        "request",
        "state",
        "task",
    ]
    # Flower runs these synchronous handlers in its worker thread pool (not on the event
    # loop): a waiting pull blocks one worker, never the server.
    assert not inspect.iscoroutinefunction(fleet_router.fleet_pull_messages)


def test_the_coordinator_starts_its_superlink_through_the_launcher(tmp_path: Any) -> None:
    settings = SuperLinkSettings(
        data_dir=tmp_path,
        ca_certificate=tmp_path / "ca.pem",
        server_certificate=tmp_path / "server.pem",
        server_key=tmp_path / "server.key",
    )
    argv = SuperLink(settings).command()

    assert argv[1:3] == ["-m", "coordinator.superlink_launcher"]
    assert "--enable-supernode-auth" in argv
