"""The Lepton ServerApp: drives the rounds of one run on Flower's Message API.

The coordinator's launcher (`coordinator.fl.launcher`) starts it once per run, in a process
with no secret of the coordinator's. It reads the `RunSpec` from the run config, sends train
and evaluate messages only to the run's members (Flower node ids the coordinator got by
registering each member's key), aggregates through a `RoundProtocol`, and records every round
in the run journal, which the admin service reads (`coordinator.services.round_sink`): the
ServerApp holds no database credentials. It imports no torch: nodes initialise the model from
the federation's seed, and aggregation is numpy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.fl.journal import RunJournal
from coordinator.fl.messaging import exchange, online_node_ids
from coordinator.fl.rounds import NodeOutcome, PlainFedAvg, RoundOutcome, RoundProtocol
from coordinator.fl.secure_rounds import SecAggFedAvg, flower_transport
from lepton_fl.config import Member, RunSpec
from lepton_fl.metrics import aggregate_metrics
from lepton_fl.model_init import initial_weights
from lepton_fl.privacy.evaluation import evaluation_epsilon_share
from lepton_fl.wire import (
    EvalMetrics,
    PrivacyCharge,
    RoundInstruction,
    WireError,
    evaluate_reply_from_records,
    instruction_to_records,
)

app = ServerApp()


class RunAbortedError(RuntimeError):
    """The run cannot go on (too few participants, no usable update)."""


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
    journal = RunJournal(Path(run.journal_path))
    try:
        drive_run(grid, run, journal, protocol=protocol_for(grid, run))
    except Exception as err:
        journal.write("run_failed", reason=str(err), kind=type(err).__name__)
        raise


def protocol_for(grid: Grid, run: RunSpec) -> RoundProtocol:
    """Secure aggregation unless the federation turned it off."""
    if run.federation.secure_aggregation.enabled:
        return SecAggFedAvg(
            run.federation, run_id=str(grid.run.run_id), transport=flower_transport(grid)
        )
    return PlainFedAvg()


def drive_run(grid: Grid, run: RunSpec, journal: RunJournal, *, protocol: RoundProtocol) -> None:
    """All rounds of one run, then the final evaluation of the global model when the spec
    schedules one (``privacy.evaluation_epsilon`` is not 0)."""
    fed = run.federation
    journal.write(
        "run_started",
        flower_run_id=grid.run.run_id,
        federation=fed.name,
        federation_digest=fed.digest(),
        rounds=fed.rounds,
        members=[m.model_dump() for m in run.members],
        aggregation=protocol.name,
        secure_aggregation=fed.secure_aggregation.model_dump(),
    )
    members = wait_for_members(grid, run)
    weights: list[np.ndarray] = list(initial_weights(fed))
    for rnd in range(1, fed.rounds + 1):
        journal.write("round_started", round=rnd, nodes=[m.name for m in members])
        instruction = RoundInstruction(fed, rnd, weights, authorization=run.authorization)
        outcome = protocol.run_round(grid, members, instruction, timeout=run.round_timeout_s)
        journal.write("round", **round_record(outcome))
        if len(outcome.participants) < fed.min_participants or outcome.weights is None:
            raise RunAbortedError(
                f"Round {rnd} had {len(outcome.participants)} usable updates, fewer than the "
                f"federation's minimum of {fed.min_participants}: "
                + "; ".join(f"{o.member.name}: {o.reason}" for o in outcome.outcomes if o.reason)
            )
        weights = outcome.weights
        save_checkpoint(Path(run.journal_path).with_name("checkpoint.npz"), weights, rnd)
    if evaluation_epsilon_share(fed.privacy.target_epsilon, fed.privacy.evaluation_epsilon):
        # the one evaluation the spec schedules: each node releases noised counts, charged
        final = RoundInstruction(fed, fed.rounds, weights, authorization=run.authorization)
        evaluation, metrics = evaluate(grid, members, final, run)
        journal.write(
            "evaluation", round=fed.rounds, nodes=evaluation, aggregate=aggregate_record(metrics)
        )
    journal.write("run_finished", rounds_completed=fed.rounds)


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


def round_record(outcome: RoundOutcome) -> dict[str, object]:
    """The journal entry of a round: participants, refusals, example counts and charges.

    No loss and no evaluation: nodes keep their training loss (it is not DP), and evaluate
    only once, when the federation schedules it (`evaluate`)."""
    nodes: dict[str, dict[str, object]] = {}
    for o in outcome.outcomes:
        nodes[o.member.name] = node_record(o)
    participants = outcome.participants
    total = sum(o.reply.num_examples for o in participants if o.reply)
    if "examples" in outcome.details:  # SecAgg+: the survivors' total, from the masked sum
        total = int(outcome.details["examples"])
    return {
        "round": outcome.round,
        "seconds": outcome.seconds,
        "participants": [o.member.name for o in participants],
        "num_examples": total,
        "nodes": nodes,
        **({"secagg": outcome.details} if outcome.details else {}),
    }


def node_record(o: NodeOutcome) -> dict[str, object]:
    """One node's part of a round record."""
    record: dict[str, object] = {"status": o.status, "code": o.code, "reason": o.reason}
    reply = o.reply
    if reply is None or o.status != "ok":
        return record
    record.update(
        num_examples=reply.num_examples,
        train_seconds=reply.train_seconds,
        node_seconds=reply.node_seconds,
    )
    if reply.charge is not None:
        record["charge"] = charge_record(reply.charge)
    return record


def charge_record(c: PrivacyCharge) -> dict[str, object]:
    """A node's privacy charge (a round's, or an evaluation release's) for the journal."""
    return {
        "noise_multiplier": c.noise_multiplier,
        "sample_rate": c.sample_rate,
        "steps": c.steps,
        "delta": c.delta,
        "accountant": c.accountant,
        "epsilon": c.epsilon,
        "epsilon_budget": c.epsilon_budget,
    }


def eval_record(ev: EvalMetrics) -> dict[str, object]:
    """A node's evaluation figures for the journal: its DP release (noised counts and the
    rates that follow; ``loss`` and ``roc_auc`` are ``None``, they stay at the node)."""
    record: dict[str, object] = {
        "num_examples": ev.num_examples,
        "accuracy": ev.accuracy,
        "roc_auc": ev.roc_auc,
        "loss": ev.loss,
    }
    if ev.confusion is not None:
        record.update(
            precision=ev.precision,
            recall=ev.recall,
            f1=ev.f1,
            confusion=[list(row) for row in ev.confusion],
        )
    return record


def aggregate_record(evaluations: Mapping[str, EvalMetrics]) -> dict[str, object] | None:
    """The federation's figures over the nodes that evaluated, weighted by their examples
    (`lepton_fl.metrics.aggregate_metrics`); ``None`` when no node sent full metrics.

    ``left_out`` names the nodes that sent no precision, recall, F1 and confusion matrix, or
    whose noised counts sum to 0; ``error`` says why nothing could be combined (the nodes
    disagree on the classes). ``loss`` is combined only when every node sent one (a DP
    release has none)."""
    full = {name: ev.classification() for name, ev in evaluations.items()}
    usable = {name: m for name, m in full.items() if m is not None and m.num_examples > 0}
    left_out = sorted(name for name in full if name not in usable)
    if not usable:
        return None
    losses = {name: evaluations[name].loss for name in usable}
    known = {name: loss for name, loss in losses.items() if loss is not None}
    try:
        combined = aggregate_metrics(usable, losses=known if len(known) == len(usable) else None)
    except ValueError as err:
        return {"error": str(err), "left_out": left_out}
    return {**combined.as_dict(), "left_out": left_out}


def evaluate(
    grid: Grid, members: Sequence[Member], instruction: RoundInstruction, run: RunSpec
) -> tuple[dict[str, dict[str, object]], dict[str, EvalMetrics]]:
    """Ask every member to evaluate the final model on its own held-out split. Returns each
    member's journal entry, and the figures of those that evaluated (for `aggregate_record`)."""
    replies = exchange(
        grid,
        {m.node_id: instruction_to_records(instruction) for m in members},
        message_type="evaluate",
        group_id="final",
        timeout=run.round_timeout_s,
    )
    results: dict[str, dict[str, object]] = {}
    metrics: dict[str, EvalMetrics] = {}
    for m in members:
        message = replies.get(m.node_id)
        if message is None:
            results[m.name] = {"status": "dropped", "reason": "The node did not answer in time."}
            continue
        if message.has_error():
            results[m.name] = {"status": "error", "reason": message.error.reason}
            continue
        try:
            reply = evaluate_reply_from_records(message.content)
        except WireError as err:
            results[m.name] = {"status": "error", "reason": str(err)}
            continue
        entry: dict[str, object] = {"status": reply.status, "reason": reply.reason}
        if reply.evaluation is not None:
            entry.update(eval_record(reply.evaluation))
            if reply.status == "ok":
                metrics[m.name] = reply.evaluation
        entry.update(epsilon=reply.epsilon, epsilon_budget=reply.epsilon_budget)
        if reply.charge is not None:
            entry["charge"] = charge_record(reply.charge)
        results[m.name] = entry
    return results, metrics


def save_checkpoint(path: Path, weights: Sequence[np.ndarray], rnd: int) -> None:
    """Write the global model atomically (a crash never leaves a half-written file)."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, *weights, round=np.array(rnd))
    tmp.replace(path)
