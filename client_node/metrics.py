"""The node's own Prometheus endpoint, served by the trainer process that owns the ledger.

``[metrics]`` in node.toml (`client_node.settings.MetricsSection`): on by default, on
127.0.0.1:9095; anything but a loopback address needs ``allow_remote = true``, because the
endpoint has no authentication. What it serves:

- the privacy ledger, read from the ledger (`client_node.ledger.Ledger`) at each scrape and
  recomputed with Opacus as ``lepton node ledger`` reports it (the site's accountant, at
  ``[privacy] max_delta``): epsilon spent, the budget, what remains, the spend per
  federation (and the site's cap where it sets one), rounds trained, evaluation releases and
  the time of the last round trained;
- replies the trainer refused, or answered with an error, since it started, by message kind
  and the reply's stable code (counted as the executor hands each reply back).

Every series carries ``node`` (node.toml's ``[node] name``); the ledger's also ``dataset``
(its ledger key). The full list is in docs/admin-api.md#metrics.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from wsgiref.simple_server import WSGIServer

from flwr.app import ConfigRecord, RecordDict
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from client_node.ledger import Ledger, LedgerEntry
from client_node.settings import NodeConfigError, NodeSettings
from lepton_fl.privacy import epsilon_spent
from lepton_fl.wire import Envelope

log = logging.getLogger("lepton.node")

MessageHandler = Callable[[Envelope, RecordDict], RecordDict]
CODE = re.compile(r"^[a-z0-9_]{1,48}$")
MAX_CODES = 64  # distinct (kind, status, code) label sets kept; the rest count as "other"
NO_FEDERATION = "unknown"  # charges recorded before ledgers named the federation


class ReplyCounter:
    """Refused and failed replies of this trainer, by message kind, status and code."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = defaultdict(int)

    def note(self, kind: str, answer: RecordDict) -> None:
        """Count `answer` if it is a refusal or an error (its ``status`` record says so)."""
        status = answer.get("status")
        if not isinstance(status, ConfigRecord):
            return
        state = str(status.get("status", ""))
        if state not in ("refused", "error"):
            return
        code = str(status.get("code", ""))
        code = code if CODE.match(code) else "other"
        with self._lock:
            key = (kind, state, code)
            if key not in self._counts and len(self._counts) >= MAX_CODES:
                key = (kind, state, "other")
            self._counts[key] += 1

    def wrap(self, handler: MessageHandler) -> MessageHandler:
        """`handler`, counting each reply it returns."""

        def counted(envelope: Envelope, content: RecordDict) -> RecordDict:
            answer = handler(envelope, content)
            self.note(envelope.kind, answer)
            return answer

        return counted

    def counts(self) -> dict[tuple[str, str, str], int]:
        """A copy of the counts so far."""
        with self._lock:
            return dict(self._counts)


class NodeCollector(Collector):
    """The node's series, read from its ledger at each scrape."""

    def __init__(self, settings: NodeSettings, ledger: Ledger, replies: ReplyCounter) -> None:
        self.settings = settings
        self.ledger = ledger
        self.replies = replies

    def collect(self) -> Iterable[Metric]:
        node, dataset = self.settings.node.name, self.settings.dataset_id
        privacy = self.settings.privacy
        entries = self.ledger.entries(dataset)

        def epsilon(group: list[LedgerEntry]) -> float:
            return epsilon_spent(
                [e.step for e in group], delta=privacy.max_delta, accountant=privacy.accountant
            )

        spent = epsilon(entries)
        labels = ["node", "dataset"]
        yield _gauge(
            "lepton_node_epsilon_spent",
            "Epsilon this node's dataset has spent, recomputed with Opacus from every charge "
            "in its ledger (training rounds and evaluation releases), as `lepton node ledger` "
            "reports it.",
            labels,
            [node, dataset],
            spent,
        )
        yield _gauge(
            "lepton_node_epsilon_budget",
            "The site's lifetime epsilon budget on this dataset ([privacy] epsilon_budget).",
            labels,
            [node, dataset],
            privacy.epsilon_budget,
        )
        yield _gauge(
            "lepton_node_epsilon_remaining",
            "The budget less the epsilon spent (0 when spent).",
            labels,
            [node, dataset],
            max(0.0, privacy.epsilon_budget - spent),
        )
        by_federation: dict[str, list[LedgerEntry]] = defaultdict(list)
        for e in entries:
            by_federation[e.federation or NO_FEDERATION].append(e)
        federation_spent = GaugeMetricFamily(
            "lepton_node_federation_epsilon_spent",
            "Epsilon this dataset has spent in one federation, over all its runs.",
            labels=[*labels, "federation"],
        )
        federation_cap = GaugeMetricFamily(
            "lepton_node_federation_epsilon_cap",
            "The site's epsilon cap for a federation ([privacy.federation_epsilon] or "
            "max_epsilon_per_federation), for federations the site caps.",
            labels=[*labels, "federation"],
        )
        for federation, group in sorted(by_federation.items()):
            federation_spent.add_metric([node, dataset, federation], epsilon(group))
        for federation in privacy.federations:
            cap = privacy.epsilon_cap(federation)
            if cap is not None:
                federation_cap.add_metric([node, dataset, federation], cap)
        yield federation_spent
        yield federation_cap
        trained = [e for e in entries if e.kind == "train"]
        yield _counter(
            "lepton_node_rounds_trained",
            "Training rounds charged to this dataset's ledger (over every run and restart).",
            labels,
            [node, dataset],
            len(trained),
        )
        yield _counter(
            "lepton_node_evaluations",
            "Evaluation releases charged to this dataset's ledger.",
            labels,
            [node, dataset],
            len(entries) - len(trained),
        )
        last = GaugeMetricFamily(
            "lepton_node_last_round_timestamp_seconds",
            "When the ledger recorded this dataset's last training round (Unix time).",
            labels=labels,
        )
        if trained:
            last.add_metric([node, dataset], _unix_time(trained[-1].recorded_at))
        yield last
        refusals = CounterMetricFamily(
            "lepton_node_refusals",
            "Requests this trainer refused (status refused: its site policy, its budget, an "
            "unsigned run, ...) or could not serve (status error), since it started, by "
            "message kind and the reply's code.",
            labels=["node", "kind", "status", "code"],
        )
        for (kind, status, code), count in sorted(self.replies.counts().items()):
            refusals.add_metric([node, kind, status, code], count)
        yield refusals


def _gauge(name: str, doc: str, labels: list[str], values: list[str], value: float) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    family.add_metric(values, value)
    return family


def _counter(name: str, doc: str, labels: list[str], values: list[str], value: float) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    family.add_metric(values, value)
    return family


def _unix_time(recorded_at: str) -> float:
    return datetime.fromisoformat(recorded_at.replace("Z", "+00:00")).timestamp()


class MetricsServer:
    """The node's ``/metrics`` HTTP endpoint, in a daemon thread of the trainer process."""

    def __init__(self, settings: NodeSettings, ledger: Ledger, replies: ReplyCounter) -> None:
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(settings, ledger, replies))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen on ``[metrics] host:port``; a port in use stops the node with what to fix."""
        metrics = self.settings.metrics
        try:
            self._server, self._thread = start_http_server(
                metrics.port, addr=metrics.host, registry=self.registry
            )
        except OSError as err:
            raise NodeConfigError(
                f"node {self.settings.node.name}: its metrics endpoint cannot listen on "
                f"{metrics.host}:{metrics.port} ({err.strerror or err}). Another process (a "
                "second node on this host?) uses the port: set another [metrics] port in "
                "node.toml, or enabled = false.",
                code="port_in_use",
            ) from err
        log.info(
            "node %s: metrics on http://%s:%d/metrics",
            self.settings.node.name,
            metrics.host,
            metrics.port,
        )

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
