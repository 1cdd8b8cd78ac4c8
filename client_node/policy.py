"""The site privacy policy: the node's own floor, checked before any training.

node.toml's ``[privacy]`` section says what this node accepts: which federations and tasks,
how much epsilon per federation and over all federations on its dataset, the least noise
and the largest clipping norm, and whether secure aggregation is required. The coordinator
asks; the site decides. Every check here runs in the node's trainer (code the institution
installed), before a model is touched, and a refusal carries a stable ``code`` plus a
reason that names the node.toml field to change, so the run's status at the coordinator
tells the institution's IT what to do.

Two stages, because some numbers exist only after the node calibrated its noise:

* :meth:`SitePolicy.check_request` — the federation spec and how the request arrived
  (federation and task accepted, delta, clipping norm, secure aggregation);
* :meth:`SitePolicy.check_spend` — the planned round against the noise floor, the
  federation's epsilon cap (over the whole rest of the run) and the dataset's lifetime
  budget (``epsilon_budget``, per round, via :func:`lepton_fl.privacy.check_round`).

:meth:`SitePolicy.check` runs both. See docs/site-policy.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from client_node.ledger import LedgerEntry
from client_node.settings import PrivacySection
from lepton_fl.config import AccountantName, FederationSpec
from lepton_fl.privacy import AccountantStep, PrivacyAccountingError, check_round, epsilon_spent

RequestKind = Literal["secure", "plain", "evaluate"]
"""How a request reached the trainer: a secure-aggregation round, a plain train message
(the update leaves the node in the clear), or an evaluation (no update leaves)."""

REFUSAL_CODES = (
    "federation_not_accepted",
    "task_not_accepted",
    "task_mismatch",
    "delta_too_large",
    "clipping_too_loose",
    "secure_aggregation_required",
    "plain_round_refused",
    "noise_too_low",
    "federation_epsilon_exceeded",
    "budget_exhausted",
    "accounting_failed",
)


class PolicyRefusedError(Exception):
    """A request this site's policy does not allow.

    ``code`` is stable (one of :data:`REFUSAL_CODES`); ``field`` is the node.toml key that
    decided it; ``reason`` is the message for the run's status.
    """

    def __init__(self, code: str, reason: str, *, field: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class PlannedSpend:
    """What the node would spend: this round, and the rounds of the run still to come.

    ``then`` is what the run spends after its rounds (its scheduled evaluation release);
    the federation's cap counts it with the rest of the run.
    """

    round: AccountantStep
    remaining_rounds: int  # this round included; >= 1
    then: tuple[AccountantStep, ...] = ()

    @property
    def rest_of_run(self) -> AccountantStep:
        """The remaining rounds as one accountant entry (same sigma and rate compose by steps)."""
        r = self.round
        return AccountantStep(r.noise_multiplier, r.sample_rate, r.steps * self.remaining_rounds)


@dataclass(frozen=True)
class SitePolicy:
    """One node's `[privacy]` section, applied to the requests of any run."""

    privacy: PrivacySection
    node_task: str  # [data].task: the task this node serves

    # -- stage 1: the spec and how it arrived -------------------------------------------

    def check_request(self, fed: FederationSpec, *, kind: RequestKind) -> None:
        """Refuse a federation (or a plain request) looser than this site allows."""
        p = self.privacy
        if fed.name not in p.federations:
            raise PolicyRefusedError(
                "federation_not_accepted",
                f"This node does not accept federation {fed.name!r}: [privacy].federations = "
                f"{list(p.federations)}. Add {fed.name!r} to [privacy].federations in node.toml "
                "to take part.",
                field="privacy.federations",
            )
        if p.tasks and fed.task not in p.tasks:
            raise PolicyRefusedError(
                "task_not_accepted",
                f"Federation {fed.name!r} trains task {fed.task!r}, which this node does not "
                f"accept: [privacy].tasks = {list(p.tasks)}. Add {fed.task!r} to "
                "[privacy].tasks in node.toml, or leave this federation.",
                field="privacy.tasks",
            )
        if fed.task != self.node_task:
            raise PolicyRefusedError(
                "task_mismatch",
                f"Federation {fed.name!r} trains task {fed.task!r} but this node serves "
                f"[data].task = {self.node_task!r} (and [privacy].tasks = {list(p.tasks)} "
                "accepts only that task when empty). Point [data] at that task's data, or "
                "leave this federation.",
                field="data.task",
            )
        if fed.privacy.delta > p.max_delta:
            raise PolicyRefusedError(
                "delta_too_large",
                f"[privacy].max_delta = {p.max_delta:g} but federation {fed.name!r} asks for "
                f"delta = {fed.privacy.delta:g}. Lower the federation's delta, or raise "
                "[privacy].max_delta.",
                field="privacy.max_delta",
            )
        if p.max_grad_norm is not None and fed.privacy.max_grad_norm > p.max_grad_norm:
            raise PolicyRefusedError(
                "clipping_too_loose",
                f"[privacy].max_grad_norm = {p.max_grad_norm:g} but federation {fed.name!r} "
                f"asks for max_grad_norm = {fed.privacy.max_grad_norm:g}. Lower the "
                "federation's clipping norm, or raise [privacy].max_grad_norm.",
                field="privacy.max_grad_norm",
            )
        if p.require_secure_aggregation and not fed.secure_aggregation.enabled:
            raise PolicyRefusedError(
                "secure_aggregation_required",
                f"[privacy].require_secure_aggregation = true but federation {fed.name!r} has "
                "secure_aggregation.enabled = false. Turn secure aggregation on for the "
                "federation, or set [privacy].require_secure_aggregation = false.",
                field="privacy.require_secure_aggregation",
            )
        if p.require_secure_aggregation and kind == "plain":
            raise PolicyRefusedError(
                "plain_round_refused",
                f"[privacy].require_secure_aggregation = true but this round of federation "
                f"{fed.name!r} came as a plain train request, which would send this node's "
                "model delta to the coordinator unmasked. Run it through secure aggregation, "
                "or change [privacy].require_secure_aggregation to false.",
                field="privacy.require_secure_aggregation",
            )

    # -- stage 2: what the round would spend ---------------------------------------------

    def check_spend(
        self,
        fed: FederationSpec,
        planned: PlannedSpend,
        entries: Sequence[LedgerEntry],
        *,
        accountant: AccountantName,
    ) -> None:
        """Refuse a round whose noise, federation epsilon or lifetime epsilon breaks policy.

        ``entries`` is this dataset's ledger (all federations). Entries recorded before the
        ledger named federations (``federation is None``) count against every federation's
        cap: their federation is unknown, and the site's cap must not be undercounted.
        """
        p = self.privacy
        sigma = planned.round.noise_multiplier
        if sigma < p.min_noise_multiplier:
            raise PolicyRefusedError(
                "noise_too_low",
                f"[privacy].min_noise_multiplier = {p.min_noise_multiplier:g} but federation "
                f"{fed.name!r} calibrates to noise_multiplier = {sigma:.4g} (target_epsilon = "
                f"{fed.privacy.target_epsilon:g} over {fed.rounds} rounds). Lower the "
                "federation's target_epsilon or rounds, or lower [privacy].min_noise_multiplier.",
                field="privacy.min_noise_multiplier",
            )
        delta = fed.privacy.delta
        cap = p.epsilon_cap(fed.name)
        try:
            if cap is not None:
                self._check_federation_cap(fed, planned, entries, cap, accountant=accountant)
            history = [e.step for e in entries]
            decision = check_round(
                history, planned.round, budget=p.epsilon_budget, delta=delta, accountant=accountant
            )
        except PrivacyAccountingError as err:
            raise PolicyRefusedError(
                "accounting_failed",
                f"This node could not account the round's privacy cost ({err}); it refuses "
                "rather than guess.",
                field="privacy.accountant",
            ) from err
        if not decision.allowed:
            raise PolicyRefusedError(
                "budget_exhausted",
                f"{decision.reason} ([privacy].epsilon_budget = {p.epsilon_budget:g}, this "
                "dataset's lifetime epsilon over all federations.)",
                field="privacy.epsilon_budget",
            )

    def _check_federation_cap(
        self,
        fed: FederationSpec,
        planned: PlannedSpend,
        entries: Sequence[LedgerEntry],
        cap: float,
        *,
        accountant: AccountantName,
    ) -> None:
        history = [e.step for e in entries if e.federation in (fed.name, None)]
        decision = check_round(
            [*history, *planned.then],
            planned.rest_of_run,
            budget=cap,
            delta=fed.privacy.delta,
            accountant=accountant,
        )
        if decision.allowed:
            return
        if fed.name in self.privacy.federation_epsilon:
            field, key = f"[privacy.federation_epsilon].{fed.name}", "privacy.federation_epsilon"
        else:
            field, key = (
                "[privacy].max_epsilon_per_federation",
                "privacy.max_epsilon_per_federation",
            )
        rounds = planned.remaining_rounds
        spent = (
            epsilon_spent(history, delta=fed.privacy.delta, accountant=accountant)
            if planned.then
            else decision.epsilon_before
        )
        rest = "this round" if rounds == 1 else f"the run's remaining {rounds} rounds"
        if planned.then:
            rest += " and its scheduled evaluation"
        raise PolicyRefusedError(
            "federation_epsilon_exceeded",
            f"{field} = {cap:g} but federation {fed.name!r} would reach epsilon "
            f"{decision.epsilon_after:.3f} on this dataset with {rest} (it has spent "
            f"{spent:.3f} so far; delta = {fed.privacy.delta:g}, {accountant}). "
            f"Lower the federation's target_epsilon, or raise {field}.",
            field=key,
        )

    # -- both ----------------------------------------------------------------------------

    def check(
        self,
        fed: FederationSpec,
        *,
        kind: RequestKind,
        planned: PlannedSpend,
        entries: Sequence[LedgerEntry],
        accountant: AccountantName,
    ) -> None:
        """Every check, in order; raises :class:`PolicyRefusedError` on the first failure."""
        self.check_request(fed, kind=kind)
        self.check_spend(fed, planned, entries, accountant=accountant)
