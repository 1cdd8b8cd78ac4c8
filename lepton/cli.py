"""`lepton`: demo, coordinator, node, certificate and audit commands.

Known failures (a bad node.toml, a missing certificate, a port in use, an unregistered
key, a malformed data file) end in one paragraph that says what to fix and exit code 2,
never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from coordinator.superlink import SuperLinkSettings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
coordinator_app = typer.Typer(no_args_is_help=True, help="Run the coordinator's SuperLink.")
node_app = typer.Typer(no_args_is_help=True, help="Run an institution's node.")
certs_app = typer.Typer(no_args_is_help=True, help="Create and inspect the PKI.")
audit_app = typer.Typer(
    no_args_is_help=True, help="Privacy reports: fetch, render and verify them offline."
)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(node_app, name="node")
app.add_typer(certs_app, name="certs")
app.add_typer(audit_app, name="audit")

EXIT_USER_ERROR = 2


@app.command()
def demo(
    summary: Annotated[
        Path | None, typer.Option(help="Write the JSON summary of the run to this file.")
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=50,
            help="Federated rounds (default: each sector's own, the number its "
            "hyperparameters were tuned for; lepton/sectors.py).",
        ),
    ] = None,
    target_epsilon: Annotated[
        float, typer.Option(min=0.1, max=50, help="Epsilon the run is calibrated to.")
    ] = 3.0,
    epsilon_budget: Annotated[
        float, typer.Option(min=0.1, max=100, help="Each hospital's lifetime budget.")
    ] = 8.0,
    workdir: Annotated[
        Path | None, typer.Option(help="Keep certificates, ledgers and logs here.")
    ] = None,
    sector: Annotated[
        str,
        typer.Option(
            help="hospital (heart disease, 4 hospitals), bank (credit scoring), factory "
            "(solar-cell images), text (drug reviews, MiniLM), several separated by commas, "
            "or all: their federations run at the same time on one coordinator."
        ),
    ] = "hospital",
) -> None:
    """Institutions of a sector train a model with DP-SGD and SecAgg+ over a TLS SuperLink."""
    from lepton.demo import DemoOptions, run_demo
    from lepton.sectors import resolve_sectors

    try:
        resolve_sectors(sector)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--sector") from err
    run_demo(
        DemoOptions(
            rounds=rounds,
            target_epsilon=target_epsilon,
            epsilon_budget=epsilon_budget,
            summary_path=summary,
            workdir=workdir,
            sector=sector,
        )
    )


@coordinator_app.command("start")
def coordinator_start(
    data_dir: Annotated[Path, typer.Option(help="SuperLink state, logs and run journals.")],
    pki_dir: Annotated[Path, typer.Option(help="Directory made by `lepton certs init`.")],
    host: Annotated[str, typer.Option(help="Where the public Fleet port listens.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="The public Fleet port (nodes connect here).")
    ] = 9093,
    superlink_port: Annotated[
        int,
        typer.Option(
            min=1, max=65535, help="The SuperLink's own port, on 127.0.0.1 only (Control API)."
        ),
    ] = 9091,
    api_host: Annotated[str, typer.Option(help="Where the admin API listens.")] = "127.0.0.1",
    api_port: Annotated[int, typer.Option(min=1, max=65535, help="The admin API's port.")] = 9080,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="The admin database (postgresql+psycopg://USER@HOST/DB); default: "
            "sqlite:///DATA_DIR/admin.db."
        ),
    ] = None,
    api: Annotated[bool, typer.Option(help="Serve the admin API beside the SuperLink.")] = True,
    metrics_node_labels: Annotated[
        bool,
        typer.Option(
            envvar="LEPTON_METRICS_NODE_LABELS",
            help="Label the privacy ledger's series of GET /metrics by node; off (an "
            "auditor-facing deployment): by tenant only.",
        ),
    ] = True,
) -> None:
    """Start the SuperLink (TLS, SuperNode authentication, persistent state) on loopback, its
    public Fleet front (nginx: only Flower's Fleet API is reachable from outside), the
    ServerApp launcher and the admin API (FastAPI under /api/v1; schema created or upgraded
    with Alembic on start)."""
    from coordinator.runner import ApiOptions, run_coordinator

    options = ApiOptions(
        host=api_host,
        port=api_port,
        database_url=database_url,
        metrics_node_labels=metrics_node_labels,
    )
    settings = _superlink_settings(data_dir, pki_dir, host, port, superlink_port)
    raise typer.Exit(run_coordinator(settings, api=options if api else None))


@coordinator_app.command("create-admin-key")
def coordinator_create_admin_key(
    data_dir: Annotated[Path, typer.Option(help="The coordinator's data directory.")],
    database_url: Annotated[
        str | None, typer.Option(help="The admin database; default sqlite:///DATA_DIR/admin.db.")
    ] = None,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "bootstrap",
) -> None:
    """Create a platform-admin API key and print it once (run on the coordinator host)."""
    from coordinator.db import Database, default_sqlite_url
    from coordinator.services.keys import bootstrap_admin_key

    database = Database(database_url or default_sqlite_url(data_dir.resolve()))
    database.upgrade()
    row, key = bootstrap_admin_key(database, name=name)
    typer.echo(key)
    typer.echo(
        f"platform-admin key {row.prefix} created; it is shown only now. Send it as "
        "`Authorization: Bearer <key>`.",
        err=True,
    )


@coordinator_app.command("register-node")
def coordinator_register_node(
    public_key: Annotated[Path, typer.Argument(help="The node's OpenSSH public key (.pub).")],
    name: Annotated[str, typer.Option(help="The node's name.")],
    data_dir: Annotated[Path, typer.Option()],
    pki_dir: Annotated[Path, typer.Option()],
    superlink_port: Annotated[
        int, typer.Option(min=1, max=65535, help="The SuperLink's loopback port.")
    ] = 9091,
) -> None:
    """Register a node's key with the running SuperLink (on the coordinator host, over
    loopback) and print its node id. Enrollment through the admin API does this for you."""
    from coordinator.superlink import SuperLink

    superlink = SuperLink(_superlink_settings(data_dir, pki_dir, "127.0.0.1", 9093, superlink_port))
    superlink.write_connection_config()
    typer.echo(superlink.register_node(public_key, name=name))


@coordinator_app.command("run", hidden=True)
def coordinator_run() -> None:
    """Retired: runs start through the admin API, the one checked, audited way."""
    from lepton_fl.config import SpecError

    raise SpecError(
        "`lepton coordinator run` is retired: a run is started through the admin API, which "
        "checks members and budgets, signs the run for the nodes, audits it and ledgers it. "
        "Create the federation with POST /api/v1/federations and start it with "
        "POST /api/v1/federations/{id}/runs (see docs/admin-api.md).",
        code="use_admin_api",
    )


@node_app.command("start")
def node_start(
    config: Annotated[Path, typer.Option(help="The node's node.toml.")],
) -> None:
    """Start the trainer daemon and the SuperNode of one institution."""
    from client_node.settings import load_node_settings

    settings = load_node_settings(config)  # fail fast, before torch is imported
    _require_node_extra()
    from client_node.runner import run_node

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    raise typer.Exit(run_node(settings))


NODE_PACKAGES = ("torch", "opacus")
"""What a node trains with: the `node` extra (a coordinator installs without it; text models
add the `text` extra, checked when a text task or model is loaded)."""


def _require_node_extra() -> None:
    """Refuse, with what to install, on an installation without the node's training stack."""
    from lepton_fl.config import SpecError
    from lepton_fl.installed import installed

    missing = [name for name in NODE_PACKAGES if not installed(name)]
    if missing:
        raise SpecError(
            f"This installation has no {', '.join(missing)}: a node trains with the `node` "
            "extra. Install torch==2.13.0 first (the CPU build), then "
            "pip install 'lepton-fl[node]' (or use the node image).",
            code="node_extra_missing",
        )


EXIT_DATA_WARNINGS = 3
"""`lepton node check-data --strict`: the data can be used, but it has warnings."""


@node_app.command("check-data")
def node_check_data(
    config: Annotated[Path, typer.Option(help="The node's node.toml.")],
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit with code 3 when the data has warnings (a class of the task absent, "
            "values clipped to the task's range); without it they are printed and the exit "
            "code is 0.",
        ),
    ] = False,
) -> None:
    """Check the node's data against its task, as the trainer will; print a summary or the error.

    Warnings (the node still trains on such data): a class of the task has no example, so the
    federation's model cannot learn it from this site; a numeric column has values outside the
    task's range, which are clipped to it (counted per column). Nothing leaves the machine.

    Exit codes: 0 the data can be used (with or without warnings); 1 the data cannot be used
    (the error names the file, row and column); 2 node.toml cannot be loaded; 3 with
    --strict, the data can be used but has warnings.
    """
    from client_node.settings import load_node_settings

    settings = load_node_settings(config)
    from client_node.connectors import ConnectorError, check_node_data, describe_split

    try:
        report = check_node_data(settings)
    except ConnectorError as err:
        typer.echo(f"data invalid [{err.code}]: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"data ok: {describe_split(report.split)}")
    warnings = report.warnings()
    for warning in warnings:
        typer.echo(f"warning: {warning}")
    if not warnings:
        typer.echo("no warnings.")
        return
    counted = f"{len(warnings)} warning{'s' if len(warnings) > 1 else ''}"
    if strict:
        typer.echo(f"{counted}: exit code {EXIT_DATA_WARNINGS} (--strict).", err=True)
        raise typer.Exit(EXIT_DATA_WARNINGS)
    typer.echo(f"{counted}; the node can train on this data (--strict makes warnings fail).")


@node_app.command("predict")
def node_predict(
    release: Annotated[
        Path, typer.Option(help="The release directory (manifest.json and model.safetensors).")
    ],
    input_path: Annotated[
        Path,
        typer.Option(
            "--input",
            help="The local file to predict: a CSV or Parquet table, a JSONL or CSV text file, "
            "an image folder or one image, as the release's task needs; no label column.",
        ),
    ],
    public_key: Annotated[
        Path | None,
        typer.Option(
            help="The coordinator's release public key (PEM); default: \\[releases].public_key "
            "of --config."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="The node's node.toml: its \\[data] column declarations and renames, its "
            "device and its \\[releases].public_key."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Where to write the CSV; default: <input>.predictions.csv beside it."),
    ] = None,
) -> None:
    """Verify a signed release and write its predictions for a local file.

    The release's signature and model digest are checked with the coordinator's public key
    first; a tampered, unsigned or foreign release is refused (exit code 1), as is an input
    that does not fit the task. Nothing leaves the machine.
    """
    from client_node.settings import load_node_settings

    settings = load_node_settings(config) if config is not None else None
    if public_key is None:
        if settings is None or settings.releases is None:
            typer.echo(
                "error: no release public key: pass --public-key with the coordinator's release "
                'public key (PEM), or set [releases] public_key = "PATH" in the node.toml '
                "given with --config.",
                err=True,
            )
            raise typer.Exit(EXIT_USER_ERROR)
        public_key = settings.releases.public_key
    try:
        pem = public_key.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        typer.echo(
            f"error: the release public key {public_key} cannot be read "
            f"({getattr(err, 'strerror', None) or err}). Give the PEM file the coordinator's "
            "admin sent you.",
            err=True,
        )
        raise typer.Exit(EXIT_USER_ERROR) from err

    from client_node.connectors import ConnectorError
    from client_node.predict import PredictionError, predict_file
    from lepton_fl.crypto.release import ReleaseError

    try:
        report = predict_file(
            release,
            input_path,
            public_key_pem=pem,
            output_path=output,
            data=settings.data if settings is not None else None,
            device=settings.node.device if settings is not None else "cpu",
        )
    except PredictionError as err:
        typer.echo(f"error [{err.code}]: {err}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from err
    except ReleaseError as err:
        if err.code == "release-bad-public-key":
            typer.echo(f"error [{err.code}]: {public_key}: {err}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from err
        typer.echo(f"release refused [{err.code}]: {err}", err=True)
        raise typer.Exit(1) from err
    except ConnectorError as err:
        typer.echo(f"input refused [{err.code}]: {err}", err=True)
        raise typer.Exit(1) from err
    counts = ", ".join(f"{label}: {n}" for label, n in report.counts.items())
    typer.echo(
        f"release {report.federation} v{report.version} verified ({report.model_digest}); "
        f"{report.rows} predictions ({counts}) written to {report.output_path}"
    )


@node_app.command("ledger")
def node_ledger(
    config: Annotated[Path, typer.Option(help="The node's node.toml.")],
    delta: Annotated[float | None, typer.Option(help="Report at this delta.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Only verify the ledger's hash chains: print the rows checked and the head.",
        ),
    ] = False,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export",
            help="Write every charge as the body of the coordinator's `POST "
            "/ledger/nodes/{id}/reconcile` (with each row's commitment) to this file, '-' for "
            "standard output, and print nothing else.",
        ),
    ] = None,
) -> None:
    """Show the node's privacy ledger: every recorded charge (DP-SGD rounds and evaluation
    releases), the epsilon its dataset has spent, and epsilon per federation and dataset.

    --export writes the reconcile request body: a site's IT hands it to its tenant admin (or
    sends it itself) so the coordinator's ledger is checked against the node's own, row by
    row (`docs/admin-api.md`, reconcile).

    Opening the ledger verifies its hash chains: a row changed, deleted or reordered outside
    Lepton FL ends in `error [tampered]`, naming the row, and exit code 2. --verify prints the
    rows checked and the chain head; exit code 1 when the ledger predates hash chains (schema
    below 5: the node's trainer chains it when it next starts) and nothing could be verified.
    """
    import dataclasses
    import json as json_lib

    from client_node.ledger import Ledger
    from client_node.settings import load_node_settings
    from lepton.ledger_report import epsilon_by_federation
    from lepton_fl.privacy import epsilon_spent

    settings = load_node_settings(config)
    if export is not None:
        from lepton.ledger_report import ledger_rows

        body = json_lib.dumps({"entries": ledger_rows(settings.ledger_path)}, indent=2)
        if str(export) == "-":
            typer.echo(body)
        else:
            export.write_text(body + "\n")
        return
    report_delta = delta if delta is not None else settings.privacy.max_delta
    accountant = settings.privacy.accountant
    with Ledger(settings.ledger_path, read_only=True) as ledger:  # verifies, or refuses
        if verify:
            chain = ledger.verify()
        else:
            every = ledger.entries()
    if verify:
        path = settings.ledger_path
        if as_json:
            typer.echo(json_lib.dumps({"path": str(path), **dataclasses.asdict(chain)}))
        elif chain.chained:
            typer.echo(
                f"ledger {path} verified: {chain.rows} charges and {chain.bindings} run "
                f"bindings match their hash chains.\nhead {chain.head}\n"
                f"run bindings head {chain.bindings_head}"
            )
        if not chain.chained:
            typer.echo(
                f"ledger {path} has schema version {chain.schema_version}, older than hash "
                f"chains (5): its {chain.rows} charges could not be verified. Start the node's "
                "trainer (`lepton node start`) once to chain them, then verify again.",
                err=True,
            )
            raise typer.Exit(1)
        return
    entries = [e for e in every if e.dataset_id == settings.dataset_id]
    epsilon = epsilon_spent([e.step for e in entries], delta=report_delta, accountant=accountant)
    by_federation = epsilon_by_federation(every, delta=report_delta, accountant=accountant)
    report = {
        "node": settings.node.name,
        "dataset_id": settings.dataset_id,
        "accountant": accountant,
        "delta": report_delta,
        "epsilon": epsilon,
        "epsilon_budget": settings.privacy.epsilon_budget,
        "by_federation": by_federation,
        "history": [
            {
                "run_id": e.run_id,
                "round": e.round,
                "kind": e.kind,
                "federation": e.federation,
                "noise_multiplier": e.noise_multiplier,
                "sample_rate": e.sample_rate,
                "steps": e.steps,
                "recorded_at": e.recorded_at,
            }
            for e in entries
        ],
    }
    if as_json:
        typer.echo(json_lib.dumps(report, indent=2))
        return
    typer.echo(
        f"{settings.node.name} ({settings.dataset_id}): epsilon {epsilon:.3f} of "
        f"{settings.privacy.epsilon_budget:g} at delta={report_delta:g} ({accountant.upper()}), "
        f"{len(entries)} recorded charges"
    )
    for row in by_federation:
        who = "all federations" if row["federation"] == "*" else f"federation {row['federation']}"
        typer.echo(
            f"  dataset {row['dataset_id']}, {who}: epsilon {row['epsilon']:.3f} "
            f"(training alone {row['epsilon_training']:.3f}; evaluation releases: "
            f"{row['evaluations']})"
        )
    for e in entries:
        what = "evaluation release" if e.kind == "evaluate" else "training"
        typer.echo(
            f"  run {e.run_id} round {e.round} {what}: sigma={e.noise_multiplier:.4f} "
            f"q={e.sample_rate:.4f} steps={e.steps}  ({e.recorded_at})"
        )


@certs_app.command("init")
def certs_init(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the PKI.")],
    node: Annotated[list[str], typer.Option(help="A node name; repeat for each node.")],
    host: Annotated[
        list[str] | None, typer.Option(help="A SuperLink host name or IP; repeatable.")
    ] = None,
    valid_days: Annotated[int, typer.Option(min=1, max=3650)] = 30,
    overwrite: bool = False,
) -> None:
    """Create a CA, the SuperLink's server certificate and one key pair per node.

    --host replaces the default SANs (127.0.0.1, localhost): list every name and address the
    nodes and the coordinator itself use to reach the SuperLink.
    """
    from lepton_fl.crypto import create_pki, describe_pki

    paths = create_pki(
        directory,
        node_names=node,
        hosts=tuple(host or ("127.0.0.1", "localhost")),
        valid_days=valid_days,
        overwrite=overwrite,
    )
    typer.echo(describe_pki(paths))


@certs_app.command("node-key")
def certs_node_key(
    directory: Annotated[Path, typer.Option("--dir", help="Where the node keeps its keys.")],
    node: Annotated[str, typer.Option(help="The node's name.")],
    overwrite: bool = False,
) -> None:
    """Create one node's key pair at its site: only the .pub file goes to the coordinator."""
    from lepton_fl.crypto import create_node_key, node_public_key_fingerprint

    paths = create_node_key(directory, node, overwrite=overwrite)
    typer.echo(f"private key (stays here): {paths.private_key}")
    typer.echo(f"public key (send to the coordinator): {paths.public_key}")
    typer.echo(f"SHA-256 fingerprint: {node_public_key_fingerprint(paths.public_key)}")


@certs_app.command("show")
def certs_show(directory: Annotated[Path, typer.Option("--dir")]) -> None:
    """Describe an existing PKI."""
    from lepton_fl.crypto import describe_pki, load_pki

    typer.echo(describe_pki(load_pki(directory)))


@audit_app.command("report")
def audit_report(
    out: Annotated[Path, typer.Option(help="Directory for the JSON, its signature and page.")],
    api: Annotated[
        str, typer.Option(help="The admin API's base URL.")
    ] = "http://127.0.0.1:9080/api/v1",
    key_file: Annotated[
        Path | None,
        typer.Option(help="A file holding the API key (default: $LEPTON_API_KEY)."),
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Report on this tenant id.")] = None,
    federation: Annotated[str | None, typer.Option(help="Report on this federation id.")] = None,
    release: Annotated[str | None, typer.Option(help="Report on this release id.")] = None,
) -> None:
    """Fetch the coordinator's signed privacy report and write privacy-report.json, its
    signature (.sig) and privacy-report.html (self-contained: plots, tables, the signed JSON)."""
    from lepton.admin_client import AdminClient
    from lepton.audit_report import write_report_files

    key = (
        key_file.read_text(encoding="utf-8").strip()
        if key_file
        else os.environ.get("LEPTON_API_KEY", "")
    )
    if not key:
        raise typer.BadParameter(
            "give an auditor's API key with --key-file or $LEPTON_API_KEY", param_hint="--key-file"
        )
    with AdminClient.connect(api) as anonymous:
        signed = anonymous.as_key(key).privacy_report(
            tenant_id=tenant, federation_id=federation, release_id=release
        )
    files = write_report_files(signed, out)
    typer.echo(f"Wrote {files.json}, {files.signature} and {files.html}")


@audit_app.command("verify")
def audit_verify(
    report: Annotated[Path, typer.Argument(help="privacy-report.json, or the report's page.")],
    public_key: Annotated[
        Path, typer.Option(help="The coordinator's public key (PEM), received out of band.")
    ],
    signature: Annotated[
        Path | None, typer.Option(help="The detached signature (default: REPORT.sig).")
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(min=0.0, max=0.5, help="How far below an accountant a stated ε may be."),
    ] = 0.02,
) -> None:
    """Check a privacy report offline: the coordinator's signature, the audit checkpoint, and
    every ε recomputed with Opacus and with Google's dp-accounting. Exit 1 on any failure."""
    from lepton.audit_report import read_signed_report
    from lepton.audit_verify import ReportFileError, summary_lines, verify_report

    try:
        body, detached = read_signed_report(report, signature)
        pem = public_key.read_text(encoding="utf-8")
    except (ReportFileError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from err
    result = verify_report(body, detached, pem, tolerance=tolerance)
    for line in summary_lines(result, body.get("nodes") or []):
        typer.echo(line)
    if not result.ok:
        raise typer.Exit(1)


def _superlink_settings(
    data_dir: Path, pki_dir: Path, host: str, port: int, superlink_port: int
) -> SuperLinkSettings:
    """The SuperLink needs only the CA certificate and its own certificate and key: the
    CA's private key can stay off the coordinator host."""
    from coordinator.superlink import SuperLinkSettings

    settings = SuperLinkSettings(
        data_dir=data_dir.resolve(),
        ca_certificate=(pki_dir / "ca.pem").resolve(),
        server_certificate=(pki_dir / "server.pem").resolve(),
        server_key=(pki_dir / "server.key").resolve(),
        host=host,
        port=port,
        superlink_port=superlink_port,
    )
    settings.check_files()
    return settings


def main() -> None:
    """Console entry point: known errors become one actionable paragraph, exit code 2."""
    from lepton_fl.processes import QUIET_FLOWER_ENV

    os.environ.update(QUIET_FLOWER_ENV)  # nothing phones home, in-process either
    try:
        # without standalone mode click returns a command's typer.Exit code instead of exiting
        status = app(standalone_mode=False)
        if isinstance(status, int) and status:
            sys.exit(status)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:  # noqa: BLE001
        code = getattr(err, "code", None)
        if isinstance(code, str) and code:
            typer.echo(f"error [{code}]: {err}", err=True)
            sys.exit(EXIT_USER_ERROR)
        if _is_click_usage_error(err):
            typer.echo(f"error: {err}", err=True)
            sys.exit(EXIT_USER_ERROR)
        raise


def _is_click_usage_error(err: Exception) -> bool:
    import click

    if isinstance(err, click.exceptions.ClickException):
        err.show()
        return True
    return False
