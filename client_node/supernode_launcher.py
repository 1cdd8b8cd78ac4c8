"""`python -m client_node.supernode_launcher ARGS`: Flower's `flower-supernode`, minus its
fixed waits.

Flower 1.42's SuperNode loop (`flwr/supernode/start_client_internal.py`) sleeps a literal
3 s whenever a pull from the SuperLink finds no message, and 0.5 s at a time while it waits
for a reply or an object. With our executor answering in milliseconds, those sleeps are most
of a round's wall time. No flag, environment variable or argument sets them, so this
launcher replaces the `time` module *that one module* sees with `AdaptiveWaits` and then
runs Flower's own `flower_supernode()` entry point, unchanged:

* within ``BUSY_WINDOW_S`` after any activity (a round's next message usually follows within
  a few seconds), an empty pull waits ``IDLE_MIN_S`` at first, growing by half each empty
  pull up to ``BUSY_MAX_S``: a node that has answered and waits for the other nodes asks the
  SuperLink about five times in its first second, then twice a second. With 20 nodes on one 2-core
  host, fixed 0.1 s pulls were 200 requests a second at the SuperLink's one Python process
  and held every round back (bench/round_overhead.py); with 4 nodes the next message comes
  while the waits are still short. After the window, ``idle_s``, which grows by half each
  empty pull up to ``IDLE_MAX_S`` (an idle node polls the SuperLink about once a second, not
  20 times);
* a wait for a reply or an object sleeps ``ACTIVE_S`` instead of 0.5 s, and counts as
  activity.

The wait after an empty pull counts from the start of that pull: our SuperLink holds an
empty pull open until a message for the node is stored or up to 2 s pass
(`coordinator.superlink_launcher`), and the pull after such a wait starts at once. Against
a SuperLink that answers at once, the schedule above is what the node waits.

Once a pulled message is stored with all its objects, it wakes the node's executor
(`client_node.wake`, the socket named by ``LEPTON_EXECUTOR_WAKE``), which then claims the task
at once instead of polling the Runtime API for it.

It also shortens the object-pull backoff (`lepton_fl.flower_pins`), and the SuperNode's
heartbeat interval (`shorten_heartbeat`): Flower 1.42 asks the SuperLink for a 30 s interval
(``HEARTBEAT_DEFAULT_INTERVAL``, imported by name into the Fleet connection and the heartbeat
sender) and the SuperLink counts a node online for ``HEARTBEAT_PATIENCE`` (2) intervals after
its last heartbeat, honouring whatever interval the node asks for within [10 s, 1800 s]. A
node killed without saying goodbye is refused activation (exit 305) until then: 60 s with
Flower's interval, 20 s with ours (``HEARTBEAT_INTERVAL_S``). It costs one small HTTPS request
every 3.5 to 4.5 s instead of every 17.5 to 22.5 s. It works only for the
Flower series it was written against: on any other version it refuses to start with a
message saying so (`lepton_fl.flower_pins.check_flower_version`), and
`tests/test_supernode_launcher.py` pins the behaviour. Upstream we would propose an option
(or an event) for the SuperNode's idle wait instead of the literal, and a backoff argument
for object pulls.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from flwr.common.constant import HEARTBEAT_PATIENCE  # the SuperLink's: 2 intervals
from flwr.supercore.run import RunNotRunningException

from client_node.wake import WAKE_ENV, send_wake
from lepton_fl.flower_pins import (
    FlowerVersionError,
    check_flower_version,
    run_flower_command,
    shorten_object_pull_backoff,
)

HEARTBEAT_INTERVAL_S = 10
"""The heartbeat interval our SuperNodes ask for: Flower 1.42's smallest
(``HEARTBEAT_MIN_INTERVAL``; the SuperLink refuses a shorter one with
``FLEET_INVALID_HEARTBEAT_INTERVAL``)."""
STALE_SESSION_S = HEARTBEAT_PATIENCE * HEARTBEAT_INTERVAL_S
"""The longest a killed node's session still counts as online at the SuperLink: a restarted
node is refused activation (exit 305) for at most this long after its predecessor's last
heartbeat."""

HEARTBEAT_RETRY_CAP_S = 2.0
"""The longest wait between two attempts of a failed heartbeat (`cap_heartbeat_retries`)."""

IDLE_SLEEP_S = 3  # flwr 1.42: `time.sleep(3)` after an empty pull
ACTIVE_SLEEP_S = 0.5  # flwr 1.42: `time.sleep(0.5)` while waiting for a reply or an object
IDLE_MIN_S = 0.1
IDLE_MAX_S = 1.0
BUSY_MAX_S = 0.5
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
        self.busy_s = IDLE_MIN_S
        self.busy_window_s = busy_window_s
        self._last_active = float("-inf")
        self._pull_started: float | None = None
        self._lock = threading.Lock()

    def pull_started(self) -> None:
        """The loop starts a pull now: the wait after it, if it finds nothing, counts from
        here (a pull our SuperLink held open for seconds is followed by the next at once)."""
        with self._lock:
            self._pull_started = time.monotonic()

    def sleep(self, seconds: float) -> None:  # noqa: D102 - time.sleep's contract
        time.sleep(self.delay_for(seconds))

    def delay_for(self, seconds: float) -> float:
        """What a Flower ``sleep(seconds)`` becomes now (and the state it leaves behind)."""
        with self._lock:
            if seconds == IDLE_SLEEP_S:
                if time.monotonic() - self._last_active < self.busy_window_s:
                    delay = self.busy_s
                    self.busy_s = min(self.busy_s * 1.5, BUSY_MAX_S)
                else:
                    delay = self.idle_s
                    self.idle_s = min(self.idle_s * 1.5, IDLE_MAX_S)
                if self._pull_started is not None:
                    delay = max(0.0, delay - (time.monotonic() - self._pull_started))
            elif seconds == ACTIVE_SLEEP_S:
                delay = ACTIVE_S
                self.idle_s = IDLE_MIN_S
                self.busy_s = IDLE_MIN_S
                self._last_active = time.monotonic()
            else:
                delay = seconds
            self._pull_started = None
        return delay


def shorten_heartbeat(interval_s: int = HEARTBEAT_INTERVAL_S) -> None:
    """Make this process's SuperNode ask for, and keep, a heartbeat every `interval_s`.

    Flower 1.42 reads ``HEARTBEAT_DEFAULT_INTERVAL`` by name in two modules: the Fleet
    connection (the interval sent with ActivateNode and every SendNodeHeartbeat, which the
    SuperLink stores for the node) and the heartbeat sender (the wait between heartbeats,
    ``(interval - 5 s) * 0.7..0.9``). Both are replaced here, in this process only; the
    ``flwr.common.constant`` value itself is untouched.
    """
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    for module in (fleet_http_connection, heartbeat):
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
            raise FlowerVersionError(
                f"{module.__name__} no longer reads HEARTBEAT_DEFAULT_INTERVAL: the SuperNode "
                "heartbeat of this Flower is not the 1.42 one we shorten."
            )
        module.HEARTBEAT_DEFAULT_INTERVAL = interval_s  # type: ignore[attr-defined]
    cap_heartbeat_retries(heartbeat)


def cap_heartbeat_retries(module: ModuleType, cap_s: float = HEARTBEAT_RETRY_CAP_S) -> None:
    """Make the heartbeat sender retry a failed heartbeat at most `cap_s` apart.

    Flower 1.42 retries with ``exponential(max_delay=20)``: 1, 2, 4, 8, 16 s. A coordinator
    that is down for 7 s (a restart) then hears from a node only up to 8 s after it is back,
    so the node's last heartbeat can be more than `STALE_SESSION_S` old: the SuperLink marks
    it offline, and the first message of a run started right after the restart is answered
    "Node Unavailable" (seen by bench/coordinator_kill_drill.py). A failed heartbeat costs
    one refused connection, so retrying every `cap_s` is cheap. Idempotent."""
    base = getattr(module.exponential, "__wrapped__", module.exponential)

    @functools.wraps(base)
    def capped(base_delay: float = 1, multiplier: float = 2, max_delay: float | None = None) -> Any:
        limit = cap_s if max_delay is None else min(max_delay, cap_s)
        return base(base_delay=min(base_delay, limit), multiplier=multiplier, max_delay=limit)

    module.exponential = capped  # type: ignore[attr-defined]


def pending_replies(state: Any) -> int:
    """How many replies the SuperNode's state holds that no push has taken yet (without taking
    them: Flower's `get_messages_legacy` marks what it returns as retrieved)."""
    with state.lock_msg_store:
        return sum(
            1
            for entry in state.msg_store.values()
            if not entry.is_retrieved and entry.message.metadata.reply_to_message_id
        )


def push_every_reply(module: ModuleType) -> None:
    """Make Flower's SuperNode push every waiting reply, not one batch per pulled message.

    Flower 1.42's loop pushes (``_push_messages``: wait for a reply, send what is there) only
    after it pulled a message. A reply of a run that ended meanwhile (the coordinator died
    while the node answered it) is taken by the push that follows the next pulled message,
    and refused ("not in RUNNING status"); the reply to *that* message then waits for a
    pull that never comes, since the ServerApp sends nothing more until it has it: the new
    run stalls. Seen in tests/test_admin_e2e.py's coordinator-kill test. After each push we
    push again while replies are waiting. Idempotent."""
    original = module._push_messages
    base = getattr(original, "__wrapped__", original)

    @functools.wraps(base)
    def push_all(**kwargs: Any) -> None:
        base(**kwargs)
        while pending_replies(kwargs["state"]):
            base(**kwargs)

    module._push_messages = push_all  # type: ignore[attr-defined]


class RunEndedWhilePulling(Exception):
    """The SuperLink ended a message's run while the SuperNode was pulling the message's
    objects: an ordinary failed pull, which Flower's SuperNode cleans up."""


def _ended_run_is_a_failed_pull(call: Callable[..., Any]) -> Callable[..., Any]:
    """`call`, raising `RunEndedWhilePulling` (an `Exception`) where Flower raises
    `RunNotRunningException` (a `BaseException`)."""

    @functools.wraps(call)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except RunNotRunningException as err:
            raise RunEndedWhilePulling("the run is no longer running at the SuperLink") from err

    return wrapped


def pull_or_push(
    module: ModuleType,
    *,
    on_message: Callable[[], None] | None = None,
    on_pull: Callable[[], None] | None = None,
) -> None:
    """Make Flower's SuperNode loop go on to its push stage whenever a reply waits, also
    after a pull that found no message; drop a message whose run ended mid-pull; and call
    `on_message` once a message is stored with all its objects (`client_node.wake`: the
    executor claims it at once instead of polling for it). `on_pull` is called as each pull
    starts (`AdaptiveWaits.pull_started`).

    Flower 1.42's loop skips the push stage after an empty pull, so a reply that comes after
    the push that followed its own message was taken (a stale reply of a dead run took it)
    waits for the next message, which the ServerApp sends only once it has that reply: the
    run stalls. The loop uses what the pull returns only to test it against None, so a pull
    that found nothing returns 0 while a reply waits.

    A message whose run the SuperLink ends while its objects are being pulled (the
    coordinator died, and its restart ended the run) raises `RunNotRunningException`, a
    `BaseException` that passes the clean-up of a failed pull (``except Exception``: delete
    the message and its objects, finish its task as failed). The task then stays claimable
    with objects that never come: our executor claimed it and waited `TASK_INPUT_WAIT_S`
    (60 s) for them, and the next run's first messages waited behind it (seen by
    bench/coordinator_kill_drill.py: round 1 of the run after a kill took 54 s instead of 2).
    The pull and confirm calls here raise an ordinary exception instead, so the clean-up
    runs. Idempotent."""
    original = module._pull_and_store_message
    base = getattr(original, "__wrapped__", original)

    @functools.wraps(base)
    def pull(**kwargs: Any) -> int | None:
        for name in ("pull_object", "confirm_message_received"):
            if name in kwargs:
                kwargs[name] = _ended_run_is_a_failed_pull(kwargs[name])
        if on_pull is not None:
            on_pull()
        run_id: int | None = base(**kwargs)
        if run_id is None and pending_replies(kwargs["state"]):
            return 0
        if run_id and on_message is not None:  # a message stored (0: our "a reply waits")
            on_message()
        return run_id

    module._pull_and_store_message = pull  # type: ignore[attr-defined]


def install(wake_path: str | None = None) -> AdaptiveWaits:
    """Put `AdaptiveWaits`, a short object-pull backoff and a short heartbeat interval into
    Flower's SuperNode, and the executor's wake-up (`client_node.wake`) where `wake_path`
    names its socket; return the waits."""
    check_flower_version(who="The SuperNode launcher")
    from flwr.supernode import start_client_internal

    waits = AdaptiveWaits()
    start_client_internal.time = waits  # type: ignore[attr-defined]
    shorten_object_pull_backoff(start_client_internal)
    shorten_heartbeat()
    push_every_reply(start_client_internal)
    on_message = functools.partial(send_wake, wake_path) if wake_path else None
    pull_or_push(start_client_internal, on_message=on_message, on_pull=waits.pull_started)
    return waits


def _flower_supernode() -> Callable[[], None]:
    from flwr.supernode.cli.flower_supernode import flower_supernode

    return flower_supernode


def main() -> None:
    """Run `flower-supernode` with the given arguments and the adaptive waits."""
    run_flower_command(
        "flower-supernode", lambda: install(os.environ.get(WAKE_ENV)), _flower_supernode
    )


if __name__ == "__main__":
    main()
