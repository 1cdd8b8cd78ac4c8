"""Opacus's accountants loaded without torch (lepton_fl/privacy/opacus_accountants.py).

The coordinator's image carries no torch, so it runs Opacus's accountant files through a
private package. These tests pin that the loaded code gives exactly Opacus's epsilons, imports
no torch, leaves the real ``opacus`` package alone, and refuses an Opacus it was not checked
against.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap

import pytest

from lepton_fl.privacy import opacus_accountants as loader
from lepton_fl.privacy.accounting import AccountantStep, PrivacyAccountingError, epsilon_spent

HISTORIES: list[list[tuple[float, float, int]]] = [
    [(1.1, 0.01, 1000)],
    [(0.8, 0.05, 40), (2.0, 0.02, 300)],
    [(1.0, 1.0, 1)],  # an evaluation release: the plain Gaussian mechanism
    [(4.0, 0.1, 5), (0.6, 0.003, 20), (1.3, 0.25, 7)],
]
DELTAS = (1e-5, 1e-3)


@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("delta", DELTAS)
def test_loaded_accountants_give_exactly_opacus_epsilons(
    history: list[tuple[float, float, int]], delta: float
) -> None:
    from opacus.accountants import PRVAccountant, RDPAccountant

    loaded = loader.opacus_accountants()
    for ours, theirs in (
        (loaded.RDPAccountant(), RDPAccountant()),
        (loaded.PRVAccountant(), PRVAccountant()),
    ):
        ours.history = list(history)
        theirs.history = list(history)
        assert ours.get_epsilon(delta=delta) == theirs.get_epsilon(delta=delta)
    # ... and so does the ledger's own entry point (merged history, cached one-step curves).
    steps = [AccountantStep(sigma, rate, n) for sigma, rate, n in history]
    reference = RDPAccountant()
    reference.history = list(history)
    assert epsilon_spent(steps, delta=delta, accountant="rdp") == pytest.approx(
        max(0.0, reference.get_epsilon(delta=delta)), rel=1e-12
    )


def test_the_loaded_classes_are_not_the_real_package() -> None:
    import opacus.accountants

    loaded = loader.opacus_accountants()
    assert loaded.RDPAccountant is not opacus.accountants.RDPAccountant
    assert loaded.RDPAccountant.__module__ == f"{loader.PACKAGE}.rdp"
    assert loaded.RDPAccountant.DEFAULT_ALPHAS == opacus.accountants.RDPAccountant.DEFAULT_ALPHAS
    assert inspect.getfile(loaded.PRVAccountant) == inspect.getfile(
        opacus.accountants.PRVAccountant
    )
    assert "opacus" not in {name.split(".")[0] for name in sys.modules if name.startswith("_")}


def test_opacus_base_class_still_only_keeps_a_history() -> None:
    """The stand-in base replaces Opacus's IAccountant; fail loudly if that class changes what
    the accountants inherit (its __init__) or grows an abstract method."""
    from opacus.accountants.accountant import IAccountant

    body = inspect.getsource(IAccountant.__init__)
    assert "self.history = []" in body
    assert body.count("\n") <= 3, body
    assert IAccountant.__abstractmethods__ == {
        "__init__",
        "step",
        "get_epsilon",
        "__len__",
        "mechanism",
    }


def test_epsilon_is_computed_without_torch_and_without_the_opacus_package() -> None:
    script = textwrap.dedent(
        """
        import json, sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "transformers"}:
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Blocker())
        from lepton_fl.privacy.accounting import AccountantStep, epsilon_spent

        history = [AccountantStep(1.1, 0.01, 1000), AccountantStep(2.0, 0.02, 300)]
        print(json.dumps({
            "rdp": epsilon_spent(history, delta=1e-5, accountant="rdp"),
            "prv": epsilon_spent(history, delta=1e-5, accountant="prv"),
            "imported": sorted({m.split(".")[0] for m in sys.modules} & {"torch", "opacus"}),
        }))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported"] == []
    history = [AccountantStep(1.1, 0.01, 1000), AccountantStep(2.0, 0.02, 300)]
    for name in ("rdp", "prv"):
        assert result[name] == epsilon_spent(history, delta=1e-5, accountant=name)


def test_another_opacus_series_is_refused_with_a_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loader.importlib.metadata, "version", lambda name: "1.7.0")
    loader.opacus_accountants.cache_clear()
    try:
        with pytest.raises(loader.OpacusUnavailableError, match=r"opacus 1\.7\.0 is installed"):
            loader.opacus_accountants()
        from lepton_fl.privacy import accounting

        with pytest.raises(PrivacyAccountingError) as raised:
            accounting._opacus()
        assert raised.value.code == "accountant_unavailable"
    finally:
        loader.opacus_accountants.cache_clear()
