"""The SuperNode launcher's shortened waits, pinned to the Flower version they were read from."""

from __future__ import annotations

import inspect
import time

import pytest
from flwr.supernode import start_client_internal

from client_node.supernode_launcher import (
    IDLE_MAX_S,
    IDLE_MIN_S,
    AdaptiveWaits,
    FlowerVersionError,
    check_flower_version,
    install,
)


def test_the_waits_we_replace_are_still_flowers_literals() -> None:
    source = inspect.getsource(start_client_internal)

    assert "import time\n" in source
    assert source.count("time.sleep(3)") == 1  # after an empty pull
    assert source.count("time.sleep(0.5)") == 2  # waiting for a reply, and for an object


def test_another_flower_version_is_refused_loudly() -> None:
    check_flower_version("1.42.0")

    with pytest.raises(FlowerVersionError, match=r"Flower 1\.43\.0 is installed"):
        check_flower_version("1.43.0")


def test_install_replaces_time_in_the_supernode_loop_only() -> None:
    original = start_client_internal.time
    try:
        waits = install()

        assert start_client_internal.time is waits
        assert time.sleep is not waits.sleep  # the rest of the process keeps the real one
        assert waits.monotonic is time.monotonic
    finally:
        start_client_internal.time = original  # type: ignore[attr-defined]


def test_empty_pulls_back_off_to_a_second_and_activity_resets() -> None:
    waits = AdaptiveWaits()
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
