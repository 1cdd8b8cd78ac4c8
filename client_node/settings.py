"""A node's own configuration, read from node.toml.

Relative paths in the file are relative to the file's directory. Every problem (missing
file, bad TOML, unknown key, wrong type, missing certificate) is reported in one message
that names the file and the field, so an institution's IT knows what to fix.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from lepton_fl.config import AccountantName, describe_validation_error


class NodeConfigError(ValueError):
    """node.toml is missing, malformed, or points at files that are not there."""

    def __init__(self, message: str, *, code: str = "invalid_node_config") -> None:
        super().__init__(message)
        self.code = code


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeSection(_Section):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    state_dir: Path
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    torch_threads: Annotated[int, Field(ge=1, le=1024)] = Field(
        default=1,
        description="CPU threads for torch. 1 is fastest for small models (measured 24x "
        "faster than 2 threads for the tabular MLP on 2 cores); raise it for large CPU models.",
    )


DataSource = Literal["builtin", "csv", "parquet", "image_folder", "jsonl", "text_csv"]
"""Where a node's rows come from: a registered demo partition, or the institution's own files."""

ColumnType = Literal["float", "int", "category", "bool"]
"""The declared type of one tabular column in ``[data.columns]``."""

TABULAR_SOURCES = ("csv", "parquet")
TEXT_SOURCES = ("jsonl", "text_csv")


class DataSection(_Section):
    """Which task this node serves and where its rows come from.

    ``source = "builtin"`` (the default) loads ``partition`` of the registered task. Any other
    source reads the institution's own file or folder at ``path`` (relative to node.toml):

    - ``csv`` / ``parquet``: ``target`` names the label column; ``[data.columns]`` declares every
      feature column with its type; ``[data.rename]`` maps a local column name to the task's
      feature name where they differ.
    - ``image_folder``: one subfolder per class, named as the task's labels.
    - ``jsonl`` / ``text_csv``: ``text_column`` and ``label_column`` name the two fields.

    ``[data.label_values]`` maps a local label value (as written in the file, or a subfolder
    name) to one of the task's label names. For file sources ``partition`` only names the local
    data in the privacy ledger (default: the file or folder name).
    """

    task: str
    source: DataSource = "builtin"
    partition: Annotated[str, Field(min_length=1)]
    path: Path | None = None
    target: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    columns: dict[str, ColumnType] = Field(default_factory=dict)
    rename: dict[str, str] = Field(default_factory=dict)
    label_values: dict[str, str] = Field(default_factory=dict)
    dataset_id: str | None = None
    seed: int = 0
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.25

    @model_validator(mode="before")
    @classmethod
    def _default_partition(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("source", "builtin") != "builtin":
            path = raw.get("path")
            name = Path(path).stem if isinstance(path, str | Path) else ""
            return {"partition": name or "local", **raw}
        return raw

    @model_validator(mode="after")
    def _fields_fit_the_source(self) -> DataSection:
        problems: list[str] = []
        if self.source == "builtin":
            extra = [
                name
                for name, unused in (
                    ("path", self.path is None),
                    ("target", self.target is None),
                    ("columns", not self.columns),
                    ("rename", not self.rename),
                    ("label_values", not self.label_values),
                )
                if not unused
            ]
            if extra:
                problems.append(
                    f'{", ".join(extra)} only apply to your own files; set source = "csv", '
                    '"parquet", "image_folder", "jsonl" or "text_csv", or remove them'
                )
            if problems:
                raise ValueError("; ".join(problems))
            return self
        if self.path is None:
            problems.append(
                f'source = "{self.source}" reads a file or folder: set path (relative to node.toml)'
            )
        if self.source in TABULAR_SOURCES:
            if not self.target:
                problems.append(f'source = "{self.source}" needs target = "<label column>"')
            if not self.columns:
                problems.append(
                    f'source = "{self.source}" needs [data.columns]: one line per feature '
                    'column with its type, for example age = "float"'
                )
            if self.target and self.target in self.columns:
                problems.append(
                    f"the target column {self.target!r} must not also be a feature in "
                    "[data.columns]"
                )
            unknown = sorted(set(self.rename) - set(self.columns))
            if unknown:
                problems.append(
                    f"[data.rename] renames {unknown}, which [data.columns] does not declare"
                )
            targets = list(self.rename.values())
            duplicates = sorted({t for t in targets if targets.count(t) > 1})
            if duplicates:
                problems.append(f"[data.rename] maps several columns onto {duplicates}")
        else:
            extra = [
                name
                for name, unused in (
                    ("target", self.target is None),
                    ("columns", not self.columns),
                    ("rename", not self.rename),
                )
                if not unused
            ]
            if extra:
                problems.append(
                    f"{', '.join(extra)} only apply to csv or parquet sources, not "
                    f'source = "{self.source}"; remove them'
                )
        if self.source in TEXT_SOURCES and self.text_column == self.label_column:
            problems.append(
                f"text_column and label_column are both {self.text_column!r}; they must differ"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class PrivacySection(_Section):
    """The site's own floor: the trainer refuses anything looser than this."""

    epsilon_budget: Annotated[float, Field(gt=0)]
    accountant: AccountantName = "rdp"
    max_delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    federations: tuple[str, ...] = Field(
        default=(), description="Federations this node accepts; empty accepts none."
    )
    tasks: tuple[str, ...] = Field(
        default=(),
        description="Tasks this node accepts; empty accepts only the task it serves ([data].task).",
    )
    federation_epsilon: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Maximum epsilon per federation on this dataset, over all its runs.",
    )
    max_epsilon_per_federation: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="Default cap for federations not named in [privacy.federation_epsilon]; "
        "None: only epsilon_budget caps them.",
    )
    min_noise_multiplier: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="Refuse runs whose calibrated DP-SGD noise multiplier is below this.",
    )
    max_grad_norm: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Refuse federations that clip per-sample gradients above this."
    )
    require_secure_aggregation: StrictBool = Field(
        default=True,
        description="Refuse federations without secure aggregation, and any plain train request.",
    )

    @model_validator(mode="after")
    def _caps_name_accepted_federations(self) -> PrivacySection:
        unknown = sorted(set(self.federation_epsilon) - set(self.federations))
        if unknown:
            raise ValueError(
                f"[privacy.federation_epsilon] sets a cap for {unknown}, which [privacy]."
                f"federations (= {list(self.federations)}) does not accept; fix the name or "
                "add the federation to federations"
            )
        return self

    def epsilon_cap(self, federation: str) -> float | None:
        """The maximum epsilon this site allows `federation` to spend on its dataset."""
        return self.federation_epsilon.get(federation, self.max_epsilon_per_federation)


class SuperLinkSection(_Section):
    address: str
    root_certificates: Path

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port (for example 127.0.0.1:9093)")
        return value


class AuthSection(_Section):
    private_key: Path


class FlowerSection(_Section):
    clientappio_port: Annotated[int, Field(gt=0, lt=65536)] = 9094
    trainer_timeout_s: Annotated[float, Field(gt=0)] = 600.0


class MetricsSection(_Section):
    """The trainer's Prometheus endpoint (`client_node.metrics`): the ledger's epsilon,
    rounds trained, refusals and the last round's time, served without authentication, so on
    the loopback interface unless the site chooses otherwise (``allow_remote``)."""

    enabled: StrictBool = True
    host: Annotated[str, Field(min_length=1, max_length=253)] = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 9095
    allow_remote: StrictBool = Field(
        default=False,
        description="Must be true to listen on anything but a loopback address: the "
        "endpoint has no authentication, so exposing it is the site's explicit choice.",
    )

    @model_validator(mode="after")
    def _loopback_unless_chosen(self) -> MetricsSection:
        if self.enabled and not self.allow_remote and not is_loopback(self.host):
            raise ValueError(
                f"host = {self.host!r} is not a loopback address and the metrics endpoint has "
                'no authentication: keep host = "127.0.0.1", or set allow_remote = true to '
                "expose it on purpose (then restrict who can reach the port)"
            )
        return self


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine's loopback interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve anywhere


class ReleasesSection(_Section):
    """Signed model releases this node uses (``lepton node predict``)."""

    public_key: Path = Field(
        description="The coordinator's release public key (PEM), received out of band with "
        "the CA certificate, never from a release itself."
    )


class CoordinatorSection(_Section):
    """The coordinator this node works for: the key its admin service signs runs with."""

    public_key: Path = Field(
        description="The coordinator's Ed25519 signing public key (PEM), pinned out of band "
        "(the enrollment answer or GET /api/v1/signing-key; compare the fingerprint over a "
        "second channel). The trainer refuses every run not signed with it."
    )


class NodeSettings(_Section):
    """Everything `lepton node start` needs."""

    node: NodeSection
    data: DataSection
    privacy: PrivacySection
    superlink: SuperLinkSection
    auth: AuthSection
    flower: FlowerSection = FlowerSection()
    metrics: MetricsSection = MetricsSection()
    releases: ReleasesSection | None = None
    coordinator: CoordinatorSection | None = None

    @property
    def dataset_id(self) -> str:
        """The key of this node's privacy ledger: one accountant history per dataset."""
        return self.data.dataset_id or f"{self.data.task}:{self.data.partition}"

    @property
    def ledger_path(self) -> Path:
        """The node's persistent privacy ledger."""
        return self.node.state_dir / "ledger.db"

    @property
    def trainer_socket(self) -> Path:
        """Unix socket of the trainer daemon (only this node's relay connects)."""
        return self.node.state_dir / "trainer.sock"

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME of this node's SuperNode."""
        return self.node.state_dir / "flwr"


def load_node_settings(path: Path) -> NodeSettings:
    """Read and validate node.toml; raise NodeConfigError with an actionable message."""
    if not path.is_file():
        raise NodeConfigError(
            f"The node config {path} does not exist. Write one (see deploy/node.example.toml) "
            "and pass it with --config.",
            code="missing_node_config",
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise NodeConfigError(f"The node config {path} is not valid TOML: {err}.") from err
    base = path.parent.resolve()
    try:
        settings = NodeSettings.model_validate(raw)
    except ValidationError as err:
        raise NodeConfigError(
            f"The node config {path} has problems: {describe_validation_error(err)}."
        ) from err
    settings = _resolve_paths(settings, base)
    _check_files(settings, path)
    return settings


def _resolve_paths(settings: NodeSettings, base: Path) -> NodeSettings:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    return settings.model_copy(
        update={
            "node": settings.node.model_copy(
                update={"state_dir": resolve(settings.node.state_dir)}
            ),
            "superlink": settings.superlink.model_copy(
                update={"root_certificates": resolve(settings.superlink.root_certificates)}
            ),
            "auth": settings.auth.model_copy(
                update={"private_key": resolve(settings.auth.private_key)}
            ),
            "data": settings.data.model_copy(
                update={"path": None if settings.data.path is None else resolve(settings.data.path)}
            ),
            "releases": None
            if settings.releases is None
            else ReleasesSection(public_key=resolve(settings.releases.public_key)),
            "coordinator": None
            if settings.coordinator is None
            else CoordinatorSection(public_key=resolve(settings.coordinator.public_key)),
        }
    )


def _check_files(settings: NodeSettings, path: Path) -> None:
    for field, file in (
        ("superlink.root_certificates", settings.superlink.root_certificates),
        ("auth.private_key", settings.auth.private_key),
    ):
        if not file.is_file():
            raise NodeConfigError(
                f"The node config {path} sets {field} = {file}, but that file does not exist. "
                "Fix the path (relative paths are relative to the config file).",
                code="missing_file",
            )
    if settings.coordinator is not None and not settings.coordinator.public_key.is_file():
        raise NodeConfigError(
            f"The node config {path} sets coordinator.public_key = "
            f"{settings.coordinator.public_key}, but that file does not exist. Save the "
            "coordinator's signing public key (PEM, from the enrollment answer or GET "
            "/api/v1/signing-key) there.",
            code="missing_file",
        )
    if settings.node.state_dir.exists() and not settings.node.state_dir.is_dir():
        raise NodeConfigError(
            f"The node config {path} sets node.state_dir = {settings.node.state_dir}, which is "
            "a file, not a directory.",
        )
