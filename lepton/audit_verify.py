"""`lepton audit verify`: check a privacy report offline, trusting nothing but a public key.

In order: the coordinator's detached signature over the report's canonical JSON, the audit
checkpoint the report carries (signed by the same key), and every epsilon the report
states, recomputed from the recorded history with two accountants that share no code:
Opacus (the accountant the history was charged under, RDP or PRV) and Google's
dp-accounting (RDP, or PLD for PRV). A stated epsilon below what either accountant gives,
by more than the tolerance, fails. Stating more is allowed: it is conservative.

Needs only ``lepton_fl`` (no coordinator, no network).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lepton_fl.crypto.checkpoint import CheckpointError, verify_checkpoint
from lepton_fl.crypto.detached import SignatureError, verify_detached
from lepton_fl.privacy import AccountantStep, PrivacyAccountingError
from lepton_fl.privacy.crosscheck import (
    ABSOLUTE_TOLERANCE,
    cross_check,
    cross_check_prefixes,
)
from lepton_fl.privacy.membership import MembershipRelease, pool_releases, result_fields
from lepton_fl.report_schema import REPORT_FORMAT, PrivacyReport

DEFAULT_TOLERANCE = 0.02
"""Relative: a stated epsilon may be at most 2% below an accountant's. Measured (δ 1e-5):
dp-accounting's RDP is never below Opacus's and within 0.9% of it up to ε 20 (above, it
drops fractional orders whose series does not converge and is looser: +1.6% at ε 22);
Opacus's PRV is 0.009–0.015 above dp-accounting's PLD (it adds its error margin)."""


class ReportFileError(ValueError):
    """The report or its signature cannot be read."""


@dataclass
class Verification:
    """What was checked, and every failure as a sentence."""

    checks: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def check(self, passed: bool, failure: str) -> None:
        self.checks += 1
        if not passed:
            self.failures.append(failure)


def signature_path(report: Path) -> Path:
    """Where the report's detached signature is kept by default."""
    return report.with_name(report.name + ".sig")


def load_report(report: Path, signature: Path | None = None) -> tuple[dict[str, Any], Any]:
    """The report and its detached signature (a ``{"report", "signature"}`` file holds both)."""
    document = _read_json(report)
    if isinstance(document, dict) and set(document) == {"report", "signature"}:
        return document["report"], document["signature"]
    if not isinstance(document, dict):
        raise ReportFileError(f"{report} does not hold a JSON object")
    return document, _read_json(signature or signature_path(report))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ReportFileError(f"{path} does not exist") from err
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ReportFileError(f"{path} is not readable JSON ({err})") from err


def verify_report(
    report: Mapping[str, Any],
    signature: object,
    public_key_pem: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Verification:
    """Check signature, checkpoint and every epsilon of ``report``."""
    result = Verification()
    if signature is None:
        result.check(False, "signature: the report carries none; do not trust it")
    else:
        try:
            verify_detached(REPORT_FORMAT, report, signature, public_key_pem)
            result.check(True, "")
        except SignatureError as err:
            result.check(False, f"signature: {err.message}")
    try:
        PrivacyReport.model_validate(report)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors()[:5]
        )
        result.check(False, f"schema {REPORT_FORMAT}: {problems}")
        return result
    result.check(True, "")
    _check_checkpoint(report.get("audit_checkpoint"), public_key_pem, result)
    nodes = list(report["nodes"])
    for node in nodes:
        _check_node(node, tolerance, result)
    _check_participation(report, result)
    _check_membership_audits(report, result)
    return result


def _check_membership_audits(report: Mapping[str, Any], result: Verification) -> None:
    """Each membership audit's figures follow from its stated releases (post-processing,
    recomputed here), the pooled release is the nodes' sum when every node is shown, and
    every node's release is paid for by an evaluate charge of that run in its history."""
    evaluated = {
        node["id"]: {e["run_id"] for e in node["entries"] if e["kind"] == "evaluate"}
        for node in report["nodes"]
    }
    for federation in report["federations"]:
        for run in federation["runs"]:
            audit = run.get("membership_audit")
            if audit is None:
                continue
            where = f"run {run['id'][:8]} membership audit"
            shown = [*audit["nodes"], *([audit["pooled"]] if audit["pooled"] else [])]
            for item in shown:
                release = _membership_release(item["release"], where, result)
                if release is None:
                    continue
                stated, computed = item["result"], result_fields(release)
                result.check(
                    all(_same(stated[k], computed[k], _TOLERANCES[k]) for k in computed),
                    f"{where}, {item['name']}: stated AUC {stated} does not follow from its "
                    f"release, which gives {computed}",
                )
            for item in audit["nodes"]:
                if item["node_id"] in evaluated:
                    result.check(
                        run["id"] in evaluated[item["node_id"]],
                        f"{where}: node {item['name']} released loss histograms but its history "
                        "has no evaluate charge for the run: the release was not paid for",
                    )
            if audit["nodes_other"] == 0 and audit["pooled"] is not None:
                releases = [
                    _membership_release(i["release"], where, result) for i in audit["nodes"]
                ]
                pooled = pool_releases([r for r in releases if r is not None])
                stated_pool = audit["pooled"]["release"]
                result.check(
                    pooled is not None
                    and list(pooled.members) == stated_pool["members"]
                    and list(pooled.nonmembers) == stated_pool["nonmembers"]
                    and math.isclose(pooled.noise_std, stated_pool["noise_std"], rel_tol=1e-9),
                    f"{where}: the pooled release is not the sum of the nodes' releases",
                )
            pooled_result = audit["pooled"]["result"] if audit["pooled"] else None
            if pooled_result and pooled_result["auc"] is not None:
                result.notes.append(
                    f"{where}: pooled AUC {pooled_result['auc']:.3f} "
                    f"[{pooled_result['ci_low']:.3f}, {pooled_result['ci_high']:.3f}] "
                    f"({audit['confidence']:.0%}; 0.5 means the losses tell nothing)"
                )


def _membership_release(
    fields: Mapping[str, Any], where: str, result: Verification
) -> MembershipRelease | None:
    try:
        return MembershipRelease(
            tuple(fields["members"]), tuple(fields["nonmembers"]), float(fields["noise_std"])
        )
    except (KeyError, TypeError, ValueError) as err:
        result.check(False, f"{where}: a release is malformed ({err})")
        return None


#: The AUC is arithmetic on the stated counts and must match; the interval is a seeded
#: bootstrap, which another numpy may draw differently (Monte Carlo error about 0.005 at
#: 2000 draws), so it may differ by this much.
_TOLERANCES = {"auc": 1e-9, "ci_low": 0.03, "ci_high": 0.03}


def _same(stated: object, computed: float | None, tolerance: float) -> bool:
    if computed is None or stated is None:
        return stated is None and computed is None
    return isinstance(stated, int | float) and math.isclose(stated, computed, abs_tol=tolerance)


def _check_participation(report: Mapping[str, Any], result: Verification) -> None:
    """Every round a node of the report took part in has its training charge: a charge
    dropped from a node's history (to lower its epsilon) shows here, even re-signed."""
    charged = {
        node["id"]: {(e["run_id"], e["round"]) for e in node["entries"] if e["kind"] == "train"}
        for node in report["nodes"]
    }
    names = {node["id"]: node["name"] for node in report["nodes"]}
    for federation in report["federations"]:
        for run in federation["runs"]:
            for rnd in run["rounds"]:
                for node_id in rnd["participants"]:
                    if node_id not in charged:
                        continue
                    result.check(
                        (run["id"], rnd["round"]) in charged[node_id],
                        f"node {names[node_id]} took part in run {run['id'][:8]} round "
                        f"{rnd['round']}, but its history has no charge for that round: an "
                        "entry was dropped",
                    )


def _check_checkpoint(signed: object, public_key_pem: str, result: Verification) -> None:
    if signed is None:
        result.check(False, "the report carries no audit checkpoint")
        return
    try:
        checkpoint = verify_checkpoint(signed, public_key_pem)
    except CheckpointError as err:
        result.check(False, f"audit checkpoint: {err.message}")
        return
    result.check(True, "")
    result.notes.append(
        f"audit checkpoint: row {checkpoint.seq}, head {checkpoint.head_hash[:16]}…, signed "
        f"{checkpoint.at} (keep it: POST it to /audit/verification later)"
    )


def _check_node(node: Mapping[str, Any], tolerance: float, result: Verification) -> None:
    name = str(node.get("name", node.get("id", "?")))
    entries = list(node.get("entries") or [])
    computed = 0.0
    try:
        history = [
            AccountantStep(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in entries
        ]
        settings = {(e["delta"], e["accountant"]) for e in entries}
        stated = [e["epsilon_cumulative"] for e in entries]
        if len(settings) == 1:  # the usual case: one pass of each accountant
            ((delta, accountant),) = settings
            verdicts = cross_check_prefixes(
                history, delta=delta, accountant=accountant, reported=stated, tolerance=tolerance
            )
        else:  # each prefix at the delta and accountant of its latest entry
            verdicts = [
                cross_check(
                    history[: i + 1],
                    delta=e["delta"],
                    accountant=e["accountant"],
                    reported=e["epsilon_cumulative"],
                    tolerance=tolerance,
                )
                for i, e in enumerate(entries)
            ]
    except (KeyError, TypeError) as err:
        result.check(
            False, f"node {name}: a ledger entry lacks a field or has a wrong type ({err})"
        )
        return
    except PrivacyAccountingError as err:
        result.check(False, f"node {name}: its history's epsilon cannot be recomputed: {err}")
        return
    for i, (entry, verdict) in enumerate(zip(entries, verdicts, strict=True)):
        where = (
            f"node {name}, entry {i + 1} (run {str(entry.get('run_id'))[:8]}, "
            f"round {entry.get('round')}, {entry.get('kind')})"
        )
        result.check(verdict.ok, f"{where}: {verdict.problem}")
        computed = max(verdict.opacus_epsilon, verdict.dp_accounting_epsilon)
    spent = node.get("epsilon_spent")
    budget = node.get("epsilon_budget")
    remaining = node.get("epsilon_remaining")
    if not (
        isinstance(spent, int | float)
        and isinstance(budget, int | float)
        and isinstance(remaining, int | float)
        and all(_number(x) for x in (spent, budget, remaining))
    ):
        result.check(False, f"node {name}: epsilon_spent, epsilon_budget or remaining missing")
        return
    result.check(
        spent >= computed * (1 - tolerance) - ABSOLUTE_TOLERANCE,
        f"node {name}: epsilon_spent {spent:.4f} is below the {computed:.4f} its history supports",
    )
    result.check(
        math.isclose(remaining, max(0.0, budget - spent), rel_tol=1e-9, abs_tol=1e-9),
        f"node {name}: epsilon_remaining {remaining:.4f} is not its budget {budget:.4f} "
        f"minus epsilon_spent {spent:.4f}",
    )


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def summary_lines(result: Verification, nodes: Sequence[Any]) -> list[str]:
    """What `lepton audit verify` prints."""
    entries = sum(len(n.get("entries") or []) for n in nodes if isinstance(n, Mapping))
    lines = [*result.notes]
    lines += [f"FAILED: {failure}" for failure in result.failures]
    verdict = "verified" if result.ok else f"{len(result.failures)} check(s) FAILED"
    lines.append(
        f"Privacy report {verdict}: signature, checkpoint and {entries} ledger entries of "
        f"{len(nodes)} node(s) recomputed with Opacus and dp-accounting ({result.checks} checks)."
    )
    return lines
