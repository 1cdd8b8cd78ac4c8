"""`python -m client_node.supernode_launcher ARGS`: Flower's `flower-supernode`, minus its
fixed waits.

Flower 1.42's SuperNode loop (`flwr/supernode/start_client_internal.py`) sleeps a literal
3 s whenever a pull from the SuperLink finds no message, and 0.5 s at a time while it waits
for a reply or an object. With our executor answering in milliseconds, those sleeps are most
of a round's wall time. No flag, environment variable or argument sets them, so this
launcher replaces the `time` module *that one module* sees with `AdaptiveWaits` and then
runs Flower's own `flower_supernode()` entry point, unchanged:

* an empty pull waits ``IDLE_MIN_S`` for ``BUSY_WINDOW_S`` after any activity (a round's next
  message usually follows within a few seconds, and a wait that has grown meanwhile would
  delay it), then ``idle_s``, which grows by half each empty pull up to ``IDLE_MAX_S`` (an
  idle node polls the SuperLink about once a second, not 20 times);
* a wait for a reply or an object sleeps ``ACTIVE_S`` instead of 0.5 s, and counts as
  activity.

It also shortens the object-pull backoff (`lepton_fl.flower_pins`). It works only for the
Flower series it was written against: on any other version it refuses to start with a
message saying so (`lepton_fl.flower_pins.check_flower_version`), and
`tests/test_supernode_launcher.py` pins the behaviour. Upstream we would propose an option
(or an event) for the SuperNode's idle wait instead of the literal, and a backoff argument
for object pulls.
"""

from __future__ import annotations

import sys
import threading
import time
from types import ModuleType

from lepton_fl.flower_pins import (
    FlowerVersionError,
    check_flower_version,
    shorten_object_pull_backoff,
)

IDLE_SLEEP_S = 3  # flwr 1.42: `time.sleep(3)` after an empty pull
ACTIVE_SLEEP_S = 0.5  # flwr 1.42: `time.sleep(0.5)` while waiting for a reply or an object
IDLE_MIN_S = 0.1
IDLE_MAX_S = 1.0
ACTIVE_S = 0.02
BUSY_WINDOW_S = 10.0


class AdaptiveWaits(ModuleType):
    """A stand-in for `time` in one Flower module: the same module, other sleeps."""

    def __init__(self, *, busy_window_s: float = BUSY_WINDOW_S) -> None:
        super().__init__("time")
        self.__dict__.update(
            {k: v for k, v in vars(time).items() if not k.startswith("__") and k != "sleep"}
        )
        self.idle_s = IDLE_MIN_S
        self.busy_window_s = busy_window_s
        self._last_active = float("-inf")
        self._lock = threading.Lock()

    def sleep(self, seconds: float) -> None:  # noqa: D102 - time.sleep's contract
        time.sleep(self.delay_for(seconds))

    def delay_for(self, seconds: float) -> float:
        """What a Flower ``sleep(seconds)`` becomes now (and the state it leaves behind)."""
        with self._lock:
            if seconds == IDLE_SLEEP_S:
                if time.monotonic() - self._last_active < self.busy_window_s:
                    delay = IDLE_MIN_S
                else:
                    delay = self.idle_s
                    self.idle_s = min(self.idle_s * 1.5, IDLE_MAX_S)
            elif seconds == ACTIVE_SLEEP_S:
                delay = ACTIVE_S
                self.idle_s = IDLE_MIN_S
                self._last_active = time.monotonic()
            else:
                delay = seconds
        return delay


def install() -> AdaptiveWaits:
    """Put `AdaptiveWaits` and a short object-pull backoff into Flower's SuperNode loop
    module; return the waits."""
    check_flower_version(who="The SuperNode launcher")
    from flwr.supernode import start_client_internal

    waits = AdaptiveWaits()
    start_client_internal.time = waits  # type: ignore[attr-defined]
    shorten_object_pull_backoff(start_client_internal)
    return waits


def main() -> None:
    """Run `flower-supernode` with the given arguments and the adaptive waits."""
    try:
        install()
    except FlowerVersionError as err:
        print(f"error [flower_version]: {err}", file=sys.stderr)
        sys.exit(2)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
