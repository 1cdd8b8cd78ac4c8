"""The run journal's typed events: every event survives append and read; a line still being
written waits; a line that is not an event is named; the run's end is written exactly once."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from coordinator.fl import server_app
from coordinator.fl.journal import (
    EvaluationAggregate,
    EvaluationRecord,
    JournalError,
    JournalEvent,
    NodeEvaluation,
    NodeRound,
    RoundRecord,
    RoundStarted,
    RunEnded,
    RunJournal,
    RunStarted,
    SecAggFailure,
    SecAggRejection,
    SecAggRound,
    SecAggSetup,
    event_from_json,
    read_events,
    read_journal,
)
from coordinator.fl.rounds import NodeOutcome, RoundOutcome
from coordinator.fl.server_app import RunAbortedError, drive_run, round_record, serve_run
from lepton_fl.config import FederationSpec, Member, PrivacySpec, RunSpec, SecureAggregationSpec
from lepton_fl.metrics import AggregateMetrics
from lepton_fl.wire import EvalMetrics, PrivacyCharge, RoundInstruction, TrainReply

CHARGE = PrivacyCharge(1.1, 0.05, 30, 1e-5, "rdp", 0.5, 8.0)
MEMBERS = (Member(name="site-a", node_id=11), Member(name="site-b", node_id=12))
RELEASE = EvalMetrics(40, None, 0.75, None, 0.7, 0.8, 0.75, ((12, 4), (6, 18)))

EVENTS: list[JournalEvent] = [
    RunStarted(
        flower_run_id=42,
        federation="heart",
        federation_digest="ab" * 32,
        rounds=2,
        members=MEMBERS,
        aggregation="secagg+",
        secure_aggregation=SecureAggregationSpec(threshold=2),
    ),
    RoundStarted(round=1, nodes=("site-a", "site-b")),
    RoundRecord(
        round=1,
        seconds=2.5,
        participants=("site-a",),
        num_examples=120,
        nodes={
            "site-a": NodeRound(
                status="ok", num_examples=120, train_seconds=1.25, node_seconds=1.5, charge=CHARGE
            ),
            "site-b": NodeRound(status="refused", code="budget_exhausted", reason="over budget"),
        },
    ),
    RoundRecord(
        round=2,
        seconds=3.0,
        participants=("site-a", "site-b"),
        num_examples=250,
        nodes={"site-a": NodeRound(status="ok", charge=CHARGE), "site-b": NodeRound("dropped")},
        secagg=SecAggRound(
            session=1,
            session_round=1,
            setup=SecAggSetup(("site-a", "site-b"), 2, 2, 1, 32, 1000),
            participants=("site-a",),
            dropouts=("site-b",),
            threshold=2,
            neighbours=1,
            clipped_values=0,
            quantization_error_bound=1e-6,
            update_scale=0.5,
            size_bound=256,
            weight_sum=0.9765625,
            examples=250,
            rejections=(SecAggRejection("site-b", "unmask", "bad_share", "wrong share"),),
        ),
    ),
    RoundRecord(
        round=3,
        seconds=0.5,
        participants=(),
        num_examples=0,
        nodes={"site-a": NodeRound("error", "secagg_timeout", "no keys")},
        secagg=SecAggRound(failure=SecAggFailure("timeout", "too few keys")),
    ),
    EvaluationRecord(
        round=2,
        nodes={
            "site-a": NodeEvaluation(
                status="ok", evaluation=RELEASE, epsilon=0.6, epsilon_budget=8.0, charge=CHARGE
            ),
            "site-b": NodeEvaluation(status="dropped", code="no_reply", reason="no answer"),
        },
        aggregate=EvaluationAggregate(
            metrics=AggregateMetrics(
                nodes=("site-a",),
                num_examples=40,
                accuracy=0.75,
                precision=0.7,
                recall=0.8,
                f1=0.75,
                roc_auc=None,
                roc_auc_skipped=("site-a",),
                loss=None,
                confusion=((12, 4), (6, 18)),
                pooled_accuracy=0.75,
                pooled_precision=0.7,
                pooled_recall=0.8,
                pooled_f1=0.75,
            ),
            left_out=("site-b",),
        ),
    ),
    EvaluationRecord(
        round=2,
        nodes={},
        aggregate=EvaluationAggregate(error="the nodes disagree", left_out=("x",)),
    ),
    RunEnded(state="finished", rounds_completed=2),
    RunEnded(state="failed", rounds_completed=1, reason="Round 2 had 1", kind="RunAbortedError"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_journal_event_round_trips_through_append_and_read(
    tmp_path: Path, event: JournalEvent
) -> None:
    journal = RunJournal(tmp_path / "run.jsonl")

    journal.append(event)

    assert read_journal(journal.path).events == (event,)


def test_journal_lines_are_tagged_timed_and_readable(tmp_path: Path) -> None:
    journal = RunJournal(tmp_path / "run.jsonl")
    for event in EVENTS:
        journal.append(event)

    lines = [json.loads(line) for line in journal.path.read_text().splitlines()]

    assert [line["event"] for line in lines] == [
        "run_started",
        "round_started",
        "round",
        "round",
        "round",
        "evaluation",
        "evaluation",
        "run_finished",
        "run_failed",
    ]
    assert all(list(line)[:2] == ["event", "time"] for line in lines)
    refused = lines[2]["nodes"]["site-b"]
    assert refused == {"status": "refused", "code": "budget_exhausted", "reason": "over budget"}
    assert lines[7] == {"event": "run_finished", "time": lines[7]["time"], "rounds_completed": 2}
    view = read_journal(journal.path)
    assert view.started == EVENTS[0]
    assert [r.round for r in view.rounds] == [1, 2, 3]
    assert view.rounds[0].refusals == {"site-b": "over budget"}
    assert view.evaluation == EVENTS[6]
    # the first end stands, as in the admin database (an ended run stays ended)
    assert view.ended == EVENTS[-2]
    assert view.failure is None


def test_journal_line_still_being_written_waits_for_the_next_read(tmp_path: Path) -> None:
    journal = RunJournal(tmp_path / "run.jsonl")
    journal.append(EVENTS[1])
    with journal.path.open("a") as handle:
        handle.write('{"event": "run_finished", "rounds_co')  # the ServerApp is mid-write

    events, offset = read_events(journal.path)
    assert events == [EVENTS[1]]
    assert not read_journal(journal.path).finished
    with journal.path.open("a") as handle:
        handle.write('mpleted": 2}\n')
    later, end = read_events(journal.path, offset)

    assert later == [RunEnded(state="finished", rounds_completed=2)]
    assert end == journal.path.stat().st_size


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"event": "round_ended", "round": 1}', "unknown event 'round_ended'"),
        ('{"round": 1}', "no 'event' tag"),
        ('["round", 1]', "must be a JSON object"),
        ("{not json}", "not JSON"),
        ('{"event": "round_started", "round": "one", "nodes": []}', "round_started.round:"),
        ('{"event": "round_started", "round": 1}', "the field 'nodes' is missing"),
        (
            '{"event": "round", "round": 1, "seconds": 1, "participants": [], "num_examples": 0,'
            ' "nodes": {"a": {"status": "gone"}}}',
            "round.nodes.a.status: expected one of",
        ),
        ('{"event": "run_failed", "reason": 3}', "run_failed.reason:"),
    ],
)
def test_journal_line_that_is_not_an_event_is_named(
    tmp_path: Path, line: str, message: str
) -> None:
    journal = RunJournal(tmp_path / "run.jsonl")
    journal.append(EVENTS[1])
    with journal.path.open("a") as handle:
        handle.write(line + "\n")
    journal.append(EVENTS[-2])

    with pytest.raises(JournalError) as raised:
        read_journal(journal.path)

    assert f"{journal.path}, line 2: " in str(raised.value)
    assert message in str(raised.value)
    skipped: list[JournalError] = []
    view = read_journal(journal.path, on_error=skipped.append)
    assert view.events == (EVENTS[1], EVENTS[-2])  # the lines around it are kept
    assert [str(e) for e in skipped] == [str(raised.value)]


def test_event_from_json_ignores_fields_it_does_not_know() -> None:
    line = {"event": "round_started", "time": 1.0, "round": 2, "nodes": ["a"], "later": {}}

    assert event_from_json(line) == RoundStarted(round=2, nodes=("a",))


def test_secure_round_record_withholds_each_nodes_count_and_timings() -> None:
    reply = TrainReply(status="ok", num_examples=0, train_seconds=0.0, charge=CHARGE)
    outcome = RoundOutcome(
        round=1,
        weights=[],
        outcomes=[NodeOutcome(MEMBERS[0], "ok", reply=reply)],
        seconds=2.0,
        details={"session": 1, "session_round": 1, "examples": 97, "dropouts": []},
    )

    record = round_record(outcome)

    assert record.num_examples == 97  # the survivors' total, from the masked sum
    assert record.nodes["site-a"] == NodeRound(status="ok", charge=CHARGE)
    assert record.secagg == SecAggRound(session=1, session_round=1, examples=97)


# -- the run's end has one writer -----------------------------------------------------------


class _Grid:
    """What `drive_run` reads of Flower's Grid when the protocol is a fake: the run id and
    the nodes online."""

    run = SimpleNamespace(run_id=42)

    def get_node_ids(self) -> list[int]:
        return [m.node_id for m in MEMBERS]


class _Protocol:
    """Every member trains; round ``fail_at`` raises, or leaves ``short_at`` one update."""

    name = "fake"

    def __init__(
        self, *, fail_at: int | None = None, short_at: int | None = None, void_at: int | None = None
    ) -> None:
        self.fail_at, self.short_at, self.void_at = fail_at, short_at, void_at
        self.received: list[list[np.ndarray]] = []  # the model each round was sent

    def run_round(
        self, grid: Any, members: Sequence[Member], instruction: RoundInstruction, *, timeout: float
    ) -> RoundOutcome:
        self.received.append(list(instruction.weights))
        if instruction.round == self.fail_at:
            raise ConnectionError("the SuperLink went away")
        reply = TrainReply(status="ok", num_examples=10, charge=CHARGE)
        if instruction.round == self.void_at:  # a one-wave secure round a node dropped out of
            void = [NodeOutcome(m, "error", "secagg_round_void", reply=reply) for m in members]
            return RoundOutcome(instruction.round, None, void, 0.1, voided=True)
        ok = [NodeOutcome(m, "ok", reply=reply) for m in members]
        if instruction.round == self.short_at:
            ok[1] = NodeOutcome(members[1], "refused", "budget_exhausted", "over budget")
        moved = [w + instruction.round for w in instruction.weights]
        return RoundOutcome(instruction.round, moved, ok, 0.1)


def _run(tmp_path: Path, *, evaluate: bool = False) -> RunSpec:
    fed = FederationSpec(
        name="ends",
        task="breast_cancer",
        rounds=3,
        min_participants=2,
        privacy=PrivacySpec(target_epsilon=2.0, evaluation_epsilon=None if evaluate else 0.0),
        secure_aggregation=SecureAggregationSpec(enabled=False),
    )
    journal = tmp_path / "run" / "journal.jsonl"
    return RunSpec(federation=fed, members=MEMBERS, journal_path=str(journal))


def _ends(run: RunSpec) -> list[RunEnded]:
    return [e for e in read_journal(Path(run.journal_path)).events if isinstance(e, RunEnded)]


def test_serve_run_writes_one_finished_end(tmp_path: Path) -> None:
    run = _run(tmp_path)

    serve_run(_Grid(), run, RunJournal(Path(run.journal_path)), protocol=_Protocol())  # type: ignore[arg-type]

    assert _ends(run) == [RunEnded(state="finished", rounds_completed=3)]
    assert np.load(Path(run.journal_path).with_name("checkpoint.npz"))["round"] == 3


def test_a_voided_round_keeps_the_model_and_the_run_goes_on(tmp_path: Path) -> None:
    run = _run(tmp_path)
    protocol = _Protocol(void_at=2)

    serve_run(_Grid(), run, RunJournal(Path(run.journal_path)), protocol=protocol)  # type: ignore[arg-type]

    assert _ends(run) == [RunEnded(state="finished", rounds_completed=3)]
    first, second, third = protocol.received
    for sent_in_2, sent_in_3 in zip(second, third, strict=True):
        np.testing.assert_array_equal(sent_in_2, sent_in_3)  # round 2 moved nothing
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    rounds = read_journal(Path(run.journal_path)).rounds
    assert [r.participants for r in rounds][1] == ()
    assert rounds[1].nodes["site-a"].code == "secagg_round_void"


@pytest.mark.parametrize(
    ("protocol", "kind", "completed"),
    [
        (_Protocol(fail_at=2), "ConnectionError", 1),
        (_Protocol(short_at=3), "RunAbortedError", 2),
    ],
)
def test_serve_run_writes_one_failed_end_when_drive_run_raises(
    tmp_path: Path, protocol: _Protocol, kind: str, completed: int
) -> None:
    run = _run(tmp_path)

    with pytest.raises((ConnectionError, RunAbortedError)) as raised:
        serve_run(_Grid(), run, RunJournal(Path(run.journal_path)), protocol=protocol)  # type: ignore[arg-type]

    (end,) = _ends(run)
    assert (end.state, end.kind, end.rounds_completed) == ("failed", kind, completed)
    assert end.reason == str(raised.value)
    assert read_journal(Path(run.journal_path)).failure == str(raised.value)


def test_serve_run_writes_one_failed_end_when_the_evaluation_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run(tmp_path, evaluate=True)

    def broken(*args: object) -> None:
        raise ConnectionError("no evaluation replies")

    monkeypatch.setattr(server_app, "evaluate", broken)

    with pytest.raises(ConnectionError):
        serve_run(_Grid(), run, RunJournal(Path(run.journal_path)), protocol=_Protocol())  # type: ignore[arg-type]

    assert _ends(run) == [
        RunEnded(
            state="failed",
            rounds_completed=3,
            reason="no evaluation replies",
            kind="ConnectionError",
        )
    ]


def test_drive_run_journals_no_end_of_its_own(tmp_path: Path) -> None:
    run = _run(tmp_path)

    drive_run(_Grid(), run, RunJournal(Path(run.journal_path)), protocol=_Protocol())  # type: ignore[arg-type]

    view = read_journal(Path(run.journal_path))
    assert view.started is not None
    assert view.started.members == MEMBERS
    assert [r.round for r in view.rounds] == [1, 2, 3]
    assert view.ended is None
