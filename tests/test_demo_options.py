"""What `lepton demo`'s options give each sector's federation."""

from __future__ import annotations

from lepton.demo import DemoOptions, demo_federation
from lepton.sectors import DEMO_ROUNDS, SECTORS


def test_each_sector_runs_its_tuned_rounds_unless_rounds_names_a_number() -> None:
    factory, hospital = SECTORS["factory"], SECTORS["hospital"]

    assert demo_federation(factory, DemoOptions()).rounds == factory.rounds == 20
    assert demo_federation(hospital, DemoOptions()).rounds == hospital.rounds == DEMO_ROUNDS
    for sector in (factory, hospital):
        assert demo_federation(sector, DemoOptions(rounds=3)).rounds == 3


def test_the_demo_federation_keeps_the_sectors_model_training_and_privacy() -> None:
    factory = SECTORS["factory"]

    fed = demo_federation(factory, DemoOptions(target_epsilon=2.0))

    assert fed.model == factory.model
    assert fed.training == factory.training
    assert fed.privacy.target_epsilon == 2.0
    assert fed.secure_aggregation.enabled
