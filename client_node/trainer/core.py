"""The node's trainer: site policy, privacy budget, DP-SGD training, local ledger.

One `NodeTrainer` lives as long as the node. It holds the local data split, one model and
one Opacus DP-SGD engine per model configuration, and the ledger. For every train request
it checks the request against the site policy and the remaining budget **before** training,
trains, records the round's `(noise_multiplier, sample_rate, steps)` in the ledger **before**
replying, and reports the epsilon its recorded history gives under the named accountant.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from client_node.ledger import Ledger
from client_node.policy import PlannedSpend, PolicyRefusedError, RequestKind, SitePolicy
from client_node.settings import NodeSettings
from client_node.trainer.dp_sgd import DPTrainer
from client_node.trainer.evaluation import evaluate
from lepton_fl.config import AccountantName, FederationSpec
from lepton_fl.datasets import LocalSplit, TabularSplit
from lepton_fl.models import ModelSpec, build_model, get_weights, model_spec, set_weights
from lepton_fl.privacy import (
    AccountantStep,
    PrivacyAccountingError,
    calibrate_noise_multiplier,
    epsilon_spent,
)
from lepton_fl.wire import (
    Envelope,
    EvalMetrics,
    EvaluateReply,
    PrivacyCharge,
    RoundInstruction,
    TrainReply,
)


class RequestRefusedError(Exception):
    """A request the site policy or budget does not allow; the reason goes back to the run."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class _EngineKey:
    model: ModelSpec
    batch_size: int
    learning_rate: float
    max_grad_norm: float
    seed: int


class NodeTrainer:
    """Handles train and evaluate requests for one node and one local dataset."""

    def __init__(
        self,
        *,
        settings: NodeSettings,
        split: LocalSplit | TabularSplit,
        ledger: Ledger,
        device: torch.device,
        data_error: str | None = None,
    ) -> None:
        self.settings = settings
        # Why the node's data cannot be used (a connector's message), or None: while set, the
        # trainer stays up and refuses every train, evaluate and secure-aggregation request.
        self.data_error = data_error
        self.split: LocalSplit = split.local() if isinstance(split, TabularSplit) else split
        self.ledger = ledger
        self.device = device
        self.policy = SitePolicy(settings.privacy, node_task=settings.data.task)
        self._lock = threading.Lock()
        self._engines: dict[_EngineKey, tuple[DPTrainer, list[np.ndarray]]] = {}
        self._noise: dict[tuple[int, str], float] = {}
        self._replies: dict[tuple[int, int], TrainReply] = {}
        self._secure_keys: set[tuple[int, int]] = set()  # replies trained for SecAgg+

    # -- requests -------------------------------------------------------------------------

    def train(
        self, envelope: Envelope, instruction: RoundInstruction, *, secure: bool = False
    ) -> TrainReply:
        """One DP-SGD round, or a refusal with a reason. Never trains twice per round.

        ``secure``: the round came through secure aggregation (only the SecAgg+ layer
        says so); a plain request is refused while the site requires secure aggregation.
        """
        with self._lock:
            key = (envelope.run_id, instruction.round)
            if key in self._replies:  # a redelivered message: same answer, no new charge
                if key in self._secure_keys and not secure:  # never unmask a secure update
                    return TrainReply(
                        status="refused",
                        code="already_trained",
                        reason=f"Round {instruction.round} of run {envelope.run_id} was trained "
                        "inside secure aggregation; its update leaves this node only masked, "
                        "never in answer to a plain train request.",
                    )
                return self._replies[key]
            started = time.perf_counter()
            try:
                reply = self._train(envelope, instruction, "secure" if secure else "plain")
            except RequestRefusedError as refusal:
                return TrainReply(status="refused", code=refusal.code, reason=refusal.reason)
            reply = dataclasses.replace(reply, node_seconds=time.perf_counter() - started)
            self._replies = {k: v for k, v in self._replies.items() if k[0] == envelope.run_id}
            self._replies[key] = reply
            self._secure_keys = {k for k in self._secure_keys if k in self._replies}
            if secure:
                self._secure_keys.add(key)
            return reply

    def evaluate(self, envelope: Envelope, instruction: RoundInstruction) -> EvaluateReply:
        """Evaluate the given model on this node's held-out split."""
        with self._lock:
            try:
                self._check_policy(instruction.federation, "evaluate")
                self._check_data()
                engine, initial = self._engine(instruction.federation)
            except RequestRefusedError as refusal:
                return EvaluateReply(status="refused", code=refusal.code, reason=refusal.reason)
            set_weights(engine.model, instruction.weights or initial)
            privacy = instruction.federation.privacy
            return EvaluateReply(
                status="ok",
                evaluation=self._evaluate(engine),
                epsilon=self.epsilon(delta=privacy.delta, accountant=privacy.accountant),
                epsilon_budget=self.settings.privacy.epsilon_budget,
            )

    def epsilon(self, *, delta: float, accountant: str) -> float:
        """Epsilon of this dataset's whole recorded history."""
        history = self.ledger.history(self.settings.dataset_id)
        return epsilon_spent(history, delta=delta, accountant=_accountant(accountant))

    # -- the round ------------------------------------------------------------------------

    def admit(
        self, envelope: Envelope, instruction: RoundInstruction, *, secure: bool = True
    ) -> int:
        """Check a run's round against the site policy and budget without training.

        Returns the node's training-set size for the federation (its FedAvg weight); raises
        :class:`RequestRefusedError` with the reason otherwise. Secure aggregation calls this
        before a node joins a session, so that a node that would refuse does not join.
        """
        with self._lock:
            engine, *_ = self._plan(envelope, instruction, "secure" if secure else "plain")
            return engine.num_examples

    def model_shapes(self, fed: FederationSpec) -> list[tuple[int, ...]]:
        """Shapes of the exchanged tensors (the trainable parameters) of the federation's model
        at this node."""
        with self._lock:
            self._check_data()
            _, initial = self._engine(fed)
            return [tuple(w.shape) for w in initial]

    def _plan(
        self, envelope: Envelope, instruction: RoundInstruction, kind: RequestKind
    ) -> tuple[DPTrainer, float, list[AccountantStep], AccountantName]:
        """Policy, round and budget checks for a round: (engine, sigma, history, accountant)."""
        fed = instruction.federation
        self._check_policy(fed, kind)
        self._check_data()
        if not 1 <= instruction.round <= fed.rounds:
            raise RequestRefusedError(
                "bad_round", f"Round {instruction.round} is outside the run's 1..{fed.rounds}."
            )
        dataset_id = self.settings.dataset_id
        run_id = str(envelope.run_id)
        if self.ledger.entry_for(dataset_id, run_id, instruction.round) is not None:
            raise RequestRefusedError(
                "already_trained",
                f"This node already trained round {instruction.round} of run {run_id} and "
                "recorded its privacy cost; it will not train (and spend budget) twice.",
            )
        engine, _ = self._engine(fed)
        privacy = fed.privacy
        accountant = _accountant(privacy.accountant)
        steps = engine.steps_per_epoch() * fed.training.local_epochs
        sigma = self._noise_for_run(envelope.run_id, fed, steps_per_round=steps)
        planned = AccountantStep(
            noise_multiplier=sigma, sample_rate=engine.sample_rate, steps=steps
        )
        entries = self.ledger.entries(dataset_id)
        remaining = fed.rounds - instruction.round + 1
        try:  # the site's floor: noise, this federation's epsilon cap, the lifetime budget
            self.policy.check_spend(
                fed, PlannedSpend(planned, remaining), entries, accountant=accountant
            )
        except PolicyRefusedError as refusal:
            raise RequestRefusedError(refusal.code, refusal.reason) from refusal
        return engine, sigma, [e.step for e in entries], accountant

    def _train(
        self, envelope: Envelope, instruction: RoundInstruction, kind: RequestKind
    ) -> TrainReply:
        fed = instruction.federation
        privacy = fed.privacy
        dataset_id = self.settings.dataset_id
        run_id = str(envelope.run_id)
        engine, sigma, history, accountant = self._plan(envelope, instruction, kind)
        _, initial = self._engine(fed)
        try:
            set_weights(engine.model, instruction.weights or initial)
        except ValueError as err:
            raise RequestRefusedError(
                "model_mismatch", f"The model sent does not fit this node's model: {err}"
            ) from err
        before = self._evaluate(engine)  # the model as received (round 1: the seed init)

        result = engine.train(epochs=fed.training.local_epochs, noise_multiplier=sigma)
        taken = AccountantStep(
            noise_multiplier=sigma, sample_rate=result.sample_rate, steps=result.steps
        )
        epsilon = epsilon_spent([*history, taken], delta=privacy.delta, accountant=accountant)
        self.ledger.record(  # recorded before the reply leaves the node
            dataset_id=dataset_id,
            run_id=run_id,
            round=instruction.round,
            step=taken,
            accountant=accountant,
            delta=privacy.delta,
            epsilon_after=epsilon,
            num_examples=result.num_examples,
            federation=fed.name,
        )
        return TrainReply(
            status="ok",
            weights=get_weights(engine.model),
            num_examples=result.num_examples,
            train_loss=result.train_loss,
            train_seconds=result.seconds,
            evaluation=before,
            charge=PrivacyCharge(
                noise_multiplier=sigma,
                sample_rate=result.sample_rate,
                steps=result.steps,
                delta=privacy.delta,
                accountant=accountant,
                epsilon=epsilon,
                epsilon_budget=self.settings.privacy.epsilon_budget,
            ),
        )

    def _check_policy(self, fed: FederationSpec, kind: RequestKind) -> None:
        """The site policy's checks of the federation spec and of how the request came."""
        try:
            self.policy.check_request(fed, kind=kind)
        except PolicyRefusedError as refusal:
            raise RequestRefusedError(refusal.code, refusal.reason) from refusal

    def _check_data(self) -> None:
        if self.data_error is not None:
            raise RequestRefusedError(
                "data_invalid",
                f"Node {self.settings.node.name!r} refuses: its local data cannot be used. "
                f"{self.data_error}",
            )

    def _noise_for_run(self, run_id: int, fed: FederationSpec, *, steps_per_round: int) -> float:
        """Calibrate once per run: sigma such that all planned rounds meet the run's target.

        The site's lifetime budget is enforced per round by `check_round`, not by raising
        sigma: a node that can no longer afford the noise level the federation agreed on
        refuses (with the numbers), rather than quietly adding more noise to everyone's
        aggregate. The result depends only on the spec and the sampling rate, so a
        restarted trainer computes the same sigma for the same run.
        """
        key = (run_id, fed.digest())
        if key not in self._noise:
            engine, _ = self._engine(fed)
            try:
                self._noise[key] = calibrate_noise_multiplier(
                    sample_rate=engine.sample_rate,
                    steps=steps_per_round * fed.rounds,
                    target_epsilon=fed.privacy.target_epsilon,
                    delta=fed.privacy.delta,
                    accountant=_accountant(fed.privacy.accountant),
                )
            except PrivacyAccountingError as err:
                raise RequestRefusedError("calibration_failed", str(err)) from err
        return self._noise[key]

    def _engine(self, fed: FederationSpec) -> tuple[DPTrainer, list[np.ndarray]]:
        """The DP engine for this model configuration, built once and reused every round."""
        spec = model_spec(fed.model)
        key = _EngineKey(
            model=spec,
            batch_size=fed.training.batch_size,
            learning_rate=fed.training.learning_rate,
            max_grad_norm=fed.privacy.max_grad_norm,
            seed=fed.seed,
        )
        if key not in self._engines:
            train = self.split.train
            model = build_model(
                spec,
                input_shape=self.split.input_shape,
                num_classes=self.split.num_classes,
                seed=fed.seed,
            )
            initial = get_weights(model)
            engine = DPTrainer(
                model=model,
                inputs=train.inputs,
                labels=train.labels,
                batch_size=min(fed.training.batch_size, len(train)),
                learning_rate=fed.training.learning_rate,
                max_grad_norm=fed.privacy.max_grad_norm,
                device=self.device,
                seed=fed.seed,
            )
            self._engines[key] = (engine, initial)
        return self._engines[key]

    def _evaluate(self, engine: DPTrainer) -> EvalMetrics:
        test = self.split.test
        result = evaluate(engine.model, test.inputs, test.labels, device=self.device)
        return EvalMetrics(
            num_examples=result.num_examples,
            loss=result.loss,
            accuracy=result.accuracy,
            roc_auc=result.roc_auc,
            precision=result.precision,
            recall=result.recall,
            f1=result.f1,
            confusion=result.confusion,
        )


def _accountant(name: str) -> AccountantName:
    if name == "rdp":
        return "rdp"
    if name == "prv":
        return "prv"
    raise RequestRefusedError("unknown_accountant", f"Accountant {name!r} is not 'rdp' or 'prv'.")
