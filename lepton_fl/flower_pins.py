"""What we rely on inside Flower, in one place, pinned to the Flower series we read it from.

Three of our processes use Flower internals that no public API offers: the node's executor
(the SuperNode's Runtime API protocol and the object-pull backoff of its task input), the
SuperNode launcher (its fixed waits and object-pull backoff) and the coordinator's ServerApp
process (the Runtime API and the object-pull backoff). Each calls
`check_flower_version` first, so any other Flower fails loudly with the reason instead of
misbehaving; `tests/test_supernode_launcher.py` pins the behaviours themselves.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from types import ModuleType

import flwr

SUPPORTED_FLOWER = "1.42"

OBJECT_PULL_INITIAL_BACKOFF_S = 0.05
"""Flower 1.42 waits 1 s (doubling to 10 s) before retrying an object that is not there yet;
on loopback an object is there milliseconds later."""
OBJECT_PULL_BACKOFF_CAP_S = 1.0


class FlowerVersionError(RuntimeError):
    """The installed Flower is not the series whose internals we use."""

    code = "flower_version_unsupported"


def check_flower_version(version: str | None = None, *, who: str = "This node") -> None:
    """Fail loudly unless flwr is 1.42.x."""
    found = flwr.__version__ if version is None else version
    if found.split(".")[:2] != SUPPORTED_FLOWER.split("."):
        raise FlowerVersionError(
            f"{who} needs flwr {SUPPORTED_FLOWER}.x, but flwr {found} is installed. Lepton uses "
            "Flower internals of that series (the Runtime API protocol, the SuperNode's waits, "
            f"the object-pull backoff); install flwr=={SUPPORTED_FLOWER}.* (make setup) and "
            "retry, or update lepton_fl/flower_pins.py and its tests for the new version."
        )


PULL_FUNCTIONS = ("pull_objects", "pull_and_inflate_object_from_tree")
"""Flower 1.42's object-pull helpers (`flwr.supercore.inflatable.inflatable_utils`), each
with the ``initial_backoff`` and ``backoff_cap`` arguments; modules import them by name."""


def shorten_object_pull_backoff(module: ModuleType, *, max_time_s: float | None = None) -> None:
    """Give the object-pull helpers `module` imported by name (`PULL_FUNCTIONS`) a short
    backoff, and with ``max_time_s`` a bound on how long one pull waits for objects that are
    not there yet (Flower's default is 2 hours); idempotent. Raises `FlowerVersionError` if
    `module` imports none of them."""
    found = [name for name in PULL_FUNCTIONS if hasattr(module, name)]
    if not found:
        raise FlowerVersionError(
            f"{module.__name__} imports none of {', '.join(PULL_FUNCTIONS)}: the object pulls "
            f"of flwr {flwr.__version__} are not those of {SUPPORTED_FLOWER}.x that we shorten."
        )
    for name in found:
        original = getattr(module, name)
        base = getattr(original, "func", original)  # never wrap twice
        bounded = {} if max_time_s is None else {"max_time": max_time_s}
        shortened = functools.partial(
            base,
            initial_backoff=OBJECT_PULL_INITIAL_BACKOFF_S,
            backoff_cap=OBJECT_PULL_BACKOFF_CAP_S,
            **bounded,
        )
        setattr(module, name, shortened)


def run_flower_command(
    name: str, install: Callable[[], object], entry_point: Callable[[], Callable[[], None]]
) -> None:
    """Run Flower's command `name` after `install()` has changed what it must in this process;
    `entry_point()` imports the command's function only then. A `FlowerVersionError` from
    `install` exits 2 with its message instead."""
    try:
        install()
    except FlowerVersionError as err:
        print(f"error [flower_version]: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv[0] = name
    entry_point()()
