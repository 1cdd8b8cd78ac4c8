"""Checking a Flower app bundle (FAB) without running any of it: one check, both sides.

A FAB is a zip whose ``pyproject.toml`` names the ServerApp and ClientApp modules to load
(``[tool.flwr.app.components]``) and may ship those modules beside it. Flower's own
executors install the bundle and import whatever it names, so a hand-made bundle
(``clientapp = "evil_client:app"`` plus ``evil_client.py``) would run its code. Our FAB
(`coordinator/fl/fab/pyproject.toml`) ships no code: it only names components that the
coordinator and every node have installed. Neither side ever imports or installs a bundle:
the coordinator's ServerApp process and the node's executor check it here and then run their
own installed code. Flower's FAB signatures (``--trusted-entities``) cannot help with a
self-hosted SuperLink: in flwr 1.42 a locally submitted FAB always has empty
``verifications``.

The check only reads the zip's directory and one small TOML file. A bundle that carries any
file besides ``pyproject.toml`` (and Flower's ``.info/CONTENT`` manifest), lists a file twice,
or names another component is refused with every problem named, so that whoever submitted it
learns why nothing ran.
"""

from __future__ import annotations

import io
import tomllib
import zipfile
from typing import Literal

Component = Literal["serverapp", "clientapp"]

SERVER_APP = "coordinator.fl.server_app:app"
CLIENT_APP = "client_node.relay:app"
EXPECTED: dict[Component, str] = {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}

ALLOWED_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
"""What `flwr build` puts in a code-free bundle: the project file and Flower's manifest."""

MAX_PYPROJECT_BYTES = 64 * 1024
"""Bound on the uncompressed ``pyproject.toml`` read, so a zip bomb cannot exhaust memory."""


class AppBundleError(ValueError):
    """A FAB that is not Lepton's installed app; the message names every problem."""

    code = "foreign_app"


def bundle_problems(content: bytes, *, components: tuple[Component, ...]) -> list[str]:
    """Every reason to refuse the bundle `content` (zip bytes); empty when it is ours."""
    problems: list[str] = []
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as bundle:
            names = bundle.namelist()
            if len(names) != len(set(names)):
                return ["the bundle lists the same file twice"]
            extra = sorted(set(names) - ALLOWED_FILES)
            if extra:
                shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
                problems.append(
                    f"the bundle ships files besides pyproject.toml ({shown}); "
                    "a Lepton FAB carries no code"
                )
            if "pyproject.toml" not in names:
                return [*problems, "the bundle has no pyproject.toml"]
            info = bundle.getinfo("pyproject.toml")
            if info.file_size > MAX_PYPROJECT_BYTES:
                return [*problems, f"its pyproject.toml is larger than {MAX_PYPROJECT_BYTES} bytes"]
            text = bundle.read(info).decode("utf-8")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, UnicodeDecodeError, OSError) as err:
        return [*problems, f"the bundle is not a readable zip with a UTF-8 pyproject.toml ({err})"]
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        return [*problems, f"its pyproject.toml is not valid TOML ({err})"]
    for component in components:
        named = _component_of(config, component)
        if named != EXPECTED[component]:
            problems.append(
                f"it names the {_TITLE[component]} {named!r}; this installation runs only "
                f"{EXPECTED[component]!r} and never loads code from a bundle"
            )
    return problems


def check_app_bundle(content: bytes, *, components: tuple[Component, ...]) -> None:
    """Raise `AppBundleError` (with every problem) unless `content` is our code-free FAB."""
    problems = bundle_problems(content, components=components)
    if problems:
        raise AppBundleError(f"The run's Flower app is refused: {'; and '.join(problems)}.")


_TITLE: dict[Component, str] = {"serverapp": "ServerApp", "clientapp": "ClientApp"}


def _component_of(config: dict[str, object], component: Component) -> object:
    """``[tool.flwr.app.components] <component>``, or None where any level is missing."""
    node: object = config
    for key in ("tool", "flwr", "app", "components", component):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node
