"""Frozen specs shared by the coordinator and the nodes.

A `FederationSpec` is what an admin defines once (task, model, privacy policy, rounds);
a `RunSpec` is one execution of it on the SuperLink (which Flower nodes take part, where the
run journal goes). Both are validated on construction and serialised as canonical JSON, so
the coordinator and every node agree byte for byte on what was asked and can hash it.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lepton_fl.models.catalog import MODELS, ModelName, ModelOption

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

AccountantName = Literal["rdp", "prv"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_slug(value: str, what: str) -> str:
    if not _SLUG.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-63 characters of lower-case letters, digits, "
            "'-' or '_', starting with a letter or digit."
        )
    return value


def _is_none(value: object) -> bool:
    return value is None


def _is_false(value: object) -> bool:
    return value is False


class PrivacySpec(_Frozen):
    """Sample-level DP-SGD parameters every node of the federation applies.

    ``target_epsilon`` covers the whole run at each node: its training rounds **and** its
    scheduled evaluation (the final model's, after the last round), composed by the
    federation's accountant. ``evaluation_epsilon`` is the part reserved for evaluation
    (``lepton_fl.privacy.evaluation``: training is calibrated to ``target_epsilon -
    evaluation_epsilon``, the evaluation's noise to fill the rest); unset means
    ``DEFAULT_EVALUATION_SHARE`` (a tenth) of ``target_epsilon`` and is left out of the
    canonical JSON, so specs written before it existed keep their digest; ``0`` schedules
    no evaluation.
    """

    target_epsilon: Annotated[float, Field(gt=0, le=100)] = Field(
        description="Epsilon the whole planned run (training and its scheduled evaluation) "
        "is calibrated to, at each node."
    )
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    accountant: AccountantName = "rdp"
    evaluation_epsilon: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Part of target_epsilon reserved for the run's scheduled evaluation (a "
        "noised release of each node's confusion counts); unset: a tenth of target_epsilon; "
        "0: no evaluation.",
    )
    membership_audit: bool = Field(
        default=False,
        exclude_if=_is_false,
        description="Each node also releases, with its scheduled evaluation and at no extra "
        "epsilon, noised loss histograms of its training and held-out rows, from which the "
        "auditor's report computes a membership-inference AUC; the evaluation's counts then "
        "carry sqrt(2) times the noise. Needs a scheduled evaluation.",
    )

    @model_validator(mode="after")
    def _evaluation_fits(self) -> PrivacySpec:
        if self.evaluation_epsilon is not None and self.evaluation_epsilon >= self.target_epsilon:
            raise ValueError(
                f"privacy.evaluation_epsilon = {self.evaluation_epsilon:g} must be below "
                f"target_epsilon = {self.target_epsilon:g} (it is the part of the run's "
                "epsilon reserved for evaluation); lower it, or set it to 0 for no evaluation"
            )
        if self.membership_audit and self.evaluation_epsilon == 0:
            raise ValueError(
                "privacy.membership_audit rides on the run's scheduled evaluation, and "
                "privacy.evaluation_epsilon = 0 schedules none; give evaluation a share of "
                "target_epsilon, or turn the audit off"
            )
        return self


class TrainingSpec(_Frozen):
    """Local optimisation at each node, per round."""

    local_epochs: Annotated[int, Field(ge=1, le=100)] = 1
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 32
    learning_rate: Annotated[float, Field(gt=0, le=10)] = 0.05


# Every model's facts (data it takes, tokenizer, options, layers) live in one entry per model in
# lepton_fl.models.catalog, which imports no torch.
TEXT_MODEL_LAYERS = {n: m.transformer_layers for n, m in MODELS.items() if m.transformer_layers}

_OPTION_DEFAULTS: dict[ModelOption, object] = {
    "hidden": (32,),
    "dropout": 0.0,
    "channels": None,
    "activation": None,
    "trainable_layers": None,
}


class ModelConfig(_Frozen):
    """Which registered model to build (see ``lepton_fl.models``), and its size.

    ``tabular_mlp``: an MLP of widths ``hidden``; ``hidden = ()`` is (multinomial) logistic
    regression. ``cnn``: convolution blocks of ``channels`` (default ``(16, 32)``, GroupNorm)
    then a head of widths ``hidden``, ReLU or (``activation = "tanh"``) tempered. ``minilm`` (the
    packaged all-MiniLM-L6-v2) and ``tiny_bert`` (a 2-layer BERT with a locally trained
    tokenizer): ``trainable_layers`` top transformer layers plus the head are trained and
    exchanged, the rest stays frozen as shipped (``None``: every layer is trained).
    ``minilm_embeddings``: frozen MiniLM sentence embeddings and a trained head of widths
    ``hidden`` (``()``: a linear head). ``mobilenet_features``: frozen ImageNet MobileNetV2
    image features and a trained head of widths ``hidden``. ``dropout`` is the dropout of the
    MLP heads. Options left unset are omitted from the canonical JSON, so specs written before
    they existed keep their digest; an option the model does not have is refused
    (``lepton_fl.models.catalog`` lists each model's options).
    """

    name: ModelName = "tabular_mlp"
    hidden: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        default=(32,),
        max_length=16,
        description="Hidden widths of the MLP (head); [] is a linear model (logistic regression).",
    )
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    channels: tuple[Annotated[int, Field(ge=1, le=1024)], ...] | None = Field(
        default=None,
        min_length=1,
        max_length=8,
        exclude_if=_is_none,
        description="cnn only: output channels of each convolution block (default (16, 32)).",
    )
    activation: Literal["relu", "tanh"] | None = Field(
        default=None,
        exclude_if=_is_none,
        description=(
            "cnn only: relu (default: ReLU, max pooling) or tanh (tempered: tanh, average "
            "pooling, a head on each channel's global mean and maximum), which suits DP-SGD."
        ),
    )
    trainable_layers: Annotated[int, Field(ge=0, le=64)] | None = Field(
        default=None,
        exclude_if=_is_none,
        description=(
            "minilm and tiny_bert only: how many of the top transformer layers are trained "
            "(with the classification head); the others stay frozen. Unset: all are trained."
        ),
    )

    @model_validator(mode="after")
    def _options_fit_the_model(self) -> ModelConfig:
        info = MODELS[self.name]
        for option, default in _OPTION_DEFAULTS.items():
            if option not in info.options and getattr(self, option) != default:
                takers = sorted(n for n, m in MODELS.items() if option in m.options)
                which = f"the {takers[0]!r} model" if len(takers) == 1 else f"{takers}"
                raise ValueError(
                    f"model.{option} applies to {which} only, not {self.name!r}; remove it."
                )
        layers = info.transformer_layers
        if self.trainable_layers is not None and self.trainable_layers > layers:
            raise ValueError(
                f"model.trainable_layers = {self.trainable_layers} but {self.name!r} has "
                f"only {layers} transformer layers; use 0 to {layers}."
            )
        return self


class SecureAggregationSpec(_Frozen):
    """SecAgg+ between the nodes of a run: the coordinator learns only each round's sum.

    ``threshold`` (t, Shamir) and ``neighbours`` (k, the masking graph's degree) default to
    safe values chosen per round from the number of participants (a strict majority of each
    node's k + 1 share holders; the complete graph up to 32 nodes); see
    docs/secagg-threat-model.md. ``session_rounds``: rounds that share one key setup (None:
    the whole run); every round still uses its own mask keys. ``dropout_recovery``: True,
    two message waves per round and a round survives dropouts; False, one-wave rounds (pair
    masks only, no share is ever revealed) in which a dropout voids the round.
    """

    enabled: bool = True
    threshold: Annotated[int, Field(ge=2)] | None = None
    neighbours: Annotated[int, Field(ge=2)] | None = None
    session_rounds: Annotated[int, Field(ge=1, le=1000)] | None = None
    modulus_bits: Annotated[int, Field(ge=24, le=64)] = 32
    dropout_recovery: bool = Field(
        default=True,
        description=(
            "True: SecAgg+ with an unmask wave every round, and a round survives dropouts. "
            "False: one-wave rounds; nodes mask with pair masks only and never reveal a share; "
            "a round that an active node drops out of aggregates nothing (the nodes that sent "
            "their masked input are still charged) and the run goes on without that node."
        ),
    )
    update_headroom: Annotated[float, Field(ge=1, le=1000)] = Field(
        default=2.0,
        description=(
            "Fixed-point range of a node's update, as a multiple of the DP bound "
            "learning_rate x max_grad_norm x local steps; values beyond it are clipped and "
            "counted, never wrapped."
        ),
    )


class FederationSpec(_Frozen):
    """A federation: the task its members train on and the rules every run follows."""

    name: str
    task: str = Field(description="Dataset task id known to every member, e.g. heart_disease.")
    model: ModelConfig = ModelConfig()
    rounds: Annotated[int, Field(ge=1, le=1000)] = 5
    min_participants: Annotated[int, Field(ge=1)] = 3
    privacy: PrivacySpec
    training: TrainingSpec = TrainingSpec()
    secure_aggregation: SecureAggregationSpec = SecureAggregationSpec()
    seed: int = 0

    @field_validator("name", "task")
    @classmethod
    def _slugs(cls, value: str) -> str:
        return _check_slug(value, "name")

    @model_validator(mode="after")
    def _secure_aggregation_needs_three(self) -> FederationSpec:
        if self.secure_aggregation.enabled and self.min_participants < 3:
            raise ValueError(
                f"min_participants={self.min_participants} with secure aggregation on: a round "
                "needs at least 3 participants (with two, the sum reveals the other's update). "
                "Set min_participants >= 3, or turn secure_aggregation.enabled off."
            )
        return self

    def canonical_json(self) -> str:
        """Deterministic JSON (fields in declaration order): what is hashed and sent."""
        return self.model_dump_json(round_trip=True)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON, hex."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


_OPENSSH_EC_KEY = re.compile(r"ecdsa-sha2-nistp(256|384|521) [A-Za-z0-9+/]+={0,2}")


class Member(_Frozen):
    """A node taking part in a run: its enrolled name, the Flower node id the coordinator
    obtained when it registered the node's key (never self-asserted), and that enrolled
    OpenSSH EC public key (``ecdsa-sha2-nistp384 AAAA...``, without comment): the key the
    node signs its secure-aggregation key advertisements with."""

    name: str
    node_id: Annotated[int, Field(ge=0)]
    public_key: str | None = None

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        return _check_slug(value, "node name")

    @field_validator("public_key")
    @classmethod
    def _openssh_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        key = " ".join(value.split()[:2])  # drop the comment
        if not _OPENSSH_EC_KEY.fullmatch(key):
            raise ValueError(
                "a member's public key must be an OpenSSH EC public key line "
                "('ecdsa-sha2-nistp256/384/521 AAAA...')"
            )
        return key


class RunSpec(_Frozen):
    """One run of a federation on the SuperLink."""

    federation: FederationSpec
    members: tuple[Member, ...]
    journal_path: str = Field(description="Where the ServerApp appends the run journal.")
    round_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    admin_run_id: str | None = Field(default=None, description="The admin service's run id.")
    authorization: str | None = Field(
        default=None,
        description="The admin service's signed run authorization "
        "(lepton_fl.crypto.run_authorization); every node refuses a run without a valid one.",
    )

    @model_validator(mode="after")
    def _members_unique(self) -> RunSpec:
        names = [m.name for m in self.members]
        ids = [m.node_id for m in self.members]
        if len(set(names)) != len(names) or len(set(ids)) != len(ids):
            raise ValueError("Each member must appear once, by name and by node id.")
        if len(self.members) < self.federation.min_participants:
            raise ValueError(
                f"The run has {len(self.members)} members but the federation needs at least "
                f"{self.federation.min_participants} participants per round."
            )
        return self


class SpecError(ValueError):
    """A federation spec file that is missing or invalid; the message names the field."""

    def __init__(self, message: str, *, code: str = "invalid_federation_spec") -> None:
        super().__init__(message)
        self.code = code


def load_federation_spec(path: Path) -> FederationSpec:
    """Read a federation spec from TOML; every problem is named with its field."""
    if not path.is_file():
        raise SpecError(f"The federation spec {path} does not exist.", code="missing_spec")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise SpecError(f"The federation spec {path} is not valid TOML: {err}.") from err
    try:
        return FederationSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(
            f"The federation spec {path} has problems: {describe_validation_error(err)}."
        ) from err


def describe_validation_error(err: ValidationError) -> str:
    """Every problem pydantic found, each as `[section.field] message`, in one line."""
    return "; ".join(f"[{'.'.join(str(p) for p in e['loc'])}] {e['msg']}" for e in err.errors())
