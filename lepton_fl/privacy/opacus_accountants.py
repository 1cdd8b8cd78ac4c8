"""Opacus's RDP and PRV accountants, loaded from the installed ``opacus`` without torch.

Every epsilon this product prints is computed by Opacus's own accounting code. That code
(``opacus/accountants/rdp.py``, ``prv.py`` and ``analysis/``) needs only numpy and scipy, but
importing it the normal way runs ``opacus/__init__.py`` (which imports torch) and
``opacus/accountants/accountant.py``, whose base class imports ``opacus.optimizers`` (torch
again) for the type of one optimizer hook that accounting never calls. The coordinator never
trains, and its image carries no torch (issue 13).

So this module executes Opacus's own accountant files, unmodified, from the installed package,
as the submodules of a private package (:data:`PACKAGE`), in which the base-class module
``accountant`` is :class:`IAccountant` below: Opacus's base class without the optimizer hook.
Nothing named ``opacus`` is registered, so a process that also imports Opacus normally (a
node's trainer) gets the real package, untouched. The files are those of the installed
distribution (one source of truth with a node's DP-SGD), and the Opacus version is pinned
(:data:`OPACUS_SERIES`): any other version is refused with a message, and
``tests/test_opacus_accountants.py`` checks that these classes give exactly the epsilons of
``opacus.accountants`` over a spread of histories, and that no torch is imported.

Proposed upstream: make ``opacus.accountants`` importable without torch (import
``DPOptimizer`` only for type checking in ``accountant.py``, and keep ``opacus/__init__`` from
importing the training stack for accountant users).
"""

from __future__ import annotations

import abc
import functools
import importlib
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

__all__ = [
    "OPACUS_SERIES",
    "PACKAGE",
    "IAccountant",
    "OpacusAccountants",
    "OpacusUnavailableError",
    "opacus_accountants",
]

PACKAGE = "_lepton_opacus_accountants"
"""The private package name under which Opacus's ``accountants`` files are executed."""

OPACUS_SERIES = "1.6."
"""The Opacus release series whose accountant files this loader was checked against."""


class OpacusUnavailableError(ImportError):
    """Opacus is missing, or not the version these accountants were checked against."""


class IAccountant(abc.ABC):  # noqa: B024 - Opacus's own base is abstract in the same way
    """Opacus's ``IAccountant`` as the accountants use it: the ``history`` list.

    Opacus's base class (``opacus/accountants/accountant.py``) also offers an optimizer hook
    and ``state_dict``; accounting uses neither, and the hook's type is what imports torch.
    """

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []


class OpacusAccountants:
    """The loaded modules: ``rdp_analysis`` (``compute_rdp``, ``get_privacy_spent``) and the
    ``RDPAccountant`` and ``PRVAccountant`` classes."""

    def __init__(self, package: str) -> None:
        self.rdp_analysis: Any = importlib.import_module(f"{package}.analysis.rdp")
        self.RDPAccountant: Any = importlib.import_module(f"{package}.rdp").RDPAccountant
        self.PRVAccountant: Any = importlib.import_module(f"{package}.prv").PRVAccountant


def _accountants_dir() -> Path:
    try:
        version = importlib.metadata.version("opacus")
    except importlib.metadata.PackageNotFoundError:
        raise OpacusUnavailableError(
            "Privacy accounting needs the opacus package (its accountants compute every "
            "epsilon); install the project's dependencies (make setup), or on a coordinator "
            "without torch `pip install --no-deps 'opacus>=1.6,<1.7'`."
        ) from None
    if not version.startswith(OPACUS_SERIES):
        raise OpacusUnavailableError(
            f"opacus {version} is installed, but the accountants are loaded and checked for "
            f"opacus {OPACUS_SERIES}x only (lepton_fl/privacy/opacus_accountants.py); install "
            f"opacus {OPACUS_SERIES}x"
        )
    spec = importlib.util.find_spec("opacus")  # finds the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise OpacusUnavailableError("the opacus distribution is installed but not importable")
    folder = Path(next(iter(spec.submodule_search_locations))) / "accountants"
    for needed in ("rdp.py", "prv.py", "analysis/rdp.py", "analysis/prv/__init__.py"):
        if not (folder / needed).is_file():
            raise OpacusUnavailableError(f"opacus {version} has no accountants/{needed}")
    return folder


@functools.cache
def opacus_accountants() -> OpacusAccountants:
    """Load (once per process) Opacus's accountant files into :data:`PACKAGE`.

    Raises :class:`OpacusUnavailableError` when Opacus is missing or not of the checked
    series.
    """
    folder = _accountants_dir()
    package = types.ModuleType(PACKAGE, "Opacus's accountants, loaded without torch.")
    package.__path__ = [str(folder)]
    package.__package__ = PACKAGE
    base = types.ModuleType(f"{PACKAGE}.accountant")
    base.IAccountant = IAccountant  # type: ignore[attr-defined]
    sys.modules[PACKAGE] = package
    sys.modules[base.__name__] = base
    try:
        return OpacusAccountants(PACKAGE)
    except BaseException:
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]
        raise
