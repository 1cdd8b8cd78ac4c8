"""Federation specs: validated on load, hashed deterministically."""

from __future__ import annotations

from pathlib import Path

import pytest

from lepton_fl.config import (
    FederationSpec,
    Member,
    PrivacySpec,
    RunSpec,
    SpecError,
    load_federation_spec,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "federation.example.toml"


def test_config_example_spec_loads() -> None:
    spec = load_federation_spec(EXAMPLE)
    assert spec.task == "heart_disease"
    assert spec.privacy.target_epsilon == 3.0


def test_config_digest_changes_with_any_field() -> None:
    base = FederationSpec(name="f", task="t", privacy=PrivacySpec(target_epsilon=1.0))
    looser = base.model_copy(update={"privacy": PrivacySpec(target_epsilon=1.5)})
    assert base.digest() == FederationSpec.model_validate_json(base.canonical_json()).digest()
    assert base.digest() != looser.digest()


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ('name = "f"\ntask = "t"\n', "[privacy]"),
        ('name = "F F"\ntask = "t"\n[privacy]\ntarget_epsilon = 1\n', "[name]"),
        ('name = "f"\ntask = "t"\n[privacy]\ntarget_epsilon = -1\n', "[privacy.target_epsilon]"),
        ('name = "f"\ntask = "t"\n[privacy]\ntarget_epsilon = 1\ndelta = 2\n', "[privacy.delta]"),
        ('name = "f"\ntask = "t"\nrounds = 0\n[privacy]\ntarget_epsilon = 1\n', "[rounds]"),
        ('name = "f"\ntask = "t"\nfoo = 1\n[privacy]\ntarget_epsilon = 1\n', "[foo]"),
        ("name = ", "not valid TOML"),
    ],
)
def test_config_bad_spec_names_the_field(tmp_path: Path, text: str, phrase: str) -> None:
    path = tmp_path / "fed.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_federation_spec(path)
    assert phrase in str(caught.value)


def test_config_run_needs_enough_distinct_members() -> None:
    spec = FederationSpec(name="f", task="t", privacy=PrivacySpec(target_epsilon=1.0))
    with pytest.raises(ValueError, match="at least 3"):
        RunSpec(federation=spec, members=(Member(name="a", node_id=1),), journal_path="j")
    with pytest.raises(ValueError, match="once"):
        RunSpec(
            federation=spec,
            members=(Member(name="a", node_id=1), Member(name="a", node_id=2)),
            journal_path="j",
        )
