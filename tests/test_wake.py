"""The SuperNode's wake-up to the executor (`client_node.wake`): a datagram per stored
message, sent by Flower's own pull function as our launcher wraps it, received by the
executor's wait between polls."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supernode.nodestate import NodeStateFactory
from supernode_support import pull_one_message

from client_node.executor import NodeExecutor, PollSchedule
from client_node.supernode_launcher import pull_or_push
from client_node.wake import (
    MAX_PATH_BYTES,
    SOCKET_NAME,
    WakeReceiver,
    open_receiver,
    send_wake,
    wake_socket_path,
)


def test_a_wake_up_is_received_and_several_count_as_one(tmp_path: Path) -> None:
    receiver = WakeReceiver(tmp_path / SOCKET_NAME)
    try:
        assert not receiver.wait(0.05)  # nothing sent: the wait times out
        for _ in range(3):
            send_wake(str(receiver.path))
        assert receiver.wait(5.0)
        assert not receiver.wait(0.05)  # all three were drained by the first wait
        assert stat.S_IMODE(receiver.path.stat().st_mode) == 0o600
    finally:
        receiver.close()
    assert not receiver.path.exists()
    send_wake(str(receiver.path))  # nobody listening: not an error


def test_a_stale_socket_file_is_replaced_and_a_long_path_falls_back_to_polling(
    tmp_path: Path,
) -> None:
    stale = WakeReceiver(tmp_path / SOCKET_NAME)
    stale._sock.close()  # a node killed without cleaning up leaves the file behind
    assert stale.path.exists()
    receiver = open_receiver(wake_socket_path(tmp_path))
    assert receiver is not None
    receiver.close()

    deep = tmp_path / ("d" * (MAX_PATH_BYTES - len(str(tmp_path)))) / SOCKET_NAME
    assert open_receiver(deep) is None


def test_the_executor_wakes_on_a_signal_not_on_its_fallback_poll(tmp_path: Path) -> None:
    receiver = WakeReceiver(tmp_path / SOCKET_NAME)
    executor = NodeExecutor(
        lambda e, r: r,
        "127.0.0.1:1",
        auth_secret=None,
        schedule=PollSchedule(woken_s=600.0),
        wake=receiver,
    )
    assert executor.schedule.wait_after(0.0, woken=True) == 600.0
    paused = threading.Thread(target=executor._pause, args=(600.0,))
    try:
        paused.start()
        time.sleep(0.05)
        send_wake(str(receiver.path))
        paused.join(timeout=30.0)
        assert not paused.is_alive()  # woken, long before its 600 s fallback
    finally:
        receiver.close()


def _store_a_message(on_message: list[int]) -> int | None:
    """Flower's own `_pull_and_store_message` wrapped by `pull_or_push`, with real node state
    and object store: one message of run 7, all of whose objects the SuperLink serves."""
    pulled = pull_one_message(
        wrap=lambda module: pull_or_push(module, on_message=lambda: on_message.append(1))
    )
    assert [task.status.status for task in pulled.state.get_tasks()] == ["pending"]  # claimable
    assert pulled.store.get(pulled.message.object_id) is not None  # with its objects
    return pulled.returned


def test_the_launcher_wakes_the_executor_once_a_message_is_stored_whole() -> None:
    woken: list[int] = []
    assert _store_a_message(woken) == 7
    assert woken == [1]


@pytest.mark.parametrize("pulled", [None, 0])
def test_no_wake_up_without_a_new_message(pulled: int | None) -> None:
    """An empty pull (None), and an empty pull while a reply waits (0): nothing to claim."""
    woken: list[int] = []
    module = ModuleType("supernode_loop")
    module._pull_and_store_message = lambda **kwargs: pulled  # type: ignore[attr-defined]
    pull_or_push(module, on_message=lambda: woken.append(1))
    state = NodeStateFactory(ObjectStoreFactory()).state()
    assert module._pull_and_store_message(state=state) == pulled  # type: ignore[attr-defined]
    assert woken == []
