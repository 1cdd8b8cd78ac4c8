"""The per-wave stage breakdown of bench/secagg.py, on hand-made task rows.

The bench's figures go into the issue notes and the README, so the arithmetic that turns the
executors' ``task stages`` log lines into "where a second wave's time goes" is pinned here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import secagg  # noqa: E402  (bench/ is not a package)
from stock_flower import BACK_STAGE, creation_groups  # noqa: E402


def _task(kind: str, created: float, *, claimed: float, pushed: float) -> dict[str, Any]:
    """One task row: input 0.01 s after the claim, the handler done 0.01 s before the push."""
    return {
        "type": kind,
        "created": created,
        "claimed": claimed,
        "input": claimed + 0.01,
        "handled": pushed - 0.01,
        "pushed": pushed,
    }


def _secure_round(start: float, *, last_a: float, unmask_at: float) -> list[dict[str, Any]]:
    """Two nodes: wave A at `start` (node 2's reply last, pushed at `last_a`), the unmask
    wave at `unmask_at` (node 1's reply last)."""
    return [
        _task("train", start, claimed=start + 0.2, pushed=start + 0.5),
        _task("train", start + 0.01, claimed=start + 0.3, pushed=last_a),
        _task("query", unmask_at, claimed=unmask_at + 0.3, pushed=unmask_at + 0.4),
        _task("query", unmask_at + 0.01, claimed=unmask_at + 0.1, pushed=unmask_at + 0.2),
    ]


def test_a_secure_round_splits_into_both_waves_and_the_gap_between() -> None:
    setup = [
        _task("query", 9.0, claimed=9.1, pushed=9.2),
        _task("query", 9.5, claimed=9.6, pushed=9.7),
    ]
    rows = setup + _secure_round(10.0, last_a=10.8, unmask_at=11.0)
    rows += _secure_round(20.0, last_a=20.6, unmask_at=21.0)
    rounds = [{"round": 1, "seconds": 1.6}, {"round": 2, "seconds": 1.7}]
    stages = secagg.wave_stages(rounds, rows)
    # round 1 (with the session setup) is not counted; round 2 alone:
    assert stages["wave A: to the node's executor"] == pytest.approx(0.29)  # 20.01 -> 20.3
    assert stages["wave A: trainer (checks, DP-SGD, ledger)"] == pytest.approx(0.28)
    assert stages["between the waves (ServerApp: replies, masked sum)"] == pytest.approx(0.4)
    assert stages["wave B: to the node's executor"] == pytest.approx(0.3)  # node 1, 21.0
    assert stages["wave B: reply to the SuperNode"] == pytest.approx(0.01)
    assert stages[BACK_STAGE] == pytest.approx(20.0 + 1.7 - 21.4)


def test_a_plain_round_has_one_wave_and_mismatched_rows_give_nothing() -> None:
    rows = [
        _task("train", 5.0, claimed=5.2, pushed=5.6),
        _task("train", 8.0, claimed=8.1, pushed=8.5),
        _task("train", 8.02, claimed=8.2, pushed=8.4),
    ]
    rounds = [{"round": 1, "seconds": 1.0}, {"round": 2, "seconds": 0.9}]
    stages = secagg.wave_stages(rounds, rows)
    assert stages["to the node's executor"] == pytest.approx(0.1)  # the reply pushed last
    assert stages[BACK_STAGE] == pytest.approx(8.0 + 0.9 - 8.5)
    assert not any(label.startswith("wave") for label in stages)
    assert secagg.wave_stages(rounds[:1], rows) == {}  # a round missing from the journal


def test_waves_group_by_creation_time() -> None:
    rows = [_task("train", t, claimed=t, pushed=t) for t in (1.0, 1.04, 1.2, 3.0)]
    assert [len(g) for g in creation_groups(rows)] == [2, 1, 1]
