"""The Lepton ServerApp: drives the rounds of one run on Flower's Message API.

The coordinator's launcher (`coordinator.fl.launcher`) starts it once per run, in a process
with no secret of the coordinator's. It reads the `RunSpec` from the run config, sends train
and evaluate messages only to the run's members (Flower node ids the coordinator got by
registering each member's key), aggregates through a `RoundProtocol`, and records every round
in the run journal as typed events (`coordinator.fl.journal`), which the admin service reads
(`coordinator.services.round_sink`): the ServerApp holds no database credentials. The run's
end has one writer, `serve_run`. It imports no torch: nodes initialise the model from
the federation's seed, and aggregation is numpy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.fl.journal import (
    EvaluationAggregate,
    EvaluationRecord,
    NodeEvaluation,
    NodeRound,
    RoundRecord,
    RoundStarted,
    RunEnded,
    RunJournal,
    RunStarted,
    SecAggRound,
)
from coordinator.fl.messaging import NodeFailure, exchange, online_node_ids
from coordinator.fl.rounds import NodeOutcome, PlainFedAvg, RoundOutcome, RoundProtocol
from coordinator.fl.secure_rounds import SecAggFedAvg, flower_transport
from lepton_fl.config import Member, RunSpec
from lepton_fl.metrics import aggregate_metrics
from lepton_fl.model_init import initial_weights
from lepton_fl.privacy.evaluation import evaluation_epsilon_share
from lepton_fl.wire import (
    EvalMetrics,
    RoundInstruction,
    WireError,
    evaluate_reply_from_records,
    instruction_to_records,
)

app = ServerApp()


class RunAbortedError(RuntimeError):
    """The run cannot go on (too few participants, no usable update)."""


@dataclass
class RunProgress:
    """How far a run got: the rounds whose aggregate became the global model."""

    rounds_completed: int = 0


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point (for `flwr-serverapp`; the coordinator uses `run_lepton`)."""
    run_lepton(grid, context)


def run_lepton(grid: Grid, context: Context) -> None:
    """Drive the run whose `RunSpec` the run config carries."""
    raw = context.run_config.get("lepton-run")
    if not isinstance(raw, str) or not raw:
        raise RunAbortedError("The run config has no 'lepton-run' spec; submit runs via Lepton.")
    run = RunSpec.model_validate_json(raw)
    serve_run(grid, run, RunJournal(Path(run.journal_path)))


def serve_run(
    grid: Grid, run: RunSpec, journal: RunJournal, *, protocol: RoundProtocol | None = None
) -> None:
    """Drive the run, then journal its end: the one writer of `RunEnded`, exactly once.

    A failure (``drive_run`` raising, or no protocol for the run) is journalled with its
    reason and kind, then raised. ``protocol``: `protocol_for` the run unless given."""
    progress = RunProgress()
    try:
        chosen = protocol_for(grid, run) if protocol is None else protocol
        drive_run(grid, run, journal, protocol=chosen, progress=progress)
    except Exception as err:
        journal.append(
            RunEnded(
                state="failed",
                rounds_completed=progress.rounds_completed,
                reason=str(err),
                kind=type(err).__name__,
            )
        )
        raise
    journal.append(RunEnded(state="finished", rounds_completed=progress.rounds_completed))


def protocol_for(grid: Grid, run: RunSpec) -> RoundProtocol:
    """Secure aggregation unless the federation turned it off."""
    if run.federation.secure_aggregation.enabled:
        return SecAggFedAvg(
            run.federation, run_id=str(grid.run.run_id), transport=flower_transport(grid)
        )
    return PlainFedAvg()


def drive_run(
    grid: Grid,
    run: RunSpec,
    journal: RunJournal,
    *,
    protocol: RoundProtocol,
    progress: RunProgress | None = None,
) -> None:
    """All rounds of one run, then the final evaluation of the global model when the spec
    schedules one (``privacy.evaluation_epsilon`` is not 0). Journals the run's start, its
    rounds and its evaluation, not its end (`serve_run` does); ``progress`` counts the
    rounds completed as they are."""
    progress = RunProgress() if progress is None else progress
    fed = run.federation
    journal.append(
        RunStarted(
            flower_run_id=int(grid.run.run_id),
            federation=fed.name,
            federation_digest=fed.digest(),
            rounds=fed.rounds,
            members=tuple(run.members),
            aggregation=protocol.name,
            secure_aggregation=fed.secure_aggregation,
        )
    )
    members = wait_for_members(grid, run)
    weights: list[np.ndarray] = list(initial_weights(fed))
    for rnd in range(1, fed.rounds + 1):
        journal.append(RoundStarted(round=rnd, nodes=tuple(m.name for m in members)))
        instruction = RoundInstruction(fed, rnd, weights, authorization=run.authorization)
        outcome = protocol.run_round(grid, members, instruction, timeout=run.round_timeout_s)
        journal.append(round_record(outcome))
        if outcome.voided:  # nothing aggregated; the model stays, the next round goes on
            progress.rounds_completed = rnd
            continue
        if len(outcome.participants) < fed.min_participants or outcome.weights is None:
            raise RunAbortedError(
                f"Round {rnd} had {len(outcome.participants)} usable updates, fewer than the "
                f"federation's minimum of {fed.min_participants}: "
                + "; ".join(f"{o.member.name}: {o.reason}" for o in outcome.outcomes if o.reason)
            )
        weights = outcome.weights
        save_checkpoint(Path(run.journal_path).with_name("checkpoint.npz"), weights, rnd)
        progress.rounds_completed = rnd
    if evaluation_epsilon_share(fed.privacy.target_epsilon, fed.privacy.evaluation_epsilon):
        # the one evaluation the spec schedules: each node releases noised counts, charged
        final = RoundInstruction(fed, fed.rounds, weights, authorization=run.authorization)
        evaluation, metrics = evaluate(grid, members, final, run)
        journal.append(
            EvaluationRecord(
                round=fed.rounds, nodes=evaluation, aggregate=aggregate_record(metrics)
            )
        )


def wait_for_members(grid: Grid, run: RunSpec) -> list[Member]:
    """Wait until every member is online (or the connect timeout), return those online."""
    wanted = {m.node_id for m in run.members}
    deadline = time.monotonic() + run.connect_timeout_s
    online: set[int] = set()
    while time.monotonic() < deadline:
        online = online_node_ids(grid) & wanted
        if online == wanted:
            break
        time.sleep(0.2)
    present = [m for m in run.members if m.node_id in online]
    if len(present) < run.federation.min_participants:
        missing = sorted(m.name for m in run.members if m.node_id not in online)
        raise RunAbortedError(
            f"Only {len(present)} of {len(run.members)} members came online within "
            f"{run.connect_timeout_s:.0f} s (missing: {', '.join(missing)}); the federation "
            f"needs {run.federation.min_participants}."
        )
    return present


def round_record(outcome: RoundOutcome) -> RoundRecord:
    """The journal record of a round: participants, refusals, example counts and charges.

    No loss and no evaluation: nodes keep their training loss (it is not DP), and evaluate
    only once, when the federation schedules it (`evaluate`). Under secure aggregation the
    example total comes from the masked sum, and no node's own count or timings are
    recorded: the nodes withhold them (they send 0)."""
    secagg = SecAggRound.from_details(outcome.details) if outcome.details else None
    nodes = {o.member.name: node_record(o, withheld=secagg is not None) for o in outcome.outcomes}
    participants = outcome.participants
    total = sum(o.reply.num_examples for o in participants if o.reply)
    if secagg is not None and secagg.examples is not None:
        total = secagg.examples
    return RoundRecord(
        round=outcome.round,
        seconds=outcome.seconds,
        participants=tuple(o.member.name for o in participants),
        num_examples=total,
        nodes=nodes,
        secagg=secagg,
    )


def node_record(o: NodeOutcome, *, withheld: bool = False) -> NodeRound:
    """One node's part of a round record (``withheld``: a secure round, whose replies carry
    no example count and no timings). A node that was not aggregated keeps the charge its
    reply carries: its update left it, so it charged its ledger (the coordinator records
    the charge as not aggregated)."""
    reply = o.reply
    if reply is None:
        return NodeRound(status=o.status, code=o.code, reason=o.reason)
    if o.status != "ok":
        return NodeRound(status=o.status, code=o.code, reason=o.reason, charge=reply.charge)
    if withheld:
        return NodeRound(status=o.status, code=o.code, reason=o.reason, charge=reply.charge)
    return NodeRound(
        status=o.status,
        code=o.code,
        reason=o.reason,
        num_examples=reply.num_examples,
        train_seconds=reply.train_seconds,
        node_seconds=reply.node_seconds,
        charge=reply.charge,
    )


def aggregate_record(evaluations: Mapping[str, EvalMetrics]) -> EvaluationAggregate | None:
    """The federation's figures over the nodes that evaluated, weighted by their examples
    (`lepton_fl.metrics.aggregate_metrics`); ``None`` when no node sent full metrics.

    ``left_out`` names the nodes that sent no precision, recall, F1 and confusion matrix, or
    whose noised counts sum to 0; ``error`` says why nothing could be combined (the nodes
    disagree on the classes). ``loss`` is combined only when every node sent one (a DP
    release has none)."""
    full = {name: ev.classification() for name, ev in evaluations.items()}
    usable = {name: m for name, m in full.items() if m is not None and m.num_examples > 0}
    left_out = tuple(sorted(name for name in full if name not in usable))
    if not usable:
        return None
    losses = {name: evaluations[name].loss for name in usable}
    known = {name: loss for name, loss in losses.items() if loss is not None}
    try:
        combined = aggregate_metrics(usable, losses=known if len(known) == len(usable) else None)
    except ValueError as err:
        return EvaluationAggregate(error=str(err), left_out=left_out)
    return EvaluationAggregate(metrics=combined, left_out=left_out)


def evaluate(
    grid: Grid, members: Sequence[Member], instruction: RoundInstruction, run: RunSpec
) -> tuple[dict[str, NodeEvaluation], dict[str, EvalMetrics]]:
    """Ask every member to evaluate the final model on its own held-out split. Returns each
    member's journal record, and the figures of those that evaluated (for `aggregate_record`)."""
    replies = exchange(
        grid,
        {m.node_id: instruction_to_records(instruction) for m in members},
        message_type="evaluate",
        group_id="final",
        timeout=run.round_timeout_s,
    )
    results: dict[str, NodeEvaluation] = {}
    metrics: dict[str, EvalMetrics] = {}
    audit = instruction.federation.privacy.membership_audit
    for m in members:
        answer = replies.get(m.node_id)
        if answer is None:
            results[m.name] = NodeEvaluation(
                status="dropped", code="no_reply", reason="The node did not answer in time."
            )
            continue
        if isinstance(answer, NodeFailure):
            results[m.name] = NodeEvaluation(status="error", code=answer.code, reason=answer.reason)
            continue
        try:
            reply = evaluate_reply_from_records(answer)
        except WireError as err:
            results[m.name] = NodeEvaluation(status="error", code=err.code, reason=str(err))
            continue
        if reply.evaluation is not None and reply.status == "ok":
            metrics[m.name] = reply.evaluation
        results[m.name] = NodeEvaluation(
            status=reply.status,
            code=reply.code,
            reason=reply.reason,
            evaluation=reply.evaluation,
            epsilon=reply.epsilon,
            epsilon_budget=reply.epsilon_budget,
            charge=reply.charge,
            # kept only when the spec asked for the audit (it was noised for it then)
            membership=reply.membership if audit else None,
        )
    return results, metrics


def save_checkpoint(path: Path, weights: Sequence[np.ndarray], rnd: int) -> None:
    """Write the global model atomically (a crash never leaves a half-written file)."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, *weights, round=np.array(rnd))
    tmp.replace(path)
