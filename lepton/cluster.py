"""A whole Lepton deployment on one host: one coordinator and N nodes on 127.0.0.1.

Used by `lepton demo`, the end-to-end tests and the benchmarks. Every part is the real
process a deployment runs (`lepton coordinator start`, `lepton node start`), started with
the real CLI and stopped by PID.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client_node.trainer_channel import ping
from coordinator.fl.journal import JournalView, read_journal
from coordinator.superlink import SuperLink, SuperLinkSettings
from lepton_fl.config import Member, RunSpec
from lepton_fl.crypto import PKIPaths, create_pki
from lepton_fl.crypto.release import generate_signing_key, load_signing_key, public_key_pem
from lepton_fl.crypto.run_authorization import authorize_run
from lepton_fl.processes import (
    ManagedProcess,
    ProcessError,
    executable,
    flower_env,
    free_port,
    port_accepts,
    wait_until,
)


@dataclass(frozen=True)
class NodePlan:
    """One node to start: who it is, what data it serves, what its site policy allows."""

    name: str
    task: str
    partition: str
    epsilon_budget: float
    federations: tuple[str, ...]
    register: bool = True
    require_secure_aggregation: bool = True  # false only for plain-round benchmarks

    @property
    def dataset_id(self) -> str:
        """The node's ledger key (node.toml's default: task:partition)."""
        return f"{self.task}:{self.partition}"


@dataclass
class RunningNode:
    """A started node process and where its state lives."""

    plan: NodePlan
    state_dir: Path
    config_path: Path
    process: ManagedProcess
    member: Member | None

    @property
    def ledger_path(self) -> Path:
        """The node's own privacy ledger."""
        return self.state_dir / "ledger.db"


def lepton_command(*args: str) -> list[str]:
    """argv for the installed `lepton` console script."""
    return [executable("lepton"), *args]


def node_toml(
    plan: NodePlan,
    *,
    state_dir: Path,
    superlink: SuperLinkSettings,
    key: Path,
    coordinator_key: Path,
) -> str:
    """A node's node.toml, as an institution's IT would write it (``coordinator_key``: the
    pinned PEM of the coordinator's signing key)."""
    federations = ", ".join(json.dumps(f) for f in plan.federations)
    return (
        f'[node]\nname = "{plan.name}"\nstate_dir = {json.dumps(str(state_dir))}\n'
        'device = "auto"\n\n'
        f'[data]\ntask = "{plan.task}"\npartition = "{plan.partition}"\n\n'
        f"[privacy]\nepsilon_budget = {plan.epsilon_budget}\nfederations = [{federations}]\n"
        f"require_secure_aggregation = {str(plan.require_secure_aggregation).lower()}\n\n"
        f'[superlink]\naddress = "{superlink.address}"\n'
        f"root_certificates = {json.dumps(str(superlink.ca_certificate))}\n\n"
        f"[auth]\nprivate_key = {json.dumps(str(key))}\n\n"
        f"[coordinator]\npublic_key = {json.dumps(str(coordinator_key))}\n\n"
        f"[flower]\nclientappio_port = {free_port()}\n\n"
        f"[metrics]\nport = {free_port()}\n"  # many nodes on one host: one port each
    )


class LocalCluster:
    """Start, drive and stop a coordinator plus nodes under one root directory."""

    def __init__(
        self,
        root: Path,
        plans: list[NodePlan],
        *,
        coordinator_env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.plans = plans
        self.coordinator_env = dict(coordinator_env or {})  # added to the coordinator's env
        self.pki: PKIPaths | None = None
        self.superlink: SuperLink | None = None
        self.nodes: dict[str, RunningNode] = {}
        self._processes: list[ManagedProcess] = []
        self.api_port = free_port()  # the coordinator's admin API (see `api_url`)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, *, node_ready_timeout: float = 120.0) -> LocalCluster:
        """PKI, coordinator, key registration, nodes; returns once every trainer answers.

        The cluster registers the node keys itself (`flwr supernode register`). To have the
        admin API enroll them instead, call `start_coordinator`, enroll, then `start_node`
        for each node with the member the enrollment returned, and `wait_for_nodes`.
        """
        self.start_coordinator()
        members = self._register([p for p in self.plans if p.register])
        for plan in self.plans:
            self.start_node(plan.name, members.get(plan.name))
        self.wait_for_nodes(timeout=node_ready_timeout)
        return self

    def start_coordinator(self) -> SuperLink:
        """The PKI and the coordinator (SuperLink and admin API); no node yet."""
        self.pki = create_pki(
            self.root / "pki", node_names=[p.name for p in self.plans], overwrite=True
        )
        self._signing_key()  # before the coordinator starts: its admin API loads this file
        self.superlink = self._start_coordinator(self.pki)
        return self.superlink

    def start_node(self, name: str, member: Member | None) -> RunningNode:
        """Start one planned node; `member` is its registered identity (None: unregistered)."""
        plan = next((p for p in self.plans if p.name == name), None)
        if plan is None:
            raise ProcessError(f"No node named {name!r} is planned in this cluster.")
        node = self._start_node(plan, member)
        self.nodes[name] = node
        return node

    def wait_for_nodes(self, *, timeout: float = 120.0) -> None:
        """Wait until the trainer of every started, registered node answers."""
        for node in self.nodes.values():
            if node.plan.register:
                socket_path = node.state_dir / "trainer.sock"
                wait_until(
                    lambda s=socket_path: ping(s),  # type: ignore[misc]
                    timeout=timeout,
                    what=f"the trainer of {node.plan.name}",
                    process=node.process,
                )

    def wait_for_api(self, *, timeout: float = 60.0) -> None:
        """Wait until the coordinator's admin API accepts connections."""
        coordinator = next((p for p in self._processes if p.name == "lepton coordinator"), None)
        if coordinator is None:
            raise ProcessError("The coordinator is not started: call start_coordinator first.")
        wait_until(
            lambda: port_accepts("127.0.0.1", self.api_port),
            timeout=timeout,
            what="the coordinator's admin API",
            process=coordinator,
        )

    def restart_coordinator(self, *, timeout: float = 60.0, crash: bool = False) -> None:
        """Stop the coordinator (SIGTERM, by its PID) and start it again with the same command
        line, ports and data directory, as an operator would; the nodes keep running.

        ``crash``: SIGKILL the `lepton coordinator start` process alone instead, as the OOM
        killer would, and start again as soon as it is gone: its children (SuperLink, front,
        ServerApps) must end by themselves, or the restart finds its ports taken."""
        assert self.superlink is not None
        old = next((p for p in self._processes if p.name == "lepton coordinator"), None)
        if old is None:
            raise ProcessError("The coordinator is not started: call start_coordinator first.")
        before = {r.node_id: r.name for r in self.superlink.registrations()}
        if crash:
            os.kill(old.pid, signal.SIGKILL)
            wait_until(lambda: old.poll() is not None, timeout=30, what="the killed coordinator")
        else:
            old.stop()
        self._processes.remove(old)
        again = self._track(
            ManagedProcess(name=old.name, argv=old.argv, log_path=old.log_path, env=old.env)
        )
        settings = self.superlink.settings
        wait_until(
            lambda: port_accepts(settings.host, settings.port),
            timeout=timeout,
            what="the restarted coordinator's SuperLink",
            process=again,
        )
        self.superlink.write_connection_config()
        self._follow_new_node_ids(before, again, timeout=timeout)

    def _follow_new_node_ids(
        self, before: dict[int, str], coordinator: ManagedProcess, *, timeout: float
    ) -> None:
        """The restarted SuperLink started empty and the coordinator registered every key
        again, under new node ids: wait for that, and give the nodes' members the new ids."""
        assert self.superlink is not None
        superlink = self.superlink
        if not before:
            return
        wait_until(
            lambda: not set(before) & {r.node_id for r in superlink.registrations()},
            timeout=timeout,
            what="the restarted coordinator to register the node keys again",
            process=coordinator,
        )
        now = {r.name: r.node_id for r in superlink.registrations()}
        for node in self.nodes.values():
            if node.member is not None and node.member.name in now:
                node.member = node.member.model_copy(update={"node_id": now[node.member.name]})

    def stop(self) -> None:
        """Stop nodes first, then the coordinator, each by the PID we started."""
        for process in reversed(self._processes):
            process.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def check_alive(self) -> None:
        """Raise (with its log) if a coordinator or registered node process died."""
        for process in self._processes:
            if process.name.startswith("lepton node") and not self._is_registered(process):
                continue
            process.check_alive()

    def kill_node(self, name: str) -> None:
        """Kill a node abruptly (SIGKILL to its trainer and SuperNode), as a crash would."""
        process = self.nodes[name].process
        self._processes.remove(process)
        process.kill()

    def restart_node(self, name: str) -> RunningNode:
        """Kill a node as `kill_node` does, then start it again at once with the same command
        line, node.toml and state directory, as a service manager would after a crash (a node
        already killed is only started)."""
        node = self.nodes[name]
        old = node.process
        if old in self._processes:
            self.kill_node(name)
        node.process = self._track(
            ManagedProcess(name=old.name, argv=old.argv, log_path=old.log_path, env=old.env)
        )
        return node

    @property
    def api_url(self) -> str:
        """Base URL of the coordinator's admin API."""
        return f"http://127.0.0.1:{self.api_port}/api/v1"

    def create_admin_key(self) -> str:
        """Bootstrap a platform-admin API key, as an operator would on the coordinator host."""
        done = subprocess.run(
            lepton_command(
                "coordinator", "create-admin-key", "--data-dir", str(self.root / "coordinator")
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise ProcessError(f"create-admin-key failed: {done.stderr.strip()}")
        return done.stdout.strip()

    # -- runs -----------------------------------------------------------------------------

    def members(self, names: list[str] | None = None) -> tuple[Member, ...]:
        """The registered nodes (optionally only those named), as run members."""
        chosen = [n for n in self.nodes.values() if n.member is not None]
        if names is not None:
            chosen = [n for n in chosen if n.plan.name in names]
        return tuple(n.member for n in chosen if n.member is not None)

    @property
    def signing_key_path(self) -> Path:
        """The coordinator's Ed25519 key (runs and releases), as its admin API keeps it."""
        return self.root / "coordinator" / "keys" / "release-signing.key"

    def submit(self, run: RunSpec, *, sign: bool = True) -> int:
        """Submit a run to the SuperLink; return Flower's run id.

        Stands in for the admin service: the run is signed with the coordinator's key (given
        an admin run id if it has none) unless it is already signed or ``sign`` is False (a
        run submitted around the admin service, which every node refuses).
        """
        assert self.superlink is not None
        if sign and run.authorization is None:
            if run.admin_run_id is None:
                run = run.model_copy(update={"admin_run_id": f"local-{secrets.token_hex(8)}"})
            run = authorize_run(run, self._signing_key())
        return self.superlink.submit_run(run, work_dir=Path(run.journal_path).parent)

    def journal_path(self, name: str) -> Path:
        """Where a run's journal goes: one directory per run, as the admin service does, so the
        run's `checkpoint.npz` (written beside its journal) is its own."""
        return self.root / "coordinator" / "runs" / name / "journal.jsonl"

    def wait_for_run(self, journal: Path, *, timeout: float) -> JournalView:
        """Wait until the run's journal says it ended; fail if a process dies first."""
        view = read_journal(journal)

        def ended() -> bool:
            nonlocal view
            self.check_alive()
            view = read_journal(journal)
            return view.finished

        wait_until(ended, timeout=timeout, what=f"the run journal {journal} to end")
        return view

    # -- internals ------------------------------------------------------------------------

    def _signing_key(self) -> Ed25519PrivateKey:
        """The coordinator's signing key, created on first use (0600, in its data dir)."""
        path = self.signing_key_path
        return load_signing_key(path) if path.exists() else generate_signing_key(path)

    def _track(self, process: ManagedProcess) -> ManagedProcess:
        self._processes.append(process.start())
        return process

    def _is_registered(self, process: ManagedProcess) -> bool:
        return any(n.process is process and n.plan.register for n in self.nodes.values())

    def _start_coordinator(self, pki: PKIPaths) -> SuperLink:
        settings = SuperLinkSettings(
            data_dir=self.root / "coordinator",
            ca_certificate=pki.ca_certificate,
            server_certificate=pki.server_certificate,
            server_key=pki.server_key,
            port=free_port(),
            superlink_port=free_port(),
        )
        process = self._track(
            ManagedProcess(
                name="lepton coordinator",
                argv=lepton_command(
                    "coordinator",
                    "start",
                    "--data-dir",
                    str(settings.data_dir),
                    "--pki-dir",
                    str(pki.directory),
                    "--port",
                    str(settings.port),
                    "--superlink-port",
                    str(settings.superlink_port),
                    "--api-port",
                    str(self.api_port),
                ),
                log_path=self.root / "logs" / "coordinator.log",
                env=flower_env(settings.flwr_home, self.coordinator_env),
            )
        )
        wait_until(
            lambda: port_accepts(settings.host, settings.port),
            timeout=60,
            what="the coordinator's SuperLink",
            process=process,
        )
        superlink = SuperLink(settings)
        superlink.write_connection_config()
        return superlink

    def _register(self, plans: list[NodePlan]) -> dict[str, Member]:
        """Register keys; the node ids the SuperLink returns are the authenticated mapping."""
        assert self.superlink is not None
        assert self.pki is not None
        superlink, pki = self.superlink, self.pki
        with ThreadPoolExecutor(max_workers=4) as pool:
            ids = list(
                pool.map(
                    lambda p: superlink.register_node(pki.nodes[p.name].public_key, name=p.name),
                    plans,
                )
            )
        return {
            p.name: Member(
                name=p.name,
                node_id=i,
                public_key=pki.nodes[p.name].public_key.read_text(encoding="ascii"),
            )
            for p, i in zip(plans, ids, strict=True)
        }

    def _start_node(self, plan: NodePlan, member: Member | None) -> RunningNode:
        state_dir, config = self._write_node_config(plan)
        process = self._track(
            ManagedProcess(
                name=f"lepton node ({plan.name})",
                argv=lepton_command("node", "start", "--config", str(config)),
                log_path=self.root / "logs" / f"node-{plan.name}.log",
                env=flower_env(state_dir / "flwr"),
            )
        )
        return RunningNode(plan, state_dir, config, process, member)

    def _write_node_config(self, plan: NodePlan) -> tuple[Path, Path]:
        """The node's state directory and its node.toml (written there)."""
        assert self.superlink is not None
        assert self.pki is not None
        state_dir = self.root / "nodes" / plan.name
        state_dir.mkdir(parents=True, exist_ok=True)
        config = state_dir / "node.toml"
        pinned = state_dir / "coordinator.pem"  # pinned out of band, as a site's IT would
        pinned.write_text(public_key_pem(self._signing_key()))
        config.write_text(
            node_toml(
                plan,
                state_dir=state_dir,
                superlink=self.superlink.settings,
                key=self.pki.nodes[plan.name].private_key,
                coordinator_key=pinned,
            )
        )
        return state_dir, config
