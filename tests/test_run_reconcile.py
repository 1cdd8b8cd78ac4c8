"""Run state follows the SuperLink, and the coordinator's ledger stays an upper bound of every
node's: reconciliation and repair through the admin API, with a real SuperLink.

Runs are really submitted (`flwr run`); no ServerApp launcher runs here, so they stay pending
at the SuperLink until a test ends them there (`flwr stop`, as a SuperLink that lost the
ServerApp's heartbeat would). The coordinator-kill drill with real nodes is in
tests/test_admin_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from admin_support import AdminApi, Tenant, play_serverapp, run_row

from coordinator.db.tables import Run
from coordinator.fl.journal import (
    NodeRound,
    RoundRecord,
    RunEnded,
    RunStarted,
    read_journal,
)
from coordinator.services.gateway import RunLauncher
from coordinator.services.reconcile import RECONCILED_KIND, reconcile_runs
from coordinator.services.round_sink import LedgerJournal
from coordinator.superlink import CONNECTION, FlowerRunStatus, SuperLink
from lepton_fl.config import Member, SecureAggregationSpec
from lepton_fl.privacy import AccountantStep, epsilon_spent
from lepton_fl.wire import PrivacyCharge


@dataclass
class World:
    api: AdminApi
    superlink: SuperLink
    tenant: Tenant
    nodes: list[dict[str, Any]]

    @property
    def launcher(self) -> RunLauncher:
        launcher = self.api.app.state.context.launcher
        assert launcher is not None
        return launcher  # type: ignore[no-any-return]

    def start_run(self, federation: str) -> dict[str, Any]:
        fed = self.api.federation(federation, [n["id"] for n in self.nodes])
        run = self.api.ok("POST", f"/federations/{fed['id']}/runs", self.api.admin)
        assert run["flower_run_id"]
        return run  # type: ignore[no-any-return]

    def run(self, run_id: str) -> dict[str, Any]:
        return self.api.ok("GET", f"/runs/{run_id}", self.api.admin)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, superlink: SuperLink) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("reconcile")
    with AdminApi.start(root / "coordinator", superlink) as api:
        tenant = api.tenant("hospitals")
        nodes = [api.enrolled_node(tenant, f"site-{i}") for i in range(3)]
        yield World(api, superlink, tenant, nodes)


def test_a_run_the_superlink_ended_fails_with_its_reason_and_frees_the_federation(
    world: World,
) -> None:
    run = world.start_run("ended-at-superlink")
    assert reconcile_runs(world.api.db, world.launcher, at_start=False) == []
    assert world.run(run["id"])["state"] == "submitted"  # pending at the SuperLink: left alone

    world.superlink.stop_run(int(run["flower_run_id"]))  # the SuperLink ends it on its own
    settled = reconcile_runs(world.api.db, world.launcher, at_start=False)

    ended = world.run(run["id"])
    assert [s.run_id for s in settled] == [run["id"]]
    assert ended["state"] == "failed"
    assert "finished:stopped" in ended["failure"]
    journal = read_journal(Path(run_row(world.api, run["id"]).journal_path))
    assert journal.ended is not None
    assert journal.ended.kind == RECONCILED_KIND
    again = world.api.call("POST", f"/federations/{run['federation_id']}/runs", world.api.admin)
    assert again.status_code == 201, again.text
    world.api.ok("POST", f"/runs/{again.json()['id']}/stop", world.api.admin)
    events = world.api.ok("GET", "/audit/events", world.api.admin, params={"limit": 1000})
    assert any(e["action"] == "run.failed" and e["target"] == f"run:{run['id']}" for e in events)


def test_stopping_a_run_the_superlink_already_ended_records_its_end(world: World) -> None:
    run = world.start_run("stop-after-end")
    world.superlink.stop_run(int(run["flower_run_id"]))

    response = world.api.call("POST", f"/runs/{run['id']}/stop", world.api.admin)
    again = world.api.call("POST", f"/runs/{run['id']}/stop", world.api.admin)

    assert response.status_code == 200, response.text  # was 502 superlink_flwr_failed
    assert response.json()["state"] == "failed"
    assert "finished:stopped" in response.json()["failure"]
    assert again.status_code == 200
    assert again.json() == response.json()


def test_at_start_a_run_unknown_to_the_superlink_or_never_submitted_fails(world: World) -> None:
    unknown = world.start_run("unknown-to-superlink")
    unsubmitted = world.start_run("never-submitted")
    pending = world.start_run("still-pending")
    with world.api.db.write() as session:
        for run_id, flower_id in ((unknown["id"], "999999999"), (unsubmitted["id"], None)):
            row = session.get(Run, run_id)
            assert row is not None
            row.flower_run_id = flower_id
            session.add(row)

    during = reconcile_runs(world.api.db, world.launcher, at_start=False)
    at_start = reconcile_runs(world.api.db, world.launcher, at_start=True)

    assert [s.run_id for s in during] == [unknown["id"]]  # a submission may be under way
    assert "no record of Flower run 999999999" in world.run(unknown["id"])["failure"]
    assert [s.run_id for s in at_start] == [unsubmitted["id"]]
    assert "before the SuperLink accepted it" in world.run(unsubmitted["id"])["failure"]
    assert world.run(pending["id"])["state"] == "submitted"  # the new launcher will claim it
    world.api.ok("POST", f"/runs/{pending['id']}/stop", world.api.admin)


def _charge(history: list[AccountantStep]) -> PrivacyCharge:
    return PrivacyCharge(
        noise_multiplier=history[-1].noise_multiplier,
        sample_rate=history[-1].sample_rate,
        steps=history[-1].steps,
        delta=1e-5,
        accountant="rdp",
        epsilon=epsilon_spent(history, delta=1e-5, accountant="rdp"),
        epsilon_budget=8.0,
    )


def test_a_charge_of_a_failed_round_is_recorded_as_not_aggregated(world: World) -> None:
    run = world.start_run("failed-round")
    row = run_row(world.api, run["id"])
    journal = LedgerJournal(Path(row.journal_path), db=world.api.db, run_id=run["id"])
    names = [n["name"] for n in world.nodes]
    journal.append(
        RunStarted(
            flower_run_id=int(run["flower_run_id"]),
            federation="failed-round",
            federation_digest="0" * 64,
            rounds=2,
            members=tuple(Member(name=n, node_id=i + 1) for i, n in enumerate(names)),
            aggregation="secagg+",
            secure_aggregation=SecureAggregationSpec(enabled=True),
        )
    )
    step = AccountantStep(noise_multiplier=1.3, sample_rate=0.05, steps=40)
    charge = _charge([step])
    journal.append(  # site-0 and site-1 sent masked inputs; site-2 never answered
        RoundRecord(
            round=1,
            seconds=2.0,
            participants=(),
            num_examples=0,
            nodes={
                names[0]: NodeRound(status="error", code="secagg_too_few", charge=charge),
                names[1]: NodeRound(status="error", code="secagg_too_few", charge=charge),
                names[2]: NodeRound(status="dropped", code="no_reply"),
            },
        )
    )
    journal.append(RunEnded(state="failed", rounds_completed=0, reason="round 1 failed"))

    for node, charged in zip(world.nodes, (True, True, False), strict=True):
        report = world.api.ok("GET", f"/ledger/nodes/{node['id']}", world.api.admin)
        mine = [h for h in report["history"] if h["run_id"] == run["id"]]
        assert [(h["round"], h["aggregated"]) for h in mine] == ([(1, False)] if charged else [])
        if charged:
            assert mine[0]["epsilon_reported"] == pytest.approx(charge.epsilon)


def test_repair_records_the_nodes_charges_the_coordinator_lacks(world: World) -> None:
    api = world.api
    fed = api.federation("repaired", [n["id"] for n in world.nodes])
    run = api.ok("POST", f"/federations/{fed['id']}/runs", api.admin)
    play_serverapp(api, run["id"], rounds=2)
    node = world.nodes[2]  # charged in no other run of this module
    before = api.ok("GET", f"/ledger/nodes/{node['id']}", api.admin)
    step = AccountantStep(noise_multiplier=1.1, sample_rate=0.1, steps=20)
    lost = _charge([step, step, step])  # round 3: the reply never reached the coordinator
    flower_run_id = api.ok("GET", f"/runs/{run['id']}", api.admin)["flower_run_id"]
    rows = [
        {
            "flower_run_id": flower_run_id,
            "round": rnd,
            "noise_multiplier": 1.1,
            "sample_rate": 0.1,
            "steps": 20,
            "delta": 1e-5,
            "accountant": "rdp",
            "epsilon_after": _charge([step] * rnd).epsilon,
        }
        for rnd in (1, 2, 3)
    ]
    path = f"/ledger/nodes/{node['id']}/reconcile"

    compared = api.ok("POST", path, api.admin, json={"entries": rows})
    as_auditor = api.call("POST", path, api.auditor(), json={"entries": rows, "repair": True})
    repaired = api.ok("POST", path, world.tenant.headers, json={"entries": rows, "repair": True})
    after = api.ok("GET", f"/ledger/nodes/{node['id']}", api.admin)
    clean = api.ok("POST", path, api.admin, json={"entries": rows})

    assert [m["round"] for m in compared["mismatches"]] == [3]
    assert as_auditor.status_code == 403
    assert [m["round"] for m in repaired["repaired"]] == [3]
    assert repaired["ok"] is True
    added = [h for h in after["history"] if h["run_id"] == run["id"] and h["round"] == 3]
    assert [(h["aggregated"], h["source"]) for h in added] == [(False, "node_ledger")]
    assert after["epsilon_spent"] > before["epsilon_spent"]
    assert after["epsilon_spent"] == pytest.approx(
        before["epsilon_spent"] + (lost.epsilon - _charge([step, step]).epsilon), rel=0.2
    )
    assert clean == {"ok": True, "mismatches": [], "repaired": []}
    events = api.ok("GET", "/audit/events", api.admin, params={"limit": 1000})
    assert any(e["action"] == "ledger.repair" for e in events)


def test_budget_is_held_to_the_larger_of_coordinator_and_node_figures(world: World) -> None:
    """A node that reports more epsilon than the coordinator's history gives (it charged
    rounds whose replies were lost) is held to its own, higher figure."""
    api = world.api
    node = world.nodes[1]
    fed = api.federation("reported-high", [n["id"] for n in world.nodes])
    run = api.ok("POST", f"/federations/{fed['id']}/runs", api.admin)
    row = run_row(api, run["id"])
    journal = LedgerJournal(Path(row.journal_path), db=api.db, run_id=run["id"])
    step = AccountantStep(noise_multiplier=1.1, sample_rate=0.1, steps=20)
    high = PrivacyCharge(1.1, 0.1, 20, 1e-5, "rdp", epsilon=7.5, epsilon_budget=8.0)
    names = [n["name"] for n in world.nodes]
    journal.append(
        RoundRecord(
            round=1,
            seconds=1.0,
            participants=tuple(names),
            num_examples=300,
            nodes={
                n: NodeRound(
                    status="ok",
                    num_examples=100,
                    charge=high if n == node["name"] else _charge([step]),
                )
                for n in names
            },
        )
    )
    api.ok("POST", f"/runs/{run['id']}/stop", api.admin)

    report = api.ok("GET", f"/ledger/nodes/{node['id']}", api.admin)
    refused = api.call("POST", f"/federations/{fed['id']}/runs", api.admin)

    assert report["epsilon_spent"] < 7.5  # what the coordinator's own history gives
    assert report["epsilon_reported"] == pytest.approx(7.5)
    assert report["epsilon_remaining"] == pytest.approx(0.5)
    assert refused.status_code == 409
    assert refused.json()["code"] == "budget_exceeded"
    assert node["name"] in refused.json()["message"]


def test_the_in_process_run_list_is_what_flwr_ls_lists(world: World) -> None:
    """The reconciler asks the Control API in-process (`SuperLink.run_statuses`) instead of
    spawning `flwr ls` (about 1.2 s of CPU each time); both must see the same runs and
    statuses, pending and stopped alike."""
    nodes = [world.api.enrolled_node(world.tenant, f"lister-{i}") for i in range(3)]
    runs = []
    for name in ("listed-pending", "listed-stopped"):  # fresh nodes: the others' budget is spent
        fed = world.api.federation(name, [n["id"] for n in nodes])
        runs.append(world.api.ok("POST", f"/federations/{fed['id']}/runs", world.api.admin))
    pending, stopped = runs
    world.superlink.stop_run(int(stopped["flower_run_id"]))

    listed = world.superlink.run_statuses()
    by_cli = {
        s.run_id: s
        for row in world.superlink.flwr("ls", CONNECTION).get("runs", [])
        if (s := FlowerRunStatus.from_ls_row(row)) is not None
    }

    assert listed == by_cli
    assert listed[int(pending["flower_run_id"])].status == "pending"
    assert listed[int(stopped["flower_run_id"])].finished
    assert listed[int(stopped["flower_run_id"])].sub_status == "stopped"
    world.superlink.stop_run(int(pending["flower_run_id"]))  # leave no run behind
    reconcile_runs(world.api.db, world.launcher, at_start=False)
    assert {world.run(run["id"])["state"] for run in runs} == {"failed"}
