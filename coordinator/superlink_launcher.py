"""`python -m coordinator.superlink_launcher ARGS`: Flower's `flower-superlink` whose pulls
wait for what they ask for (long polls) instead of answering "nothing yet" at once.

In Flower 1.42 a SuperNode learns of a message only by pulling (``/v1/fleet/pull-messages``),
and the ServerApp learns of a reply only by pulling (``/v1/runtime/pull-messages``). An empty
pull is answered at once, so each side polls, and every message wave pays the poll interval
twice (measured in bench/secagg.py: a secure round's unmask wave, which carries no training,
took 0.26 s from the ServerApp's push to the node's claim, most of it the node's pull
schedule). Polling faster costs CPU that a 2-core host shares with training.

This launcher makes both pulls wait, inside the SuperLink, for up to ``FLEET_WAIT_S`` /
``RUNTIME_WAIT_S`` until there is something to return, and then runs Flower's own
handler, unchanged, to return it:

* `Doorbells`: the state's ``store_message_and_object_tree`` (the one call through which
  both the Runtime API's push of instructions and the Fleet API's push of replies store a
  message with its object tree) rings the destination node's bell, or the run's bell for a
  reply, *after* the message and its tree are stored;
* a pull that found nothing waits on its bell (or until its time is up) and asks the state
  again. An empty pull still returns an empty answer, as Flower's does, so a node or a
  ServerApp that does not expect long polls works unchanged (it just waits longer);
* a pull that found a message waits (up to ``OBJECTS_WAIT_S``) until the message's
  objects are stored too: the sender pushes them right after the message, and a puller
  that asked for them earlier would back off (Flower's first retry, even shortened, is
  0.05 s, doubling). The state's ``store_object`` wakes these waits.

What a waiting pull holds is one of the SuperLink's worker threads (FastAPI runs Flower's
synchronous handlers in a pool of 40). So a pull waits only if it is the only waiting pull of
its node (or run) and fewer than ``MAX_WAITING`` pulls wait in all; any other pull is
answered at once, as in Flower. A node that floods the SuperLink with concurrent pulls (it
must hold a registered key: the Fleet API's node authentication runs before any handler)
therefore holds at most one thread. Flower's handlers, its authentication and its state are
not changed; on any other Flower version the launcher refuses to start with a message that
says so (`lepton_fl.flower_pins.check_flower_version`), and
`tests/test_superlink_launcher.py` pins what it relies on. Upstream we would propose the same
as an option of the pull handlers (a ``wait`` field in ``PullMessagesRequest``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from types import ModuleType
from typing import Any

from coordinator.superlink_middleware import scope_middlewares
from lepton_fl.flower_pins import FlowerVersionError, check_flower_version, run_flower_command

FLEET_WAIT_S = 2.0
"""How long a node's empty pull waits at the SuperLink for a message. An idle node then asks
once every 2 s (our SuperNodes pull again at once after a pull that waited,
`client_node.supernode_launcher.AdaptiveWaits`); a SuperLink stopping waits at most this long
for its waiting pulls."""
RUNTIME_WAIT_S = 0.5
"""How long the ServerApp's empty pull waits for a reply: shorter than its liveness check
(`coordinator.fl.messaging.LIVENESS_INTERVAL_S`), which runs between two pulls."""
OBJECTS_WAIT_S = 1.0
"""How long a pull that found a message waits for the message's objects to arrive (the
sender pushes them right after the message): the node or the ServerApp then pulls them at
once instead of backing off and asking again."""
MAX_WAITING = 24
"""The most pulls that wait at once (of the SuperLink's 40 worker threads): 20 nodes and a
few runs, with room left for pushes, object transfers and heartbeats."""

STATE_METHOD = "store_message_and_object_tree"
OBJECT_METHOD = "store_object"


class Doorbells:
    """One bell per node (a message for it was stored) and per run (a reply was stored), and
    the count of pulls that wait on them."""

    def __init__(self, *, max_waiting: int = MAX_WAITING) -> None:
        self.max_waiting = max_waiting
        self._lock = threading.Lock()
        self._bells: dict[Hashable, threading.Event] = {}
        self._waiting: set[Hashable] = set()
        self._objects = threading.Condition()

    def ring(self, key: Hashable) -> None:
        """Something for `key` was stored: wake the pull that waits for it, if any."""
        with self._lock:
            bell = self._bells.get(key)
        if bell is not None:
            bell.set()

    def object_stored(self) -> None:
        """An object was stored: wake the pulls that wait for their messages' objects."""
        with self._objects:
            self._objects.notify_all()

    def wait_whole(self, whole: Callable[[], bool | None], wait_s: float) -> bool:
        """Wait up to `wait_s` until `whole()`; whether it is."""
        deadline = time.monotonic() + wait_s
        with self._objects:  # checked under the condition: a store in between wakes us
            while not whole():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._objects.wait(remaining)
        return True

    @property
    def waiting(self) -> int:
        """How many pulls wait now."""
        with self._lock:
            return len(self._waiting)

    @contextlib.contextmanager
    def slot(self, key: Hashable) -> Iterator[threading.Event | None]:
        """The bell a pull for `key` may wait on, or None when it must answer at once (another
        pull for `key` waits already, or `max_waiting` pulls do)."""
        with self._lock:
            if key in self._waiting or len(self._waiting) >= self.max_waiting:
                granted = None
            else:
                self._waiting.add(key)
                granted = self._bells.setdefault(key, threading.Event())
        try:
            yield granted
        finally:
            if granted is not None:
                with self._lock:
                    self._waiting.discard(key)

    def pull(
        self,
        key: Hashable,
        wait_s: float,
        ask: Callable[[], Any],
        whole: Callable[[Any], bool | None],
    ) -> Any:
        """`ask()` until it finds something or `wait_s` passed, waiting on `key`'s bell
        between two asks; then up to `OBJECTS_WAIT_S` until what it found is whole. The last
        answer. ``whole(answer)`` is None for an answer that found nothing. Asks once, at
        once, without a slot."""
        deadline = time.monotonic() + wait_s
        with self.slot(key) as bell:
            while True:
                if bell is not None:
                    bell.clear()  # before asking: a ring after the ask is not lost
                answer = ask()
                if bell is None:
                    return answer
                complete = whole(answer)
                if complete is not None:  # found something: return it once it is whole
                    if not complete:
                        self.wait_whole(functools.partial(whole, answer), OBJECTS_WAIT_S)
                    return answer
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return answer
                bell.wait(remaining)


BELLS = Doorbells()


def node_key(node_id: int) -> tuple[str, int]:
    return ("node", int(node_id))


def run_key(run_id: int) -> tuple[str, int]:
    return ("run", int(run_id))


def objects_present(trees: Iterable[Any], store: Any) -> bool | None:
    """Whether every object of these messages' object trees is in `store` (Flower keeps a
    preregistered object's content empty until it is pushed); None if there are none."""
    pending = list(trees)
    if not pending:
        return None
    while pending:
        tree = pending.pop()
        if not store.get(tree.object_id):
            return False
        pending.extend(tree.children)
    return True


def ring_on_store(state_class: type, bells: Doorbells = BELLS) -> None:
    """Make `state_class`'s ``store_message_and_object_tree`` ring the bell of what it stored:
    the destination node of an instruction, the run of a reply. Idempotent."""
    original = getattr(state_class, STATE_METHOD)
    base = getattr(original, "__wrapped__", original)

    @functools.wraps(base)
    def store(self: Any, message: Any, object_tree: Any, session_id: str) -> Any:
        stored, missing = base(self, message, object_tree, session_id)
        if stored:
            metadata = message.metadata
            if metadata.reply_to_message_id:
                bells.ring(run_key(metadata.run_id))
            else:
                bells.ring(node_key(metadata.dst_node_id))
        return stored, missing

    setattr(state_class, STATE_METHOD, store)

    original_object = getattr(state_class, OBJECT_METHOD)
    base_object = getattr(original_object, "__wrapped__", original_object)

    @functools.wraps(base_object)
    def store_object(self: Any, *args: Any, **kwargs: Any) -> Any:
        stored = base_object(self, *args, **kwargs)
        if stored:
            bells.object_stored()
        return stored

    setattr(state_class, OBJECT_METHOD, store_object)


def wait_in_fleet_pulls(module: ModuleType, bells: Doorbells = BELLS) -> None:
    """Make the Fleet API's pull handler (`module.pull_messages`) wait up to `FLEET_WAIT_S`
    for a message for the pulling node. Idempotent."""
    original = module.pull_messages
    base = getattr(original, "__wrapped__", original)

    @functools.wraps(base)
    def pull_messages(request: Any, state: Any, store: Any) -> Any:
        return bells.pull(
            node_key(request.node.node_id),
            FLEET_WAIT_S,
            lambda: base(request=request, state=state, store=store),
            lambda answer: objects_present(answer.message_object_trees, store),
        )

    module.pull_messages = pull_messages  # type: ignore[attr-defined]


def wait_in_runtime_pulls(module: ModuleType, bells: Doorbells = BELLS) -> None:
    """Make the Runtime API's pull handler (`module.pull_messages`: the ServerApp collecting
    replies) wait up to `RUNTIME_WAIT_S` for a reply of its run. Idempotent."""
    original = module.pull_messages
    base = getattr(original, "__wrapped__", original)

    @functools.wraps(base)
    def pull_messages(request: Any, state: Any, task: Any) -> Any:
        return bells.pull(
            run_key(task.run_id),
            RUNTIME_WAIT_S,
            lambda: base(request, state, task),
            lambda answer: objects_present(answer.message_object_trees, state.object_store),
        )

    module.pull_messages = pull_messages  # type: ignore[attr-defined]


def install(bells: Doorbells = BELLS) -> None:
    """Put the long polls into this process's Flower SuperLink."""
    check_flower_version(who="The SuperLink launcher")
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
    from flwr.superlink import main as superlink_app
    from flwr.superlink.routers.control import middlewares as control_middlewares
    from flwr.superlink.servicer.fleet import fleet_handlers
    from flwr.superlink.servicer.runtime import runtime_handlers

    for state_class in (InMemoryLinkState, SqlLinkState):
        for method in (STATE_METHOD, OBJECT_METHOD):
            if not hasattr(state_class, method):
                raise FlowerVersionError(
                    f"{state_class.__name__} has no {method}: the SuperLink state of this "
                    "Flower does not store messages and objects the way 1.42's does."
                )
        ring_on_store(state_class, bells)
    wait_in_fleet_pulls(fleet_handlers, bells)
    wait_in_runtime_pulls(runtime_handlers, bells)
    scope_middlewares(superlink_app, control_middlewares)


def _flower_superlink() -> Callable[[], None]:
    from flwr.superlink.cli.flower_superlink import flower_superlink

    return flower_superlink


def main() -> None:
    """Run `flower-superlink` with the given arguments and the long polls."""
    run_flower_command("flower-superlink", install, _flower_superlink)


if __name__ == "__main__":
    main()
