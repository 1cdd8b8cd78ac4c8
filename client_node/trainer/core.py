"""The node's trainer: data, models, DP-SGD training, behind the node's privacy gate.

One `NodeTrainer` lives as long as the node. It holds the local data split, one model and
one Opacus DP-SGD engine per model configuration, and the privacy gate
(`client_node/privacy_gate.py`), which owns the site policy, the ledger, the calibration and
the accountants. Every request must first carry the run's authorization, signed by the
coordinator's admin service with the key this node pinned (`authorize`); then the gate
admits or refuses it **before** any model is trained or evaluated, records its charge in the
ledger **before** the reply leaves, and builds what the reply may contain: for a round the
update, its example count and the charge (the training loss stays in the node's log); for
the one evaluation a federation schedules, noised confusion counts only.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from client_node.checkpoints import CheckpointRefusal, CheckpointStore
from client_node.ledger import Ledger
from client_node.policy import RequestKind
from client_node.privacy_gate import PrivacyGate, RequestRefusedError, RoundAdmission
from client_node.settings import NodeSettings
from client_node.trainer.dp_sgd import DPTrainer
from client_node.trainer.evaluation import evaluate, record_losses
from lepton_fl.config import FederationSpec
from lepton_fl.crypto.run_authorization import (
    RunAuthorization,
    RunAuthorizationError,
    authorization_digest,
    load_pinned_key,
    verify_run_authorization,
)
from lepton_fl.datasets import LocalSplit, TabularSplit
from lepton_fl.model_init import model_task_problem
from lepton_fl.models import ModelSpec, build_model, get_weights, model_spec, set_weights
from lepton_fl.privacy.membership import Counts, loss_histogram
from lepton_fl.secagg.fedavg import size_bucket
from lepton_fl.wire import Envelope, EvaluateReply, RoundInstruction, TrainReply

__all__ = ["NodeTrainer", "RequestRefusedError"]


@dataclass(frozen=True)
class _EngineKey:
    model: ModelSpec
    batch_size: int
    learning_rate: float
    max_grad_norm: float
    seed: int
    population: int  # the size its sampling rate is computed from (n, or n's size bucket)


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
        self.gate = PrivacyGate(settings=settings, ledger=ledger)
        self.policy = self.gate.policy
        self._lock = threading.Lock()
        self._engines: dict[_EngineKey, tuple[DPTrainer, list[np.ndarray]]] = {}
        self._replies: dict[tuple[int, int], TrainReply] = {}
        self._secure_keys: set[tuple[int, int]] = set()  # replies trained for SecAgg+
        self._pinned_key, self._pinned_key_error = _read_pinned_key(settings)
        self.checkpoints = CheckpointStore(settings.node.state_dir)

    # -- requests -------------------------------------------------------------------------

    def train(
        self, envelope: Envelope, instruction: RoundInstruction, *, secure: bool = False
    ) -> TrainReply:
        """One DP-SGD round, or a refusal with a reason. Never trains twice per round.

        ``secure``: the round came through secure aggregation (only the SecAgg+ layer
        says so); a plain request is refused while the site requires secure aggregation.
        """
        with self._lock:
            try:
                self._authorize(envelope, instruction)
            except RequestRefusedError as refusal:
                return TrainReply(status="refused", code=refusal.code, reason=refusal.reason)
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
        """The run's scheduled evaluation on this node's held-out split, released with DP
        noise and charged, or a refusal (ad hoc, repeated, or over a limit)."""
        with self._lock:
            try:
                self._authorize(envelope, instruction)
                fed = instruction.federation
                self.gate.check_request(fed, "evaluate")
                self._check_data()
                engine, initial = self._engine(fed)
                admission = self.gate.admit_evaluation(
                    run_id=str(envelope.run_id),
                    round=instruction.round,
                    fed=fed,
                    sample_rate=engine.sample_rate,
                    steps_per_round=self._steps_per_round(engine, fed),
                )
                self._load(engine, instruction.weights or initial)
                test = self.split.test
                exact = evaluate(engine.model, test.inputs, test.labels, device=self.device)
                audit = (
                    self._membership_histograms(engine.model)
                    if fed.privacy.membership_audit
                    else None
                )
                # charged before it leaves
                return self.gate.evaluation_reply(admission, exact, membership=audit)
            except RequestRefusedError as refusal:
                return EvaluateReply(status="refused", code=refusal.code, reason=refusal.reason)

    def _membership_histograms(self, model: nn.Module) -> tuple[Counts, Counts]:
        """Loss histograms of the final model on this node's training rows (members) and
        held-out rows (non-members), exact: the gate noises them before anything leaves."""
        train, test = self.split.train, self.split.test
        members = record_losses(model, train.inputs, train.labels, device=self.device)
        nonmembers = record_losses(model, test.inputs, test.labels, device=self.device)
        return loss_histogram(members), loss_histogram(nonmembers)

    def epsilon(self, *, delta: float, accountant: str) -> float:
        """Epsilon of this dataset's whole recorded history (training and evaluation)."""
        return self.gate.epsilon(delta=delta, accountant=accountant)

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
            self._authorize(envelope, instruction)
            engine, _ = self._plan(envelope, instruction, "secure" if secure else "plain")
            return engine.num_examples

    def authorize(self, envelope: Envelope, instruction: RoundInstruction) -> RunAuthorization:
        """Check the run's signed authorization for this message (see `_authorize`)."""
        with self._lock:
            return self._authorize(envelope, instruction)

    def _authorize(self, envelope: Envelope, instruction: RoundInstruction) -> RunAuthorization:
        """The run is one the admin service signed, for this spec, with this node as a member,
        and its admin run id is bound to this Flower run; raise :class:`RequestRefusedError`
        otherwise. Checked before anything else a request could cause."""
        if self._pinned_key is None:
            error = self._pinned_key_error
            assert error is not None
            raise RequestRefusedError(error.code, error.message)
        try:
            authorization = verify_run_authorization(
                instruction.authorization,
                self._pinned_key,
                federation_digest=instruction.federation.digest(),
                node_id=envelope.node_id,
            )
        except RunAuthorizationError as err:
            raise RequestRefusedError(err.code, err.message) from err
        assert instruction.authorization is not None  # verified above
        if authorization.audit_checkpoint is not None:
            try:
                self.checkpoints.observe(authorization.audit_checkpoint, self._pinned_key)
            except CheckpointRefusal as err:
                raise RequestRefusedError(err.code, err.message) from err
        flower_run = str(envelope.run_id)
        bound = self.gate.bind_run(
            authorization.admin_run_id, flower_run, authorization_digest(instruction.authorization)
        )
        if bound != flower_run:
            raise RequestRefusedError(
                "run_replayed",
                f"Run {authorization.admin_run_id} was authorized once and already runs here as "
                f"Flower run {bound}; this node refuses it under Flower run {flower_run} (a "
                "replay of its signed authorization). Start a new run through the admin "
                "service.",
            )
        return authorization

    def model_shapes(self, fed: FederationSpec) -> list[tuple[int, ...]]:
        """Shapes of the exchanged tensors (the trainable parameters) of the federation's model
        at this node."""
        with self._lock:
            self._check_data()
            _, initial = self._engine(fed)
            return [tuple(w.shape) for w in initial]

    def _plan(
        self, envelope: Envelope, instruction: RoundInstruction, kind: RequestKind
    ) -> tuple[DPTrainer, RoundAdmission]:
        """The gate's admission of a round, after the site policy's request checks and the
        data check: (engine, admission)."""
        fed = instruction.federation
        self.gate.check_request(fed, kind)
        self._check_data()
        engine, _ = self._engine(fed)
        admission = self.gate.admit_round(
            run_id=str(envelope.run_id),
            round=instruction.round,
            fed=fed,
            kind=kind,
            sample_rate=engine.sample_rate,
            steps_per_round=self._steps_per_round(engine, fed),
        )
        return engine, admission

    def _train(
        self, envelope: Envelope, instruction: RoundInstruction, kind: RequestKind
    ) -> TrainReply:
        fed = instruction.federation
        engine, admission = self._plan(envelope, instruction, kind)
        _, initial = self._engine(fed)
        self._load(engine, instruction.weights or initial)
        result = engine.train(
            epochs=fed.training.local_epochs, noise_multiplier=admission.noise_multiplier
        )
        return self.gate.train_reply(admission, result, get_weights(engine.model))

    @staticmethod
    def _steps_per_round(engine: DPTrainer, fed: FederationSpec) -> int:
        return engine.steps_per_epoch() * fed.training.local_epochs

    @staticmethod
    def _load(engine: DPTrainer, weights: list[np.ndarray]) -> None:
        try:
            set_weights(engine.model, weights)
        except ValueError as err:
            raise RequestRefusedError(
                "model_mismatch", f"The model sent does not fit this node's model: {err}"
            ) from err

    def _check_data(self) -> None:
        if self.data_error is not None:
            raise RequestRefusedError(
                "data_invalid",
                f"Node {self.settings.node.name!r} refuses: its local data cannot be used. "
                f"{self.data_error}",
            )

    def _engine(self, fed: FederationSpec) -> tuple[DPTrainer, list[np.ndarray]]:
        """The DP engine for this model configuration, built once and reused every round."""
        spec = model_spec(fed.model)
        train = self.split.train
        population = sampling_population(len(train), fed)
        key = _EngineKey(
            model=spec,
            batch_size=fed.training.batch_size,
            learning_rate=fed.training.learning_rate,
            max_grad_norm=fed.privacy.max_grad_norm,
            seed=fed.seed,
            population=population,
        )
        if key not in self._engines:
            # what the coordinator checks when a federation is created, checked again here: a
            # spec that bends it is refused before admission, never trained into a crash
            problem = model_task_problem(fed.model, fed.task)
            if problem is not None:
                raise RequestRefusedError(
                    "model_unavailable",
                    f"Node {self.settings.node.name!r} refuses the model: {problem[1]}",
                )
            try:
                model = build_model(
                    spec,
                    input_shape=self.split.input_shape,
                    num_classes=self.split.num_classes,
                    seed=fed.seed,
                )
            except ValueError as err:  # before admission: nothing is charged
                raise RequestRefusedError(
                    "model_unavailable",
                    f"Node {self.settings.node.name!r} cannot build the model "
                    f"{spec.name!r} for its data: {err}",
                ) from err
            initial = get_weights(model)
            engine = DPTrainer(
                model=model,
                inputs=train.inputs,
                labels=train.labels,
                batch_size=min(fed.training.batch_size, population),
                learning_rate=fed.training.learning_rate,
                max_grad_norm=fed.privacy.max_grad_norm,
                device=self.device,
                seed=fed.seed,
                population=population,
            )
            self._engines[key] = (engine, initial)
        return self._engines[key]


def sampling_population(num_examples: int, fed: FederationSpec) -> int:
    """The size a node's Poisson sampling rate is computed from: its exact training-set size
    in a plain federation (where the size leaves anyway, as the FedAvg weight), its size bucket
    under secure aggregation. There the round's charge ``(sigma, q, steps)``, which leaves in the
    clear and goes to the coordinator's ledger, is then a function of the public bucket only
    (``q = batch_size / bucket``), so it cannot give away the exact size that the masked vector
    hides."""
    if fed.secure_aggregation.enabled:
        return size_bucket(num_examples)
    return num_examples


def _read_pinned_key(settings: NodeSettings) -> tuple[str | None, RunAuthorizationError | None]:
    """The pinned coordinator public key (PEM), or why there is none usable."""
    section = settings.coordinator
    if section is None:
        return None, RunAuthorizationError(
            "run_no_pinned_key",
            f"Node {settings.node.name!r} has no pinned coordinator key, so it refuses every "
            'run: add [coordinator] public_key = "coordinator.pem" to node.toml with the '
            "coordinator's signing public key (from the enrollment answer or GET "
            "/api/v1/signing-key; check its fingerprint out of band), then restart the node.",
        )
    try:
        pem = section.public_key.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return None, RunAuthorizationError(
            "run_bad_pinned_key",
            f"Cannot read the pinned coordinator key {section.public_key} ({err}); every run is "
            "refused until [coordinator].public_key names a readable PEM file.",
        )
    try:
        load_pinned_key(pem)
    except RunAuthorizationError as err:
        return None, RunAuthorizationError(err.code, f"{section.public_key}: {err.message}")
    return pem, None
