"""The admin service's settings: where its data lives and how it reaches the SuperLink."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coordinator.db import default_sqlite_url
from coordinator.superlink import SuperLinkSettings


@dataclass(frozen=True)
class AdminSettings:
    """Everything `create_app` needs."""

    data_dir: Path
    database_url: str | None = None  # None: sqlite:///<data_dir>/admin.db
    superlink: SuperLinkSettings | None = None  # None: enrolment and runs answer 503
    round_timeout_s: float = 300.0
    connect_timeout_s: float = 120.0
    # GET /metrics labels the ledger's series by node; False (an auditor-facing deployment):
    # per tenant only (its nodes' largest spent and smallest remaining epsilon)
    metrics_node_labels: bool = True

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file."""
        return self.database_url or default_sqlite_url(self.data_dir)

    @property
    def runs_dir(self) -> Path:
        """One directory per run: journal.jsonl, checkpoint.npz."""
        return self.data_dir / "runs"

    @property
    def releases_dir(self) -> Path:
        """One directory per release: model.safetensors, manifest.json."""
        return self.data_dir / "releases"

    @property
    def signing_key_path(self) -> Path:
        """The coordinator's Ed25519 release-signing key (generated on first start)."""
        return self.data_dir / "keys" / "release-signing.key"

    @property
    def node_keys_dir(self) -> Path:
        """Public keys of enrolled nodes, as registered with the SuperLink."""
        return self.data_dir / "node-keys"
