"""The node's privacy gate: the one place that admits a request and decides what a reply holds.

Every request a node answers (a train round, plain or inside secure aggregation, an
evaluation, each secure-aggregation stage's admission) passes through one
:class:`PrivacyGate`. It owns the site policy (``client_node/policy.py``), the ledger, the
noise calibration and the accountants, and it is the only code that builds the privacy-
relevant part of a reply:

* **Admission**: the site policy's checks of the federation spec and of how the request
  came, then the round's planned cost against the noise floor, the federation's cap and the
  dataset's lifetime budget, under the federation's accountant **and** the site's own
  (``[privacy].accountant``): a round is refused if either counts it over a limit.
* **Training replies** hold the update, the example count and the privacy charge. The
  training loss stays in the node's log (``lepton.node.privacy``): it is computed on the
  private rows without noise.
* **Evaluation** happens only when the signed federation spec schedules it (its
  ``evaluation_epsilon`` is not 0), only for the run's last round, at most once per
  (dataset, run, round): the ledger's evaluation row is the proof. The reply carries only
  the Gaussian release of the confusion counts (``lepton_fl.privacy.evaluation``) and the
  metrics derived from them; the exact loss and ROC-AUC stay in the node's log. The charge
  is recorded in the ledger before the reply leaves, and the reported epsilon includes it.
* **Ledger failures** refuse the request, never crash it: a charge (or run binding) that
  cannot be written (a full disk, a read-only file or directory, a lock held elsewhere) is
  ``ledger_unwritable``, a ledger changed under the trainer ``ledger_tampered``, one that
  cannot be read ``ledger_unreadable``. Nothing is sent: the update of a round whose charge
  was not recorded stays on the node. The cause goes to the node's log in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from client_node.ledger import Ledger, LedgerEntry, LedgerError
from client_node.policy import PlannedSpend, PolicyRefusedError, RequestKind, SitePolicy
from client_node.settings import NodeSettings
from lepton_fl.config import AccountantName, FederationSpec
from lepton_fl.metrics import ClassificationMetrics
from lepton_fl.privacy import AccountantStep, PrivacyAccountingError, epsilon_spent
from lepton_fl.privacy.accounting import check_accountant
from lepton_fl.privacy.evaluation import (
    RunCalibration,
    calibrate_run,
    evaluation_epsilon_share,
    release_confusion,
)
from lepton_fl.privacy.membership import JOINT_SENSITIVITY, Counts, release_histograms
from lepton_fl.wire import EvalMetrics, EvaluateReply, PrivacyCharge, TrainReply

if TYPE_CHECKING:
    from client_node.trainer.dp_sgd import TrainResult
    from client_node.trainer.evaluation import EvalResult

LOG = logging.getLogger("lepton.node.privacy")

#: Codes of the gate's own refusals (the site policy's are ``policy.REFUSAL_CODES``).
GATE_REFUSAL_CODES = (
    "dataset_id_required",
    "bad_round",
    "already_trained",
    "calibration_failed",
    "evaluation_not_scheduled",
    "evaluation_repeated",
    "unknown_accountant",
    "ledger_unwritable",
    "ledger_tampered",
    "ledger_unreadable",
)

#: Ledger error codes of a ledger that cannot be written now: refused as ``ledger_unwritable``.
UNWRITABLE_LEDGER_CODES = frozenset(
    {"write_failed", "unwritable", "locked_by_other_writer", "read_only"}
)


class RequestRefusedError(Exception):
    """A request the site policy or budget does not allow; the reason goes back to the run."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class RoundAdmission:
    """A train round the gate admitted: its noise and the accountant it is charged under."""

    run_id: str
    round: int
    federation: FederationSpec
    noise_multiplier: float
    accountant: AccountantName
    history: tuple[AccountantStep, ...]


@dataclass(frozen=True)
class EvaluationAdmission:
    """A scheduled evaluation the gate admitted: the release's noise and accountant entry."""

    run_id: str
    round: int
    federation: FederationSpec
    step: AccountantStep
    accountant: AccountantName


class PrivacyGate:
    """Admits or refuses a node's requests and builds what their replies may contain.

    Not thread-safe on its own: the trainer calls it under its lock.
    """

    def __init__(self, *, settings: NodeSettings, ledger: Ledger) -> None:
        self.settings = settings
        self.ledger = ledger
        self.policy = SitePolicy(settings.privacy, node_task=settings.data.task)
        self._plans: dict[tuple[str, str, float, int], RunCalibration] = {}

    @property
    def dataset_id(self) -> str:
        """The ledger key of this node's dataset (``[data] dataset_id``)."""
        return self.settings.dataset_id

    # -- admission ------------------------------------------------------------------------

    def check_request(self, fed: FederationSpec, kind: RequestKind) -> None:
        """The site policy's checks of the spec and of how the request came (no model)."""
        try:
            self.policy.check_request(fed, kind=kind)
        except PolicyRefusedError as refusal:
            raise RequestRefusedError(refusal.code, refusal.reason) from refusal

    def admit_round(
        self,
        *,
        run_id: str,
        round: int,
        fed: FederationSpec,
        kind: RequestKind,
        sample_rate: float,
        steps_per_round: int,
    ) -> RoundAdmission:
        """Admit one train round, or raise :class:`RequestRefusedError` with the reason.

        Runs the policy's request checks, the round's range, the no-second-charge rule and
        the planned cost (this round; for the federation's cap the rest of the run and its
        scheduled evaluation) under both accountants.
        """
        self.check_request(fed, kind)
        self._check_dataset_identity()
        if not 1 <= round <= fed.rounds:
            raise RequestRefusedError(
                "bad_round", f"Round {round} is outside the run's 1..{fed.rounds}."
            )
        with self._ledger("read the ledger"):
            trained = self.ledger.entry_for(self.dataset_id, run_id, round)
        if trained is not None:
            raise RequestRefusedError(
                "already_trained",
                f"This node already trained round {round} of run {run_id} and recorded its "
                "privacy cost; it will not train (and spend budget) twice.",
            )
        plan = self._plan(run_id, fed, sample_rate=sample_rate, steps_per_round=steps_per_round)
        sigma = plan.noise_multiplier
        planned = AccountantStep(sigma, sample_rate, steps_per_round)
        later = () if plan.evaluation is None else (plan.evaluation,)
        spend = PlannedSpend(planned, fed.rounds - round + 1, then=later)
        with self._ledger("read the ledger"):
            entries = self.ledger.entries(self.dataset_id)
        self._check_spend(fed, spend, entries)
        return RoundAdmission(
            run_id=run_id,
            round=round,
            federation=fed,
            noise_multiplier=sigma,
            accountant=_accountant(fed.privacy.accountant),
            history=tuple(e.step for e in entries),
        )

    def admit_evaluation(
        self,
        *,
        run_id: str,
        round: int,
        fed: FederationSpec,
        sample_rate: float,
        steps_per_round: int,
    ) -> EvaluationAdmission:
        """Admit the run's scheduled evaluation, or raise :class:`RequestRefusedError`.

        Refused (``evaluation_not_scheduled``) when the spec schedules no evaluation or the
        request is not for the run's last round, (``evaluation_repeated``) when this
        dataset's ledger already holds the evaluation of that run and round, and like a
        round when its cost does not fit the site's limits. Nothing is recorded on refusal.
        """
        self.check_request(fed, "evaluate")
        self._check_dataset_identity()
        privacy = fed.privacy
        share = evaluation_epsilon_share(privacy.target_epsilon, privacy.evaluation_epsilon)
        if share == 0.0 or round != fed.rounds:
            why = (
                "its spec sets privacy.evaluation_epsilon = 0 (no evaluation)"
                if share == 0.0
                else f"it schedules one evaluation, of round {fed.rounds} (the final model)"
            )
            raise RequestRefusedError(
                "evaluation_not_scheduled",
                f"Evaluation of round {round} of run {run_id} refused: federation "
                f"{fed.name!r} does not schedule it ({why}). A node evaluates only what the "
                "signed federation spec schedules, once, and releases only noised counts.",
            )
        with self._ledger("read the ledger"):
            evaluated = self.ledger.entry_for(self.dataset_id, run_id, round, kind="evaluate")
            entries = self.ledger.entries(self.dataset_id)
        if evaluated is not None:
            raise RequestRefusedError(
                "evaluation_repeated",
                f"This node already released its evaluation of round {round} of run {run_id} "
                "and charged it to its ledger; it evaluates each scheduled round once.",
            )
        plan = self._plan(run_id, fed, sample_rate=sample_rate, steps_per_round=steps_per_round)
        assert plan.evaluation is not None  # share > 0 and one evaluation scheduled
        self._check_spend(fed, PlannedSpend(plan.evaluation, 1), entries)
        return EvaluationAdmission(
            run_id=run_id,
            round=round,
            federation=fed,
            step=plan.evaluation,
            accountant=_accountant(privacy.accountant),
        )

    def bind_run(self, admin_run_id: str, flower_run_id: str, authorization_sha256: str) -> str:
        """Bind the admin run id in the ledger (:meth:`Ledger.bind_run`): the Flower run id
        bound first. A ledger that cannot record it refuses the request."""
        with self._ledger(
            f"record the binding of run {admin_run_id} to Flower run {flower_run_id}"
        ):
            return self.ledger.bind_run(admin_run_id, flower_run_id, authorization_sha256)

    # -- replies --------------------------------------------------------------------------

    def train_reply(
        self, admission: RoundAdmission, result: TrainResult, weights: list[np.ndarray]
    ) -> TrainReply:
        """Record the round's charge (before anything leaves) and build the reply: the
        update, the example count and the charge. The loss is logged here, never sent."""
        fed = admission.federation
        taken = AccountantStep(admission.noise_multiplier, result.sample_rate, result.steps)
        epsilon, row_hash = self._record(
            run_id=admission.run_id,
            round=admission.round,
            fed=fed,
            step=taken,
            accountant=admission.accountant,
            num_examples=result.num_examples,
            kind="train",
        )
        LOG.info(
            "run %s round %d of %s: trained %d steps on %d examples in %.3f s, train loss "
            "%.6f (kept on this node), epsilon %.4f",
            admission.run_id,
            admission.round,
            fed.name,
            result.steps,
            result.num_examples,
            result.seconds,
            result.train_loss,
            epsilon,
        )
        return TrainReply(
            status="ok",
            weights=weights,
            num_examples=result.num_examples,
            train_seconds=result.seconds,
            charge=self._charge(taken, fed, admission.accountant, epsilon, row_hash),
        )

    def evaluation_reply(
        self,
        admission: EvaluationAdmission,
        exact: EvalResult,
        *,
        membership: tuple[Counts, Counts] | None = None,
        rng: np.random.Generator | None = None,
    ) -> EvaluateReply:
        """Release the evaluation: noised counts and what follows from them, charged to the
        ledger before the reply is built. Exact loss, ROC-AUC and counts stay in the log.

        With ``membership`` (the exact loss histograms of the training and held-out rows,
        when the spec asks for the membership audit) the confusion counts and both
        histograms are one Gaussian release of L2 sensitivity ``sqrt(2)``: every count gets
        ``sqrt(2)`` times the noise, and the charge is the same single step at the
        admission's noise multiplier (``lepton_fl.privacy.membership``)."""
        fed = admission.federation
        sigma = admission.step.noise_multiplier
        joint = membership is not None
        released = release_confusion(
            exact.confusion, noise_multiplier=sigma * JOINT_SENSITIVITY if joint else sigma, rng=rng
        )
        audit = (
            None
            if membership is None
            else release_histograms(*membership, noise_multiplier=sigma, rng=rng)
        )
        epsilon, row_hash = self._record(
            run_id=admission.run_id,
            round=admission.round,
            fed=fed,
            step=admission.step,
            accountant=admission.accountant,
            num_examples=exact.num_examples,
            kind="evaluate",
        )
        LOG.info(
            "run %s round %d of %s: evaluated on %d held-out examples (kept on this node: "
            "loss %.6f, accuracy %.4f, ROC-AUC %s); released noised counts%s (noise std "
            "%.4g per count), epsilon %.4f",
            admission.run_id,
            admission.round,
            fed.name,
            exact.num_examples,
            exact.loss,
            exact.accuracy,
            "n/a" if exact.roc_auc is None else f"{exact.roc_auc:.4f}",
            " and the membership audit's loss histograms" if joint else "",
            sigma * JOINT_SENSITIVITY if joint else sigma,
            epsilon,
        )
        with self._ledger("read the ledger"):
            total = self.epsilon(delta=fed.privacy.delta, accountant=fed.privacy.accountant)
        return EvaluateReply(
            status="ok",
            evaluation=_released_metrics(released),
            epsilon=total,
            epsilon_budget=self.settings.privacy.epsilon_budget,
            charge=self._charge(admission.step, fed, admission.accountant, epsilon, row_hash),
            membership=audit,
        )

    def epsilon(self, *, delta: float, accountant: str) -> float:
        """Epsilon of this dataset's whole recorded history, training and evaluation."""
        history = self.ledger.history(self.dataset_id)
        return epsilon_spent(history, delta=delta, accountant=_accountant(accountant))

    # -- internals ------------------------------------------------------------------------

    def _check_dataset_identity(self) -> None:
        """A node reading its own file must name its dataset: the ledger's key must not
        follow the file's name, or renaming the file would start a fresh budget."""
        data = self.settings.data
        if data.source != "builtin" and data.dataset_id is None:
            raise RequestRefusedError(
                "dataset_id_required",
                f"Node {self.settings.node.name!r} reads its data from {data.path} but node.toml "
                "declares no [data] dataset_id, the key of its privacy ledger. Add "
                f'dataset_id = "{self.settings.dataset_id}" under [data] (the key its ledger '
                "used so far, so that its history is kept) and restart the node; keep it when "
                "the file is renamed or replaced by a newer export of the same records.",
            )

    def _plan(
        self, run_id: str, fed: FederationSpec, *, sample_rate: float, steps_per_round: int
    ) -> RunCalibration:
        """Calibrate once per run: training noise for all rounds and the evaluation's noise.

        The site's lifetime budget is enforced per round, not by raising sigma: a node that
        can no longer afford the federation's agreed noise refuses (with the numbers). The
        result depends only on the spec and the sampling rate, so a restarted trainer
        computes the same noise for the same run.
        """
        key = (run_id, fed.digest(), sample_rate, steps_per_round)
        if key not in self._plans:
            privacy = fed.privacy
            try:
                share = evaluation_epsilon_share(privacy.target_epsilon, privacy.evaluation_epsilon)
                self._plans[key] = calibrate_run(
                    sample_rate=sample_rate,
                    steps=steps_per_round * fed.rounds,
                    target_epsilon=privacy.target_epsilon,
                    evaluation_epsilon=share,
                    evaluations=1 if share > 0 else 0,
                    delta=privacy.delta,
                    accountant=_accountant(privacy.accountant),
                )
            except PrivacyAccountingError as err:
                raise RequestRefusedError("calibration_failed", str(err)) from err
        return self._plans[key]

    def _check_spend(
        self, fed: FederationSpec, spend: PlannedSpend, entries: Sequence[LedgerEntry]
    ) -> None:
        """The policy's spend checks under the federation's accountant and the site's."""
        accountants = dict.fromkeys(
            (_accountant(fed.privacy.accountant), self.settings.privacy.accountant)
        )
        for accountant in accountants:
            try:
                self.policy.check_spend(fed, spend, entries, accountant=accountant)
            except PolicyRefusedError as refusal:
                reason = refusal.reason
                if accountant != fed.privacy.accountant:
                    reason = (
                        f"{reason} This site accounts with [privacy].accountant = "
                        f"{accountant!r}, stricter here than the federation's "
                        f"{fed.privacy.accountant!r}; a round must fit under both."
                    )
                raise RequestRefusedError(refusal.code, reason) from refusal

    def _record(
        self,
        *,
        run_id: str,
        round: int,
        fed: FederationSpec,
        step: AccountantStep,
        accountant: AccountantName,
        num_examples: int,
        kind: str,
    ) -> tuple[float, str | None]:
        """Charge the ledger, committed before anything leaves; refused if it cannot be.
        Returns the dataset's epsilon after the charge, and the commitment to the charge's
        row (`Ledger.commitment` of the ledger's head: this trainer is its one writer), which
        the reply reports so that a ledger rewritten later disagrees with the coordinator."""
        what = "round" if kind == "train" else "evaluation of round"
        doing = f"record the charge of {what} {round} of run {run_id}"
        with self._ledger(doing):
            history = self.ledger.history(self.dataset_id)
            epsilon = epsilon_spent(
                [*history, step], delta=fed.privacy.delta, accountant=accountant
            )
            self.ledger.record(
                dataset_id=self.dataset_id,
                run_id=run_id,
                round=round,
                step=step,
                accountant=accountant,
                delta=fed.privacy.delta,
                epsilon_after=epsilon,
                num_examples=num_examples,
                federation=fed.name,
                kind=kind,
            )
            row_hash = self.ledger.commitment(self.ledger.head())
        return epsilon, row_hash

    @contextmanager
    def _ledger(self, doing: str) -> Iterator[None]:
        """Turn a ledger failure into a refusal with a stable code and log its cause once.

        ``duplicate_round`` is ``already_trained``; ``invalid_entry`` (a bug in the values
        recorded) is raised as it is.
        """
        try:
            yield
        except LedgerError as err:
            if err.code == "invalid_entry":
                raise
            raise self._ledger_refusal(err, doing) from None

    def _ledger_refusal(self, err: LedgerError, doing: str) -> RequestRefusedError:
        node = self.settings.node.name
        cause = str(err.__cause__) if isinstance(err.__cause__, Exception) else err.code
        if err.code in UNWRITABLE_LEDGER_CODES:
            code = "ledger_unwritable"
            reason = (
                f"Node {node!r} cannot {doing} in its privacy ledger ({cause}), so it refuses "
                "and sends nothing: a charge is recorded before anything leaves the node. The "
                "node's log says what to fix (disk space, permissions, a lock)."
            )
        elif err.code == "duplicate_round":  # admission checked it: only a racing writer
            code = "already_trained"
            reason = (
                f"Node {node!r} already recorded this privacy charge; it will not spend "
                "budget twice."
            )
        elif err.code == "tampered":
            code = "ledger_tampered"
            reason = (
                f"Node {node!r} refuses: its privacy ledger no longer matches its hash chain, "
                "so it takes part in nothing until the site restores the ledger from a "
                "backup. The node's log names the row."
            )
        else:
            code = "ledger_unreadable"
            reason = (
                f"Node {node!r} cannot {doing} ({cause}), so it refuses; the node's log says "
                "what to fix."
            )
        LOG.error("refused (%s): cannot %s: %s", code, doing, err)
        return RequestRefusedError(code, reason)

    def _charge(
        self,
        step: AccountantStep,
        fed: FederationSpec,
        accountant: str,
        epsilon: float,
        row_hash: str | None,
    ) -> PrivacyCharge:
        return PrivacyCharge(
            noise_multiplier=step.noise_multiplier,
            sample_rate=step.sample_rate,
            steps=step.steps,
            delta=fed.privacy.delta,
            accountant=accountant,
            epsilon=epsilon,
            epsilon_budget=self.settings.privacy.epsilon_budget,
            ledger_row=row_hash,
        )


def _released_metrics(released: ClassificationMetrics) -> EvalMetrics:
    """The wire form of a release: noised counts and their rates; no loss, no ROC-AUC."""
    return EvalMetrics(
        num_examples=released.num_examples,
        loss=None,
        accuracy=released.accuracy,
        roc_auc=None,
        precision=released.precision,
        recall=released.recall,
        f1=released.f1,
        confusion=released.confusion,
    )


def _accountant(name: str) -> AccountantName:
    try:
        return check_accountant(name)
    except PrivacyAccountingError as err:
        raise RequestRefusedError("unknown_accountant", str(err)) from err
