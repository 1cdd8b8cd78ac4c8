"""The privacy report as one self-contained HTML page: tables to print, SVG plots, and the
signed JSON embedded (``<script type="application/json" id="privacy-report">``), so the page
itself can be verified: `lepton audit verify page.html` reads the JSON back out of it.

The page is made from the signed JSON alone and computes nothing: every figure on it is
one the coordinator signed, so what an auditor reads is what `lepton audit verify` checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from lepton.svg_charts import Line, line_chart, stacked_bars

EMBED_ID = "privacy-report"
_EMBED_RE = re.compile(
    rf'<script type="application/json" id="{EMBED_ID}">(.*?)</script>', re.DOTALL
)
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
h3{font-size:1.05em}table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}
th,td{border:1px solid #bbb;padding:3px 6px;text-align:right}th{background:#eee}
td.l,th.l{text-align:left}.bad{color:#b00;font-weight:bold}.muted{color:#666}
figure{margin:.5em 0;break-inside:avoid}code{font-size:.9em}
@media print{body{margin:0}h2{break-before:auto}}
"""


def embedded_report(html: str) -> dict[str, Any] | None:
    """The signed ``{"report", "signature"}`` embedded in a page this module wrote."""
    found = _EMBED_RE.search(html)
    if found is None:
        return None
    document = json.loads(found.group(1).replace("<\\/", "</"))
    return document if isinstance(document, dict) else None


def render(report: Mapping[str, Any], signature: Mapping[str, Any]) -> str:
    """The page for a signed report."""
    scope = report.get("scope", {})
    title = f"Privacy report: {scope.get('kind')} {scope.get('name') or ''}".strip()
    nodes: list[Mapping[str, Any]] = list(report.get("nodes", []))
    runs = {r["id"]: (f, r) for f in report.get("federations", []) for r in f.get("runs", [])}
    embedded = json.dumps({"report": report, "signature": signature}, sort_keys=True)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _provenance(report, signature),
        "<h2>Privacy budget per node</h2>",
        _node_table(nodes),
        *[_node_section(node, runs) for node in nodes],
        "<h2>Per federation</h2>",
        _federation_totals(report.get("federations", []), nodes),
        *[_federation_section(f) for f in report.get("federations", [])],
        f'<script type="application/json" id="{EMBED_ID}">',
        embedded.replace("</", "<\\/"),
        "</script></body></html>",
    ]
    return "\n".join(parts)


def _provenance(report: Mapping[str, Any], signature: Mapping[str, Any]) -> str:
    checkpoint = (report.get("audit_checkpoint") or {}).get("checkpoint") or {}
    scope, viewer = report.get("scope", {}), report.get("viewer", {})
    rows = [
        ("Generated", report.get("generated_at")),
        ("Scope", f"{scope.get('kind')} {scope.get('id') or ''}"),
        ("Viewer", f"{viewer.get('role')} (tenant {viewer.get('tenant_id') or 'all'})"),
        ("Signed by", signature.get("public_key_fingerprint")),
        (
            "Audit log checkpoint",
            f"row {checkpoint.get('seq')}, head {checkpoint.get('head_hash')}, "
            f"{checkpoint.get('at')}",
        ),
        ("Format", report.get("format")),
    ]
    body = "".join(
        f"<tr><th class='l'>{escape(k)}</th><td class='l'>{escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return (
        f"<table>{body}</table><p class='muted'>Every figure here is signed by the coordinator. "
        "Check the signature, the checkpoint and every ε offline with <code>lepton audit "
        "verify privacy-report.json --public-key coordinator.pem</code> (this page works "
        "too: the signed JSON is embedded in it).</p>"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> str:
    head = "".join(
        f"<th{' class=l' if i < left else ''}>{escape(h)}</th>" for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=l' if i < left else ''}>{_cell(v)}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape("—" if value is None else str(value))


def _node_table(nodes: Sequence[Mapping[str, Any]]) -> str:
    return _table(
        [
            "node",
            "tenant",
            "state",
            "budget ε",
            "spent ε",
            "remaining ε",
            "node's own ε",
            "charges",
        ],
        [
            [
                n.get("name"),
                (n.get("tenant") or {}).get("name"),
                n.get("state"),
                n.get("epsilon_budget"),
                n.get("epsilon_spent"),
                n.get("epsilon_remaining"),
                n.get("epsilon_node_reported"),
                len(n.get("entries") or []),
            ]
            for n in nodes
        ],
        left=3,
    )


def _node_section(node: Mapping[str, Any], runs: Mapping[str, Any]) -> str:
    entries: list[Mapping[str, Any]] = list(node.get("entries") or [])
    name = str(node.get("name"))
    if not entries:
        return f"<h3>{escape(name)}</h3><p class='muted'>No charges recorded.</p>"
    ticks = [
        f"{str(e.get('run_id'))[:4]}·{e.get('round')}{'e' if e.get('kind') == 'evaluate' else ''}"
        for e in entries
    ]
    budget = float(node.get("epsilon_budget") or 0.0)
    epsilon = line_chart(
        f"ε spent by {name} (cumulative, after each charge)",
        "ε",
        [
            Line("ε (coordinator)", [float(e["epsilon_cumulative"]) for e in entries]),
            Line("ε (node's own)", [float(e["epsilon_reported"]) for e in entries]),
            Line(f"budget {budget:g}", [budget] * len(entries), dashed=True),
        ],
        ticks,
    )
    noise = line_chart(
        f"DP-SGD parameters of {name}'s charges",
        "value",
        [
            Line("noise multiplier", [float(e["noise_multiplier"]) for e in entries]),
            Line("sample rate × 10", [10 * float(e["sample_rate"]) for e in entries]),
        ],
        ticks,
    )
    rows = [
        [
            runs.get(str(e.get("run_id")), ({"name": "?"},))[0].get("name"),
            str(e.get("run_id"))[:8],
            e.get("round"),
            e.get("kind"),
            "yes" if e.get("aggregated") else "charged, not aggregated",
            e.get("noise_multiplier"),
            e.get("sample_rate"),
            e.get("steps"),
            e.get("delta"),
            e.get("accountant"),
            e.get("epsilon_cumulative"),
            e.get("epsilon_reported"),
        ]
        for e in entries
    ]
    table = _table(
        [
            "federation",
            "run",
            "round",
            "for",
            "aggregated",
            "σ",
            "q",
            "steps",
            "δ",
            "accountant",
            "ε after",
            "node's ε",
        ],
        rows,
        left=5,
    )
    return f"<h3>{escape(name)}</h3><figure>{epsilon}</figure><figure>{noise}</figure>{table}"


def _federation_totals(
    federations: Sequence[Mapping[str, Any]], nodes: Sequence[Mapping[str, Any]]
) -> str:
    """Per federation: runs, rounds, charges, and each shown node's ε after its last charge
    there (a bar chart against the budgets)."""
    rows, labels, spent, headroom = [], [], [], []
    for federation in federations:
        fid = federation.get("id")
        charges = [
            (n, e) for n in nodes for e in (n.get("entries") or []) if e.get("federation_id") == fid
        ]
        runs = federation.get("runs") or []
        rows.append(
            [
                federation.get("name"),
                len(runs),
                sum(int(r.get("rounds_completed") or 0) for r in runs),
                len(charges),
                len(federation.get("members") or []) + int(federation.get("members_other") or 0),
                max((float(e["epsilon_cumulative"]) for _, e in charges), default=None),
            ]
        )
        for node in nodes:
            mine = [e for n, e in charges if n is node]
            if mine:
                labels.append(f"{str(federation.get('name'))[:10]}/{str(node.get('name'))[:10]}")
                spent.append(float(mine[-1]["epsilon_cumulative"]))
                budget = float(node.get("epsilon_budget") or 0.0)
                headroom.append(max(0.0, budget - spent[-1]))
    table = _table(
        ["federation", "runs", "rounds", "charges", "members", "highest ε after its charges"],
        rows,
    )
    if not labels:
        return table
    chart = stacked_bars(
        "ε after each node's last charge here, and its budget left",
        "ε",
        {"ε spent": spent, "budget left": headroom},
        labels,
    )
    return f"{table}<figure>{chart}</figure>"


def _federation_section(federation: Mapping[str, Any]) -> str:
    privacy = federation.get("privacy") or {}
    policy = _table(["setting", "value"], [[k, v] for k, v in sorted(privacy.items())])
    secagg = federation.get("secure_aggregation") or {}
    parts = [
        f"<h2>Federation {escape(str(federation.get('name')))}</h2>",
        f"<p>Task <code>{escape(str(federation.get('task')))}</code>, definition digest "
        f"<code>{escape(str(federation.get('digest')))}</code>; secure aggregation "
        f"{'on' if secagg.get('enabled') else 'off'}. Members shown: "
        f"{len(federation.get('members') or [])}, other members: "
        f"{federation.get('members_other', 0)}.</p>",
        "<h3>Privacy policy</h3>",
        policy,
        "<h3>Runs</h3>",
        _table(
            ["run", "state", "created", "rounds", "planned ε", "failure"],
            [
                [
                    str(r["id"])[:8],
                    r.get("state"),
                    r.get("created_at"),
                    f"{r.get('rounds_completed')}/{r.get('rounds_planned')}",
                    r.get("planned_epsilon"),
                    r.get("failure"),
                ]
                for r in federation.get("runs", [])
            ],
            left=3,
        ),
    ]
    for run in federation.get("runs", []):
        parts.append(_run_section(run))
    releases = federation.get("releases") or []
    if releases:
        parts += [
            "<h3>Releases</h3>",
            _table(
                ["version", "run", "model digest", "created"],
                [
                    [r["version"], str(r["run_id"])[:8], r["model_digest"], r["created_at"]]
                    for r in releases
                ],
                left=0,
            ),
        ]
    return "".join(parts)


def _run_section(run: Mapping[str, Any]) -> str:
    rounds: list[Mapping[str, Any]] = list(run.get("rounds") or [])
    if not rounds:
        return ""
    ticks = [str(r["round"]) for r in rounds]
    chart = stacked_bars(
        f"Run {str(run['id'])[:8]}: participants and dropouts per round",
        "nodes",
        {
            "aggregated (shown)": [len(r.get("participants") or []) for r in rounds],
            "aggregated (others)": [r.get("participants_other", 0) for r in rounds],
            "refused or dropped": [
                len(r.get("refusals") or {}) + r.get("refusals_other", 0) for r in rounds
            ],
        },
        ticks,
    )
    table = _table(
        ["round", "participants", "refusals", "examples", "seconds"],
        [
            [
                r["round"],
                len(r.get("participants") or []) + r.get("participants_other", 0),
                "; ".join(f"{k[:8]}: {v}" for k, v in (r.get("refusals") or {}).items())
                + (f" (+{r.get('refusals_other')} others)" if r.get("refusals_other") else ""),
                r.get("num_examples"),
                r.get("seconds"),
            ]
            for r in rounds
        ],
        left=0,
    )
    evaluation = run.get("evaluation")
    metrics = ""
    if evaluation:
        flat = [[k, v] for k, v in sorted(evaluation.items()) if not isinstance(v, list | dict)]
        metrics = "<h4>Model metrics (the evaluation's DP release)</h4>" + _table(
            ["metric", "value"], flat
        )
    return f"<figure>{chart}</figure>{table}{metrics}{_membership_section(run)}"


def _membership_section(run: Mapping[str, Any]) -> str:
    """The membership audit: loss distributions of members and non-members (pooled, as
    released) and each node's attack AUC with its interval."""
    audit = run.get("membership_audit")
    if not audit:
        return ""
    edges = [f"≤{e:g}" for e in audit["loss_bin_edges"]] + [f">{audit['loss_bin_edges'][-1]:g}"]
    chart = ""
    pooled = audit.get("pooled")
    if pooled:
        release = pooled["release"]
        shares = [
            Line(label, [c / max(sum(counts), 1) for c in counts])
            for label, counts in (
                ("members", release["members"]),  # training rows; the legend is narrow
                ("non-members", release["nonmembers"]),
            )
        ]
        chart = (
            "<figure>"
            + line_chart(
                f"Run {str(run['id'])[:8]}: per-record loss of the final model, as released",
                "share of rows",
                shares,
                edges,
            )
            + "</figure>"
        )
    rows = [
        [
            item["name"],
            *_auc_cells(item),
            sum(item["release"]["members"]),
            sum(item["release"]["nonmembers"]),
            item["release"]["noise_std"],
        ]
        for item in [*audit["nodes"], *([pooled] if pooled else [])]
    ]
    others = f"<p>{audit['nodes_other']} other member(s) not shown; pooled includes them.</p>"
    return (
        "<h4>Membership-inference audit of the final model</h4>"
        f"<p>{escape(audit['method'])}</p>{chart}"
        + _table(
            [
                "node",
                "AUC",
                f"{audit['confidence']:.0%} interval",
                "members (noised)",
                "non-members (noised)",
                "noise std per count",
            ],
            rows,
        )
        + (others if audit["nodes_other"] else "")
    )


def _auc_cells(item: Mapping[str, Any]) -> list[object]:
    result = item["result"]
    if result["auc"] is None:
        return ["undefined", "–"]
    return [f"{result['auc']:.3f}", f"[{result['ci_low']:.3f}, {result['ci_high']:.3f}]"]
