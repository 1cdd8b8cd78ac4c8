"""The services' view of the SuperLink: node keys and runs, behind two small interfaces.

`SuperLinkGateway` is the real implementation (the `flwr` CLI against the coordinator's
SuperLink). Storage tests that exercise only the database use their own registry; API and
end-to-end tests use a real SuperLink.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from coordinator.services.errors import UpstreamError
from coordinator.superlink import FlowerRunStatus, SuperLink, SuperLinkError
from lepton_fl.config import RunSpec


class NodeRegistry(Protocol):
    """Registers and unregisters SuperNode public keys."""

    def register(self, public_key: str, *, name: str) -> int:
        """Register an OpenSSH public key; return the Flower node id."""
        ...

    def unregister(self, flower_node_id: int) -> None:
        """Unregister a node; its key can no longer connect."""
        ...


class RunLauncher(Protocol):
    """Submits and stops runs, and says what the SuperLink knows of them."""

    def submit(self, run: RunSpec, *, work_dir: Path) -> int:
        """Submit a run; return Flower's run id."""
        ...

    def stop(self, flower_run_id: int) -> None:
        """Stop a run."""
        ...

    def statuses(self) -> dict[int, FlowerRunStatus]:
        """Every run the SuperLink knows, by Flower run id."""
        ...


class SuperLinkGateway:
    """NodeRegistry and RunLauncher over the real SuperLink's `flwr` CLI."""

    def __init__(self, superlink: SuperLink, *, keys_dir: Path) -> None:
        self.superlink = superlink
        self.keys_dir = keys_dir

    def register(self, public_key: str, *, name: str) -> int:
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        path = self.keys_dir / f"{name}.pub"
        path.write_text(public_key.strip() + "\n", encoding="utf-8")
        try:
            return self.superlink.register_node(path, name=name)
        except SuperLinkError as err:
            raise _upstream("register the node's key", err) from err

    def unregister(self, flower_node_id: int) -> None:
        try:
            self.superlink.unregister_node(flower_node_id)
        except SuperLinkError as err:
            raise _upstream("unregister the node", err) from err

    def submit(self, run: RunSpec, *, work_dir: Path) -> int:
        try:
            return self.superlink.submit_run(run, work_dir=work_dir)
        except SuperLinkError as err:
            raise _upstream("submit the run", err) from err

    def stop(self, flower_run_id: int) -> None:
        try:
            self.superlink.stop_run(flower_run_id)
        except SuperLinkError as err:
            raise _upstream("stop the run", err) from err

    def statuses(self) -> dict[int, FlowerRunStatus]:
        try:
            return self.superlink.run_statuses()
        except SuperLinkError as err:
            raise _upstream("list its runs", err) from err


def _upstream(what: str, err: SuperLinkError) -> UpstreamError:
    return UpstreamError(
        f"The SuperLink could not {what}: {err}. Check that the coordinator's SuperLink is "
        "running (`lepton coordinator start`) and see its log.",
        code=f"superlink_{err.code}",
    )
