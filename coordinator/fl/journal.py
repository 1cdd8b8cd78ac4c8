"""The run journal: an append-only JSON-lines record of a run, written by the ServerApp.

The ServerApp holds no database credentials (the launcher starts it in a process with
nothing of the coordinator's): the journal is how a run reaches the admin service, which
follows it into its database (`coordinator.services.round_sink`), and how the demo, the
benches and an operator's ``tail -f`` watch a run. Each line is one typed event:

======================  ==================  ==============================================
line tag                event               written
======================  ==================  ==============================================
``run_started``         `RunStarted`        once, before the members are awaited
``round_started``       `RoundStarted`      as each round begins
``round``               `RoundRecord`       as each round ends: participants, charges
``evaluation``          `EvaluationRecord`  after the last round, when one is scheduled
``run_finished``,       `RunEnded`          once, last (`server_app.serve_run`; or the
``run_failed``                              coordinator's reconciler, for a run the
                                            SuperLink ended without one)
======================  ==================  ==============================================

A line is a JSON object: the tag under ``"event"``, the Unix time under ``"time"``, then
the event's fields by name (records as objects, tuples as lists; an optional field that is
``None`` is left out). Lines are flushed and fsynced as they are written, so a reader sees
every completed round and a crash never loses one.

`RunJournal.append` writes; `event_from_json` decodes one line; `read_events` reads the
complete lines after a byte offset (the admin service's follower) and `read_journal` a
whole journal into a `JournalView`. Nothing else parses a journal. A line still being
written (no newline yet) is left for the next read; a complete line that is not an event
raises `JournalError` naming the file and line, unless the caller passes ``on_error`` to
skip it (the follower logs it and goes on). Fields a reader does not know are ignored, so
a journal stays readable by a coordinator one version behind its ServerApp.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ValidationError

from coordinator.fl.rounds import NodeStatus
from lepton_fl.config import Member, SecureAggregationSpec
from lepton_fl.metrics import AggregateMetrics
from lepton_fl.privacy.membership import MembershipRelease
from lepton_fl.wire import EvalMetrics, PrivacyCharge


class JournalError(ValueError):
    """A journal line that is not a journal event (what is wrong, and where)."""


# -- the events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStarted:
    """The ServerApp started the run: its Flower run id, federation and members."""

    flower_run_id: int
    federation: str
    federation_digest: str
    rounds: int
    members: tuple[Member, ...]
    aggregation: str  # the `RoundProtocol`'s name: "fedavg" or "secagg+"
    secure_aggregation: SecureAggregationSpec


@dataclass(frozen=True)
class RoundStarted:
    """A round began; ``nodes`` are the members asked to take part."""

    round: int
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class NodeRound:
    """One member's part in a round: what it did and, if its update was used, its counts
    and charge. ``num_examples``, ``train_seconds`` (the DP-SGD loop) and ``node_seconds``
    (the trainer's whole handling) are ``None`` when not reported: a node whose update was
    not used, and every node of a secure round (SecAgg+ withholds them: one node's example
    count, and timings that grow with it, are what the masked sum hides)."""

    status: NodeStatus
    code: str = ""
    reason: str = ""
    num_examples: int | None = None
    train_seconds: float | None = None
    node_seconds: float | None = None
    charge: PrivacyCharge | None = None


@dataclass(frozen=True)
class SecAggSetup:
    """A SecAgg+ session's key setup (in the round that ran it)."""

    participants: tuple[str, ...]
    rounds: int
    threshold: int
    neighbours: int
    modulus_bits: int
    vector_length: int
    dropout_recovery: bool = True  # False: one-wave rounds, a dropout voids the round


@dataclass(frozen=True)
class SecAggFailure:
    """Why a secure round produced no sum."""

    code: str
    reason: str


@dataclass(frozen=True)
class SecAggRejection:
    """A SecAgg+ message the coordinator's server rejected."""

    node: str
    stage: str
    code: str
    reason: str


@dataclass(frozen=True)
class SecAggRound:
    """What secure aggregation did in a round (`coordinator.fl.secure_rounds`): its session,
    the survivors and dropouts, and the sum's figures; only ``failure`` (and the session,
    if one was ready) when the round produced no sum."""

    session: int | None = None
    session_round: int | None = None
    setup: SecAggSetup | None = None
    failure: SecAggFailure | None = None
    participants: tuple[str, ...] = ()
    dropouts: tuple[str, ...] = ()
    threshold: int | None = None
    neighbours: int | None = None
    clipped_values: int | None = None
    quantization_error_bound: float | None = None
    update_scale: float | None = None
    size_bound: int | None = None
    weight_sum: float | None = None
    examples: int | None = None  # the survivors' example total, from the masked sum
    rejections: tuple[SecAggRejection, ...] = ()

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> SecAggRound:
        """The typed record of a `RoundOutcome`'s protocol details (keys it does not name
        are left out)."""
        return cast(SecAggRound, _decode(cls, dict(details), "secagg"))


@dataclass(frozen=True)
class RoundRecord:
    """A round's outcome: who took part, each member's part and charge. No loss and no
    evaluation: a node keeps its training loss (it is not DP) and evaluates only once,
    when the federation schedules it (`EvaluationRecord`)."""

    round: int
    seconds: float
    participants: tuple[str, ...]  # the members whose update is in the aggregate
    num_examples: int  # theirs, together (under SecAgg+, from the masked sum)
    nodes: Mapping[str, NodeRound]
    secagg: SecAggRound | None = None  # None: a plain round

    @property
    def refusals(self) -> dict[str, str]:
        """Why each member whose update is not in the aggregate is not, by name."""
        return {name: node.reason for name, node in self.nodes.items() if node.status != "ok"}


@dataclass(frozen=True)
class NodeEvaluation:
    """One member's evaluation of the final model: its DP release (noised counts and the
    rates that follow; ``loss`` and ``roc_auc`` stay at the node), the release's charge and
    the node's epsilon on the dataset afterwards."""

    status: NodeStatus
    code: str = ""
    reason: str = ""
    evaluation: EvalMetrics | None = None
    epsilon: float | None = None
    epsilon_budget: float | None = None
    charge: PrivacyCharge | None = None
    membership: MembershipRelease | None = None  # the membership audit's release, if asked


@dataclass(frozen=True)
class EvaluationAggregate:
    """The federation's figures over the nodes that evaluated, weighted by their examples.

    ``left_out`` names the nodes that sent no precision, recall, F1 and confusion matrix,
    or whose noised counts sum to 0; ``error`` (with no ``metrics``) says why nothing could
    be combined (the nodes disagree on the classes)."""

    metrics: AggregateMetrics | None = None
    left_out: tuple[str, ...] = ()
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The figures as one flat JSON-ready dict (the demo summary's schema)."""
        flat: dict[str, object] = {} if self.metrics is None else self.metrics.as_dict()
        if self.error is not None:
            flat["error"] = self.error
        return {**flat, "left_out": list(self.left_out)}


@dataclass(frozen=True)
class EvaluationRecord:
    """The scheduled evaluation of the final model, after round ``round``."""

    round: int
    nodes: Mapping[str, NodeEvaluation]
    aggregate: EvaluationAggregate | None = None  # None: no node sent full figures


RunState = Literal["finished", "failed"]


@dataclass(frozen=True)
class RunEnded:
    """The run ended: all its rounds done, or failed (``reason``, the error's ``kind``).
    ``rounds_completed`` counts the rounds whose aggregate became the global model."""

    state: RunState
    rounds_completed: int = 0
    reason: str | None = None
    kind: str | None = None

    @property
    def failure(self) -> str | None:
        """Why the run failed (``None`` if it finished)."""
        if self.state == "finished":
            return None
        return self.reason or self.kind or "The ServerApp gave no reason."


JournalEvent = RunStarted | RoundStarted | RoundRecord | EvaluationRecord | RunEnded

_TAGS: dict[type, str] = {
    RunStarted: "run_started",
    RoundStarted: "round_started",
    RoundRecord: "round",
    EvaluationRecord: "evaluation",
}
_ENDED = {"run_finished": "finished", "run_failed": "failed"}
_KINDS: dict[str, type] = {tag: kind for kind, tag in _TAGS.items()} | dict.fromkeys(
    _ENDED, RunEnded
)


# -- writing ------------------------------------------------------------------------------


class RunJournal:
    """Appends events to one run's journal file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, event: JournalEvent) -> None:
        """Append one event, durably."""
        fields = event_to_json(event)
        line = json.dumps({"event": fields.pop("event"), "time": time.time(), **fields})
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def event_to_json(event: JournalEvent) -> dict[str, object]:
    """An event as its journal line's object (without the time)."""
    fields = cast(dict[str, object], _encode(event))
    if isinstance(event, RunEnded):
        del fields["state"]  # the tag says it
        return {"event": f"run_{event.state}", **fields}
    return {"event": _TAGS[type(event)], **fields}


def _encode(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _encode(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (getattr(value, f.name) is None and f.default is None)
        }
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    return value


# -- reading ------------------------------------------------------------------------------


def event_from_json(data: object) -> JournalEvent:
    """The event of one decoded journal line; `JournalError` says what is wrong."""
    if not isinstance(data, dict):
        raise JournalError(f"a journal line must be a JSON object, got {_excerpt(data)}")
    tag = data.get("event")
    if tag is None:
        raise JournalError("the line has no 'event' tag")
    kind = _KINDS.get(tag) if isinstance(tag, str) else None
    if kind is None:
        raise JournalError(f"unknown event {tag!r} (known: {', '.join(sorted(_KINDS))})")
    fields = {k: v for k, v in data.items() if k not in ("event", "time")}
    if kind is RunEnded:
        fields["state"] = _ENDED[tag]
    return cast(JournalEvent, _decode(kind, fields, tag))


def parse_line(line: bytes | str) -> JournalEvent:
    """The event of one journal line (its text, without the newline)."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise JournalError(f"not JSON ({err}): {_excerpt(line)}") from err
    return event_from_json(data)


def read_events(
    path: Path, offset: int = 0, *, on_error: Callable[[JournalError], None] | None = None
) -> tuple[list[JournalEvent], int]:
    """The events on the complete lines of ``path`` after byte ``offset``, and the offset
    after the last of them (a line still being written waits for the next read).

    A complete line that is not an event raises `JournalError` naming the file and line;
    with ``on_error``, the error is passed to it and the line skipped. A missing file has
    no events yet."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events: list[JournalEvent] = []
    for index, line in enumerate(data[:end].split(b"\n")[:-1]):
        if not line.strip():
            continue
        try:
            events.append(parse_line(line))
        except JournalError as err:
            where = JournalError(f"{path}, line {_first_line(path, offset) + index}: {err}")
            if on_error is None:
                raise where from err
            on_error(where)
    return events, offset + end


E = TypeVar("E", RunStarted, RoundStarted, RoundRecord, EvaluationRecord, RunEnded)


@dataclass(frozen=True)
class JournalView:
    """What a reader has seen of a journal so far, by event type."""

    events: tuple[JournalEvent, ...] = ()

    def _of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def started(self) -> RunStarted | None:
        """The run's start, once the ServerApp wrote it."""
        found = self._of(RunStarted)
        return found[0] if found else None

    @property
    def round_starts(self) -> list[RoundStarted]:
        """The rounds begun, in order (the last may still be running)."""
        return self._of(RoundStarted)

    @property
    def rounds(self) -> list[RoundRecord]:
        """The rounds ended, in order."""
        return self._of(RoundRecord)

    @property
    def evaluation(self) -> EvaluationRecord | None:
        """The scheduled evaluation of the final model, once written."""
        found = self._of(EvaluationRecord)
        return found[-1] if found else None

    @property
    def ended(self) -> RunEnded | None:
        """The run's end, once written (the first: an ended run stays ended, as in the
        admin database)."""
        found = self._of(RunEnded)
        return found[0] if found else None

    @property
    def finished(self) -> bool:
        """True once the run has ended, well or not."""
        return self.ended is not None

    @property
    def failure(self) -> str | None:
        """The reason a run failed, if it did."""
        ended = self.ended
        return None if ended is None else ended.failure


def read_journal(
    path: Path, *, on_error: Callable[[JournalError], None] | None = None
) -> JournalView:
    """Every complete line of a journal (see `read_events`: a line still being written is
    skipped; a line that is not an event raises, or goes to ``on_error``)."""
    events, _ = read_events(path, on_error=on_error)
    return JournalView(tuple(events))


# -- decoding -----------------------------------------------------------------------------


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return get_type_hints(kind)


def _decode(kind: Any, value: object, where: str) -> Any:
    """``value`` (decoded JSON) as ``kind``, checked; `JournalError` names the field."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors: list[JournalError] = []
        for option in options:
            try:
                return _decode(option, value, where)
            except JournalError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise JournalError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _wrong(where, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or origin is Mapping:
        if not isinstance(value, dict):
            raise _wrong(where, "an object", value)
        return {str(k): _decode(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise _wrong(where, "true or false", value)
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _wrong(where, "a whole number", value)
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _wrong(where, "a number", value)
    if kind is str:
        if isinstance(value, str):
            return value
        raise _wrong(where, "a string", value)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        try:
            return kind.model_validate(value)
        except ValidationError as err:
            first = err.errors()[0]
            at = ".".join(str(p) for p in first["loc"])
            raise JournalError(f"{where}{'.' + at if at else ''}: {first['msg']}") from err
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        return _decode_record(kind, value, where)
    raise TypeError(f"The journal cannot decode a {kind!r} (at {where}).")


def _decode_record(kind: type, value: object, where: str) -> object:
    if not isinstance(value, dict):
        raise _wrong(where, "an object", value)
    hints = _hints(kind)
    given: dict[str, Any] = {}
    for f in dataclasses.fields(kind):
        if f.name in value:
            given[f.name] = _decode(hints[f.name], value[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise JournalError(f"{where}: the field {f.name!r} is missing")
    try:
        return kind(**given)
    except (TypeError, ValueError) as err:  # a record's own checks
        raise JournalError(f"{where}: {err}") from err


def _wrong(where: str, expected: str, value: object) -> JournalError:
    return JournalError(f"{where}: expected {expected}, got {_excerpt(value)}")


def _excerpt(value: object, limit: int = 80) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(path: Path, offset: int) -> int:
    """The line number (from 1) of the line that starts at byte ``offset``."""
    if offset == 0:
        return 1
    with path.open("rb") as handle:
        return handle.read(offset).count(b"\n") + 1
