"""The shortened waits of the SuperNode launcher and the executor, pinned to the Flower version
they were read from."""

from __future__ import annotations

import functools
import inspect
import time
from types import ModuleType

import pytest
from flwr.supercore.inflatable import inflatable_utils
from flwr.superlink.grid import http_grid
from flwr.supernode import start_client_internal
from flwr.supernode.runtime import run_clientapp

from client_node.executor import NodeExecutor
from client_node.supernode_launcher import (
    IDLE_MAX_S,
    IDLE_MIN_S,
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
    finally:
        start_client_internal.time = original_time  # type: ignore[attr-defined]
        start_client_internal.pull_objects = original_pull  # type: ignore[attr-defined]


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
    # While the run is active, empty pulls stay short: the next round's message is not kept
    # waiting behind a wait that grew while the slowest node trained.
    assert [waits.delay_for(3) for _ in range(20)] == [IDLE_MIN_S] * 20
    time.sleep(0.3)  # the busy window has passed: back off again
    assert waits.delay_for(3) < waits.delay_for(3) < waits.delay_for(3)


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
        assert pull.keywords == {"initial_backoff": 0.05, "backoff_cap": 1.0}
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
