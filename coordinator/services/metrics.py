"""The admin service's Prometheus series, computed from its database when they are scraped.

Nothing here is cached or counted in memory: each scrape reads the runs, the recorded rounds
(what `coordinator.services.round_sink` recorded from the run journals) and the privacy
ledger, so a series can never drift from the database, and a coordinator restarted between
two scrapes reports the same values. The ledger's series are computed by the very functions
the API's ledger uses (`coordinator.services.ledger.node_ledger`: epsilon recomputed with
Opacus from the recorded history, never summed): ``lepton_ledger_epsilon_spent`` is the
API's ``epsilon_spent`` and ``lepton_ledger_epsilon_remaining`` its ``epsilon_remaining``. A
node whose recorded history cannot be accounted gets no epsilon series at all (it is counted
in ``lepton_ledger_unaccountable_nodes``): no epsilon is shown that the recorded parameters do
not support.

Scope follows the API's: a platform admin or the platform auditor sees every series; a
tenant-scoped key (tenant admin, tenant auditor) sees its own tenant's ledger series, the runs
and rounds its nodes take part in (other tenants' members only as counts, as
``GET /runs/{id}/rounds`` shows them) and refusals of its own nodes only. With
``node_labels`` off (an auditor-facing deployment), the ledger's series carry no node label:
per tenant, the largest spent and the smallest remaining epsilon of its nodes.

Every metric and its labels are listed in docs/admin-api.md#metrics.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlmodel import col, select

from coordinator.db import Database
from coordinator.db.tables import Federation, Node, Run, RunRound, Tenant
from coordinator.services import ledger
from coordinator.services.common import Actor, require_role, scope_tenant
from coordinator.services.runs import ACTIVE_STATES, TERMINAL_STATES, own_members
from lepton_fl.privacy import PrivacyAccountingError

log = logging.getLogger(__name__)

RUN_STATES = (*ACTIVE_STATES, *TERMINAL_STATES)
ROUND_SECONDS_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
MEMBER_COUNT_BUCKETS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 50.0, 100.0)
UNRECORDED = "unrecorded"  # status and code of members of rounds recorded before 0005
UNKNOWN = "unknown"


def require_scraper(actor: Actor) -> None:
    """Any API key may scrape (its scope decides what it sees); nothing else may."""
    require_role(actor, "platform_admin", "tenant_admin", "auditor", action="read metrics")


@dataclass(frozen=True)
class _Names:
    """Display names for ids (label values are names: unique, readable on a dashboard)."""

    tenants: dict[str, str]
    nodes: dict[str, tuple[str, str]]  # node id -> (node name, tenant id)
    federations: dict[str, str]

    def tenant(self, tenant_id: str | None) -> str:
        return self.tenants.get(tenant_id or "", UNKNOWN)

    def node_tenant(self, node_id: str) -> str:
        found = self.nodes.get(node_id)
        return self.tenant(found[1]) if found else UNKNOWN

    def federation(self, federation_id: str) -> str:
        return self.federations.get(federation_id, federation_id)


class AdminCollector(Collector):
    """The admin database's series as one actor may see them (one instance per scrape)."""

    def __init__(self, db: Database, actor: Actor, *, node_labels: bool = True) -> None:
        require_scraper(actor)
        self.db = db
        self.actor = actor
        self.node_labels = node_labels

    def collect(self) -> Iterable[Metric]:
        names = self._names()
        runs = self._visible_runs()
        yield from run_families(runs, names)
        yield from round_families(self.actor, runs, self._rounds(runs), names)
        yield from ledger_families(self._ledgers(), names, node_labels=self.node_labels)

    def _names(self) -> _Names:
        with self.db.read() as session:
            tenants = {t.id: t.name for t in session.exec(select(Tenant)).all()}
            nodes = {n.id: (n.name, n.tenant_id) for n in session.exec(select(Node)).all()}
            federations = {f.id: f.name for f in session.exec(select(Federation)).all()}
        return _Names(tenants, nodes, federations)

    def _visible_runs(self) -> list[Run]:
        with self.db.read() as session:  # only the columns read here (not the specs)
            rows = session.exec(select(Run.id, Run.federation_id, Run.state, Run.members)).all()
        every = [
            Run.model_construct(id=i, federation_id=f, state=state, members=members)
            for i, f, state, members in rows
        ]
        return [r for r in every if (mine := own_members(self.actor, r)) is None or mine]

    def _rounds(self, runs: Sequence[Run]) -> list[RunRound]:
        if not runs:
            return []
        query = select(RunRound).order_by(col(RunRound.recorded_at))
        if scope_tenant(self.actor) is not None:  # a few runs; the platform's: every one
            query = query.where(col(RunRound.run_id).in_([r.id for r in runs]))
        with self.db.read() as session:
            return list(session.exec(query).all())

    def _ledgers(self) -> list[ledger.NodeLedger | str]:
        """Each visible node's ledger, as the API reports it; the node's id where its
        recorded history cannot be accounted."""
        scope = scope_tenant(self.actor)
        with self.db.read() as session:
            query = select(Node.id).order_by(col(Node.created_at))
            if scope is not None:
                query = query.where(Node.tenant_id == scope)
            node_ids = list(session.exec(query).all())
        found: list[ledger.NodeLedger | str] = []
        for node_id in node_ids:
            try:
                found.append(ledger.node_ledger(self.db, self.actor, node_id))
            except PrivacyAccountingError as err:
                log.error("metrics: the ledger of node %s cannot be accounted: %s", node_id, err)
                found.append(node_id)
        return found


# -- runs -----------------------------------------------------------------------------------


def run_families(runs: Sequence[Run], names: _Names) -> Iterator[Metric]:
    """``lepton_runs{federation, state}``: how many runs are in each state."""
    family = GaugeMetricFamily(
        "lepton_runs", "Runs by federation and state.", labels=["federation", "state"]
    )
    counts: dict[tuple[str, str], int] = defaultdict(int)
    federations = {names.federation(r.federation_id) for r in runs}
    for federation in federations:
        for state in RUN_STATES:  # every state, 0 included: a dashboard sees it go to 0
            counts[(federation, state)] = 0
    for run in runs:
        counts[(names.federation(run.federation_id), run.state)] += 1
    for (federation, state), count in sorted(counts.items()):
        family.add_metric([federation, state], count)
    yield family


# -- rounds ---------------------------------------------------------------------------------


@dataclass
class _Histogram:
    """Observations of one label set, turned into Prometheus's cumulative buckets."""

    bounds: tuple[float, ...]
    values: list[float] = field(default_factory=list)

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = [
            (repr(float(b)), float(sum(1 for v in self.values if v <= b))) for b in self.bounds
        ]
        return [*cumulative, ("+Inf", float(len(self.values)))]


@dataclass(frozen=True)
class RoundFacts:
    """What the metrics read from one recorded round."""

    federation: str
    seconds: float | None
    participants: int
    outcomes: dict[str, tuple[str, str]]  # node id -> (status, code), members not aggregated

    @property
    def dropouts(self) -> int:
        return sum(1 for status, _ in self.outcomes.values() if status == "dropped")


def round_facts(row: RunRound, federation: str) -> RoundFacts:
    """A recorded round's figures (rounds recorded before schema 0005 have no codes)."""
    participants: list[str] = json.loads(row.participants)
    if row.outcomes is not None:
        raw: dict[str, list[str]] = json.loads(row.outcomes)
        outcomes = {n: (str(s), str(c) or UNKNOWN) for n, (s, c) in raw.items()}
    else:
        refusals: dict[str, str] = json.loads(row.refusals)
        outcomes = dict.fromkeys(refusals, (UNRECORDED, UNRECORDED))
    seconds = row.seconds if row.seconds is not None and math.isfinite(row.seconds) else None
    return RoundFacts(federation, seconds, len(participants), outcomes)


def round_families(
    actor: Actor, runs: Sequence[Run], rows: Sequence[RunRound], names: _Names
) -> Iterator[Metric]:
    """Round durations, participants and dropouts per round, refusals by code."""
    by_run = {r.id: r for r in runs}
    seconds: dict[str, _Histogram] = {}
    participants: dict[str, _Histogram] = {}
    dropouts: dict[str, _Histogram] = {}
    last: dict[str, RoundFacts] = {}
    refusals: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for row in rows:  # in the order they were recorded
        run = by_run.get(row.run_id)
        if run is None:  # a run started after the runs were read: the next scrape has it
            continue
        facts = round_facts(row, names.federation(run.federation_id))
        fed = facts.federation
        if facts.seconds is not None:
            seconds.setdefault(fed, _Histogram(ROUND_SECONDS_BUCKETS)).values.append(facts.seconds)
        participants.setdefault(fed, _Histogram(MEMBER_COUNT_BUCKETS)).values.append(
            facts.participants
        )
        dropouts.setdefault(fed, _Histogram(MEMBER_COUNT_BUCKETS)).values.append(facts.dropouts)
        last[fed] = facts
        mine = own_members(actor, run)  # a tenant-scoped key: only its own nodes' codes
        for node_id, (status, code) in facts.outcomes.items():
            if mine is None or node_id in mine:
                refusals[(fed, names.node_tenant(node_id), status, code)] += 1
    yield _histogram(
        "lepton_round_duration_seconds",
        "Wall time of each recorded round, from the ServerApp's run journal.",
        seconds,
    )
    yield _histogram(
        "lepton_round_participants",
        "Members whose update is in each recorded round's aggregate.",
        participants,
    )
    yield _histogram(
        "lepton_round_dropouts",
        "Members that dropped out of each recorded round (no reply in time, or out of its "
        "secure-aggregation session).",
        dropouts,
    )
    last_participants = GaugeMetricFamily(
        "lepton_round_last_participants",
        "Participants of the federation's most recently recorded round.",
        labels=["federation"],
    )
    last_dropouts = GaugeMetricFamily(
        "lepton_round_last_dropouts",
        "Dropouts of the federation's most recently recorded round.",
        labels=["federation"],
    )
    for fed, facts in sorted(last.items()):
        last_participants.add_metric([fed], facts.participants)
        last_dropouts.add_metric([fed], facts.dropouts)
    yield last_participants
    yield last_dropouts
    refused = CounterMetricFamily(
        "lepton_round_refusals",
        "Members left out of a recorded round's aggregate, by status (refused, error, "
        "dropped) and the stable code of the node's reply or of the ServerApp.",
        labels=["federation", "tenant", "status", "code"],
    )
    for labels, count in sorted(refusals.items()):
        refused.add_metric(list(labels), count)
    yield refused


def _histogram(name: str, documentation: str, series: dict[str, _Histogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["federation"])
    for fed, histogram in sorted(series.items()):
        family.add_metric([fed], histogram.buckets(), sum_value=float(sum(histogram.values)))
    return family


# -- the privacy ledger ---------------------------------------------------------------------


def ledger_families(
    ledgers: Sequence[ledger.NodeLedger | str], names: _Names, *, node_labels: bool
) -> Iterator[Metric]:
    """Each node's budget, spent and remaining epsilon, and its spend per federation."""
    keys = ["tenant", "node"] if node_labels else ["tenant"]
    budget = GaugeMetricFamily(
        "lepton_ledger_epsilon_budget",
        "A node's lifetime epsilon budget, as set when the node was created "
        "(with node labels off: not exported).",
        labels=keys,
    )
    spent = GaugeMetricFamily(
        "lepton_ledger_epsilon_spent",
        "Epsilon a node has spent by the coordinator's ledger, recomputed with Opacus from "
        "every recorded charge (the API's epsilon_spent; with node labels off: the largest "
        "of the tenant's nodes).",
        labels=keys,
    )
    remaining = GaugeMetricFamily(
        "lepton_ledger_epsilon_remaining",
        "A node's budget less the larger of the coordinator's epsilon and the highest the "
        "node itself reported (the API's epsilon_remaining; with node labels off: the "
        "smallest of the tenant's nodes).",
        labels=keys,
    )
    by_federation = GaugeMetricFamily(
        "lepton_ledger_federation_epsilon_spent",
        "Epsilon a node has spent in one federation, over all its runs (with node labels "
        "off: the largest of the tenant's nodes).",
        labels=[*keys, "federation"],
    )
    counted = GaugeMetricFamily(
        "lepton_ledger_nodes", "Nodes in the ledger's series, per tenant.", labels=["tenant"]
    )
    unaccountable = GaugeMetricFamily(
        "lepton_ledger_unaccountable_nodes",
        "Nodes whose recorded history Opacus could not account: they have no epsilon series.",
        labels=["tenant"],
    )
    per_tenant: dict[str, list[ledger.NodeLedger]] = defaultdict(list)
    failed: dict[str, int] = defaultdict(int)
    for item in ledgers:
        if isinstance(item, str):
            failed[names.node_tenant(item)] += 1
        else:
            per_tenant[names.tenant(item.tenant_id)].append(item)
    for tenant in sorted(set(per_tenant) | set(failed)):
        reports = per_tenant.get(tenant, [])
        counted.add_metric([tenant], len(reports))
        unaccountable.add_metric([tenant], failed.get(tenant, 0))
        if node_labels:
            for r in reports:
                budget.add_metric([tenant, r.node_name], r.epsilon_budget)
                spent.add_metric([tenant, r.node_name], r.epsilon_spent)
                remaining.add_metric([tenant, r.node_name], r.epsilon_remaining)
                for f in r.federations:
                    by_federation.add_metric([tenant, r.node_name, f.federation_name], f.epsilon)
        elif reports:
            spent.add_metric([tenant], max(r.epsilon_spent for r in reports))
            remaining.add_metric([tenant], min(r.epsilon_remaining for r in reports))
            largest: dict[str, float] = {}
            for r in reports:
                for f in r.federations:
                    largest[f.federation_name] = max(largest.get(f.federation_name, 0.0), f.epsilon)
            for federation, epsilon in sorted(largest.items()):
                by_federation.add_metric([tenant, federation], epsilon)
    yield from (budget, spent, remaining, by_federation, counted, unaccountable)
