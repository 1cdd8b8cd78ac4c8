"""The node's wall against coordinator-shipped code: only the name-only Lepton FAB passes.

The node's executor never loads FAB code at all; before it handles a task it checks the
bundle with `check_fab` (the one check both sides share, `lepton_fl.app_bundle`): nothing but
``pyproject.toml`` (plus Flower's ``.info/CONTENT`` manifest), naming exactly the node's
installed ClientApp. Nothing from the bundle is installed, imported or executed.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from lepton_fl.app_bundle import CLIENT_APP, bundle_problems

EXPECTED_CLIENTAPP = CLIENT_APP
"""The only ClientApp a Lepton FAB may name (the coordinator's ``fl/fab/pyproject.toml``)."""


@dataclass(frozen=True)
class FabVerdict:
    """Whether a bundle may be served; `reason` says why not (empty when accepted)."""

    accepted: bool
    reason: str = ""


def check_fab(content: bytes) -> FabVerdict:
    """Decide whether the FAB `content` (zip bytes) is the code-free Lepton bundle; every
    problem found is named in the reason, so the node's log shows the whole attempt."""
    problems = bundle_problems(content, components=("clientapp",))
    if not problems:
        return FabVerdict(accepted=True)
    why = "; and ".join(problems)
    return FabVerdict(accepted=False, reason=f"The node refused the run's Flower app: {why}.")


class FabChecker:
    """`check_fab` with its verdict cached per bundle (by our own SHA-256 of the bytes).

    The hash is computed here rather than taken from Flower's metadata, so a wrong hash in
    the task input cannot make a foreign bundle inherit an accepted verdict.
    """

    def __init__(self) -> None:
        self._verdicts: dict[str, FabVerdict] = {}
        self._lock = threading.Lock()

    def __call__(self, content: bytes) -> FabVerdict:
        """The verdict for a bundle, checking it only the first time it is seen."""
        digest = hashlib.sha256(content).hexdigest()
        with self._lock:
            cached = self._verdicts.get(digest)
        if cached is not None:
            return cached
        verdict = check_fab(content)
        with self._lock:
            self._verdicts[digest] = verdict
        return verdict
