"""Node metrics and their federation aggregate: hand-worked values, cross-checked with
scikit-learn, and the wire contract that carries them (malformed matrices are refused)."""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from torch import nn

from client_node.trainer.evaluation import evaluate
from coordinator.fl.journal import RunJournal, read_journal
from coordinator.fl.rounds import NodeOutcome, RoundOutcome
from coordinator.fl.server_app import aggregate_record, round_record
from lepton_fl import wire
from lepton_fl.config import Member
from lepton_fl.metrics import (
    ClassificationMetrics,
    aggregate_metrics,
    classification_metrics,
    rates_from_confusion,
    validate_confusion,
)


def _binary(p1: list[float]) -> np.ndarray:
    p = np.asarray(p1, dtype=np.float64)
    return np.column_stack([1 - p, p])


def _peaked(predicted: list[int], num_classes: int) -> np.ndarray:
    """0.6 on the predicted class, the rest shared equally (rows sum to 1)."""
    probs = np.full((len(predicted), num_classes), 0.4 / (num_classes - 1))
    probs[np.arange(len(predicted)), predicted] = 0.6
    return probs


# Binary, worked by hand. Predictions (P(1) > 0.5): 1 1 0 | 0 1 1 1 0 ...
BIN_Y = [1, 1, 1, 0, 0, 0, 1, 0]
BIN_P1 = [0.9, 0.8, 0.4, 0.3, 0.6, 0.55, 0.7, 0.1]
# true 0 (rows 3, 4, 5, 7) -> predicted 0 1 1 0; true 1 (rows 0, 1, 2, 6) -> 1 1 0 1.
BIN_CONFUSION = ((2, 2), (1, 3))
# accuracy 5/8; class 1: precision 3/5, recall 3/4, F1 = 2*3 / (2*3 + 2 + 1) = 2/3;
# AUC: of the 16 (positive, negative) pairs the positive scores higher in 4 + 4 + 2 + 4 = 14.

# Three classes, worked by hand.
TRI_Y = [0, 0, 0, 0, 1, 1, 2, 2, 2]
TRI_PRED = [0, 0, 1, 1, 1, 0, 2, 2, 1]
TRI_CONFUSION = ((2, 2, 0), (1, 1, 0), (0, 1, 2))
# true counts (rows) 4 2 3, predicted counts (columns) 3 4 2, correct 2 1 2.
# precision 2/3, 1/4, 2/2 -> macro 23/36; recall 2/4, 1/2, 2/3 -> macro 5/9;
# F1 = 2tp / (row + column): 4/7, 2/6, 4/5 -> macro 179/315; accuracy 5/9.
# One-vs-rest AUC with scores 0.6 (predicted class) or 0.2 (ties count one half):
# class 0: 13/20, class 1: 15/28, class 2: 15/18 -> macro 212/315.


def test_binary_metrics_match_the_hand_worked_values() -> None:
    m = classification_metrics(BIN_Y, _binary(BIN_P1), 2)

    assert m.confusion == BIN_CONFUSION
    assert m.num_examples == 8
    assert m.accuracy == pytest.approx(5 / 8)
    assert m.precision == pytest.approx(3 / 5)
    assert m.recall == pytest.approx(3 / 4)
    assert m.f1 == pytest.approx(2 / 3)
    assert m.roc_auc == pytest.approx(14 / 16)


def test_binary_metrics_agree_with_sklearn() -> None:
    m = classification_metrics(BIN_Y, _binary(BIN_P1), 2)
    pred = (np.asarray(BIN_P1) > 0.5).astype(int)

    assert m.accuracy == pytest.approx(accuracy_score(BIN_Y, pred))
    assert m.precision == pytest.approx(precision_score(BIN_Y, pred))
    assert m.recall == pytest.approx(recall_score(BIN_Y, pred))
    assert m.f1 == pytest.approx(f1_score(BIN_Y, pred))
    assert m.roc_auc == pytest.approx(roc_auc_score(BIN_Y, BIN_P1))
    assert np.array_equal(np.asarray(m.confusion), confusion_matrix(BIN_Y, pred))


def test_three_class_metrics_match_the_hand_worked_values() -> None:
    m = classification_metrics(TRI_Y, _peaked(TRI_PRED, 3), 3)

    assert m.confusion == TRI_CONFUSION
    assert m.accuracy == pytest.approx(5 / 9)
    assert m.precision == pytest.approx(23 / 36)
    assert m.recall == pytest.approx(5 / 9)
    assert m.f1 == pytest.approx(179 / 315)
    assert m.roc_auc == pytest.approx(212 / 315)
    # the hand sums themselves
    assert Fraction(2, 3) + Fraction(1, 4) + Fraction(1) == Fraction(23, 12)
    assert Fraction(13, 20) + Fraction(15, 28) + Fraction(15, 18) == Fraction(212, 105)


def test_three_class_metrics_agree_with_sklearn_macro_and_ovr() -> None:
    probs = _peaked(TRI_PRED, 3)
    m = classification_metrics(TRI_Y, probs, 3)

    assert m.precision == pytest.approx(precision_score(TRI_Y, TRI_PRED, average="macro"))
    assert m.recall == pytest.approx(recall_score(TRI_Y, TRI_PRED, average="macro"))
    assert m.f1 == pytest.approx(f1_score(TRI_Y, TRI_PRED, average="macro"))
    assert m.roc_auc == pytest.approx(
        roc_auc_score(TRI_Y, probs, multi_class="ovr", average="macro")
    )
    assert np.array_equal(np.asarray(m.confusion), confusion_matrix(TRI_Y, TRI_PRED))


def test_random_multiclass_cases_agree_with_sklearn() -> None:
    rng = np.random.default_rng(5)
    for k in (2, 3, 5):
        y = rng.integers(0, k, size=60)
        y[:k] = np.arange(k)  # every class present, so sklearn's OvR is defined
        probs = rng.dirichlet(np.ones(k), size=60)
        pred = probs.argmax(axis=1)
        m = classification_metrics(y, probs, k)
        average = "binary" if k == 2 else "macro"
        kw = {"average": average, "zero_division": 0}
        assert m.precision == pytest.approx(precision_score(y, pred, **kw))
        assert m.recall == pytest.approx(recall_score(y, pred, **kw))
        assert m.f1 == pytest.approx(f1_score(y, pred, **kw))
        expected_auc = (
            roc_auc_score(y, probs[:, 1]) if k == 2 else roc_auc_score(y, probs, multi_class="ovr")
        )
        assert m.roc_auc == pytest.approx(expected_auc)


def test_absent_class_keeps_the_full_shape_and_is_left_out_of_the_macro_average() -> None:
    # class 2 occurs neither in the labels nor in the predictions
    y = [0, 0, 1, 1, 1]
    pred = [0, 1, 1, 1, 0]
    probs = _peaked(pred, 3)
    m = classification_metrics(y, probs, 3)

    assert m.confusion == ((1, 1, 0), (1, 2, 0), (0, 0, 0))
    # class 0: P 1/2, R 1/2; class 1: P 2/3, R 2/3 -> macro over the two classes
    assert m.precision == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m.recall == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m.precision == pytest.approx(precision_score(y, pred, average="macro"))
    # One-vs-rest AUC over the present classes 0 and 1 only. Class 0 scores 0.6 on rows 0, 4
    # (else 0.2): positives 0.6, 0.2 against negatives 0.2, 0.2, 0.6 win 2.5 + 1 of 6 pairs;
    # class 1 scores 0.6 on rows 1-3: positives 0.6, 0.6, 0.2 against 0.2, 0.6 win
    # 1.5 + 1.5 + 0.5 of 6. Both 7/12.
    assert m.roc_auc == pytest.approx(7 / 12)
    expected = np.mean([roc_auc_score(np.asarray(y) == c, probs[:, c]) for c in (0, 1)])
    assert m.roc_auc == pytest.approx(expected)


def test_class_predicted_but_absent_from_the_labels_counts_as_zero() -> None:
    y = [0, 0, 1, 1]
    pred = [0, 2, 1, 1]
    m = classification_metrics(y, _peaked(pred, 3), 3)

    assert m.confusion == ((1, 0, 1), (0, 2, 0), (0, 0, 0))
    # class 2: precision 0/1, recall 0/0 -> 0; both count in the macro average
    assert m.precision == pytest.approx((1 + 1 + 0) / 3)
    assert m.recall == pytest.approx((1 / 2 + 1 + 0) / 3)
    kw = {"average": "macro", "zero_division": 0}
    assert m.precision == pytest.approx(precision_score(y, pred, **kw))
    assert m.recall == pytest.approx(recall_score(y, pred, **kw))
    assert m.f1 == pytest.approx(f1_score(y, pred, **kw))


def test_single_class_labels_have_no_auc() -> None:
    m = classification_metrics([1, 1, 1], _binary([0.9, 0.2, 0.8]), 2)

    assert m.roc_auc is None
    assert m.confusion == ((0, 0), (1, 2))
    assert m.accuracy == pytest.approx(2 / 3)
    assert m.precision == pytest.approx(1.0)
    assert m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(0.8)
    assert classification_metrics([2, 2], _peaked([2, 0], 3), 3).roc_auc is None


def test_no_positive_anywhere_gives_zero_not_nan() -> None:
    m = classification_metrics([0, 0], _binary([0.1, 0.2]), 2)
    assert (m.accuracy, m.precision, m.recall, m.f1, m.roc_auc) == (1.0, 0.0, 0.0, 0.0, None)


@pytest.mark.parametrize(
    ("labels", "probs", "k", "match"),
    [
        ([], np.zeros((0, 2)), 2, "empty"),
        ([0, 1], np.full((2, 3), 1 / 3), 2, r"\(n, 2\)"),
        ([0, 2], _binary([0.1, 0.9]), 2, r"\[0, 1\]"),
        ([0, -1], _binary([0.1, 0.9]), 2, r"\[0, 1\]"),
        ([0, 1], np.array([[0.5, np.nan], [0.2, 0.8]]), 2, "finite"),
        ([0.5, 1], _binary([0.1, 0.9]), 2, "whole"),
        (["no", "yes"], _binary([0.1, 0.9]), 2, "whole"),
        ([0, 0], np.ones((2, 1)), 1, "at least 2"),
    ],
)
def test_bad_inputs_are_refused(labels: list[float], probs: np.ndarray, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(labels, probs, k)


# -- aggregation ---------------------------------------------------------------------------


def _nodes() -> dict[str, ClassificationMetrics]:
    return {
        "a": classification_metrics(BIN_Y, _binary(BIN_P1), 2),  # 8 rows, see above
        "b": classification_metrics([0, 1], _binary([0.2, 0.9]), 2),  # 2 rows, all right
        "c": classification_metrics([1, 1, 1], _binary([0.9, 0.2, 0.8]), 2),  # 3, no AUC
    }


def test_aggregate_two_nodes_is_the_example_weighted_mean() -> None:
    nodes = _nodes()
    agg = aggregate_metrics({"a": nodes["a"], "b": nodes["b"]}, losses={"a": 0.5, "b": 0.2})

    assert agg.num_examples == 10
    assert agg.accuracy == pytest.approx((8 * 5 / 8 + 2 * 1) / 10)  # 0.7, not the plain 0.8125
    assert agg.precision == pytest.approx((8 * 3 / 5 + 2) / 10)
    assert agg.recall == pytest.approx((8 * 3 / 4 + 2) / 10)
    assert agg.f1 == pytest.approx((8 * 2 / 3 + 2) / 10)
    assert agg.roc_auc == pytest.approx((8 * 14 / 16 + 2) / 10)
    assert agg.loss == pytest.approx((8 * 0.5 + 2 * 0.2) / 10)
    assert agg.roc_auc_skipped == ()
    # pooled: [[2, 2], [1, 3]] + [[1, 0], [0, 1]]
    assert agg.confusion == ((3, 2), (1, 4))
    assert agg.pooled_accuracy == pytest.approx(7 / 10)
    assert agg.pooled_accuracy == pytest.approx(agg.accuracy)
    assert agg.pooled_precision == pytest.approx(4 / 6)
    assert agg.pooled_recall == pytest.approx(4 / 5)
    assert agg.pooled_f1 == pytest.approx(8 / 11)


def test_aggregate_skips_undefined_auc_and_says_where() -> None:
    agg = aggregate_metrics(_nodes())

    assert agg.roc_auc_skipped == ("c",)
    assert agg.roc_auc == pytest.approx((8 * 14 / 16 + 2 * 1) / 10)  # c's rows not counted
    assert agg.accuracy == pytest.approx((5 + 2 + 2) / 13)  # c counts everywhere else
    assert agg.loss is None
    assert agg.confusion == ((3, 2), (2, 6))
    assert aggregate_metrics({"c": _nodes()["c"]}).roc_auc is None


def test_aggregate_refuses_what_cannot_be_combined() -> None:
    nodes = _nodes()
    three = classification_metrics(TRI_Y, _peaked(TRI_PRED, 3), 3)
    with pytest.raises(ValueError, match="disagree on the number of classes"):
        aggregate_metrics({"a": nodes["a"], "t": three})
    with pytest.raises(ValueError, match="no node"):
        aggregate_metrics({})
    with pytest.raises(ValueError, match="no loss given for node"):
        aggregate_metrics(nodes, losses={"a": 0.1})


def test_rates_from_confusion_and_validation() -> None:
    assert rates_from_confusion(BIN_CONFUSION) == pytest.approx((5 / 8, 3 / 5, 3 / 4, 2 / 3))
    assert validate_confusion([[1, 2], [3, 4]], num_examples=10) == ((1, 2), (3, 4))
    for bad, match in [
        ([[1, 2]], "at least 2 x 2"),
        ([[1, 2], [3]], "square"),
        ([[1, -2], [3, 4]], "non-negative"),
        ([[1, 2.0], [3, 4]], "whole count"),
        ([[1, True], [3, 4]], "whole count"),
        ("ab", "list of rows"),
    ]:
        with pytest.raises(ValueError, match=match):
            validate_confusion(bad)
    with pytest.raises(ValueError, match="counts 10 examples but num_examples is 9"):
        validate_confusion([[1, 2], [3, 4]], num_examples=9)


# -- the node's evaluate() and the wire ------------------------------------------------------


def test_evaluate_reports_the_same_metrics_as_the_module() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    result = evaluate(model, x, y, device=torch.device("cpu"))
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x)).double(), dim=1).numpy()
    expected = classification_metrics(y, probs, 3)

    assert result.confusion == expected.confusion
    assert sum(map(sum, result.confusion)) == 40
    assert result.accuracy == pytest.approx(expected.accuracy)
    assert (result.precision, result.recall, result.f1) == pytest.approx(
        (expected.precision, expected.recall, expected.f1)
    )
    assert result.roc_auc == pytest.approx(expected.roc_auc)


def _full(m: ClassificationMetrics, loss: float = 0.5) -> wire.EvalMetrics:
    return wire.EvalMetrics(
        num_examples=m.num_examples,
        loss=loss,
        accuracy=m.accuracy,
        roc_auc=m.roc_auc,
        precision=m.precision,
        recall=m.recall,
        f1=m.f1,
        confusion=m.confusion,
    )


def _through_bytes_eval(reply: wire.EvaluateReply) -> wire.EvaluateReply:
    data = wire.records_to_bytes(wire.evaluate_reply_to_records(reply))
    return wire.evaluate_reply_from_records(wire.records_from_bytes(data))


def test_wire_round_trips_the_full_metrics() -> None:
    ev = _full(classification_metrics(TRI_Y, _peaked(TRI_PRED, 3), 3))
    back = _through_bytes_eval(wire.EvaluateReply(status="ok", evaluation=ev, epsilon=0.4))
    assert back.evaluation == ev
    assert back.evaluation is not None
    assert back.evaluation.confusion == TRI_CONFUSION

    released = dataclasses.replace(ev, loss=None, roc_auc=None)  # what a node sends now
    back = _through_bytes_eval(wire.EvaluateReply(status="ok", evaluation=released))
    assert back.evaluation == released


def test_wire_still_accepts_an_evaluation_without_the_new_fields() -> None:
    ev = wire.EvalMetrics(num_examples=40, loss=0.5, accuracy=0.8, roc_auc=None)
    back = _through_bytes_eval(wire.EvaluateReply(status="ok", evaluation=ev))
    assert back.evaluation == ev
    assert ev.classification() is None


def _tampered(**changes: object) -> MetricRecord:
    ev = _full(classification_metrics(BIN_Y, _binary(BIN_P1), 2))
    records = wire.evaluate_reply_to_records(wire.EvaluateReply(status="ok", evaluation=ev))
    metrics = records["metrics"]
    assert isinstance(metrics, MetricRecord)
    for key, value in changes.items():
        if value is None:
            del metrics[key]
        else:
            metrics[key] = value  # type: ignore[assignment]
    return metrics


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"eval-confusion": [2, 2, 1]}, r"2 x 2 = 4 counts, got 3"),
        ({"eval-confusion": [2, 2, 1, 3, 0]}, r"2 x 2 = 4 counts, got 5"),
        ({"eval-confusion": [3, 2, -1, 4]}, "non-negative"),
        ({"eval-confusion": [2.0, 2.0, 1.0, 3.0]}, "whole count"),
        ({"eval-confusion": [2, 2, 1, 4]}, "counts 9 examples but num_examples is 8"),
        ({"eval-confusion": [3, 1, 1, 3]}, "'eval-accuracy' .* disagrees"),
        ({"eval-f1": 0.5}, "'eval-f1' .* disagrees"),
        ({"eval-num-classes": 1}, "whole number >= 2"),
        ({"eval-num-classes": 3}, r"3 x 3 = 9 counts, got 4"),
        ({"eval-precision": None}, "incomplete: 'eval-precision' missing"),
        ({"eval-confusion": None}, "incomplete: 'eval-confusion' missing"),
        ({"eval-accuracy": 1.5}, r"must lie in \[0, 1\]"),
        ({"eval-roc-auc": -0.1}, r"must lie in \[0, 1\]"),
        ({"eval-num-examples": 0}, "counts 8 examples but num_examples is 0"),
        ({"eval-num-examples": 8.0}, "positive whole number"),
    ],
)
def test_wire_refuses_malformed_evaluations(changes: dict[str, object], match: str) -> None:
    metrics = _tampered(**changes)
    records = wire.evaluate_reply_to_records(wire.EvaluateReply(status="ok"))
    records["metrics"] = metrics
    data = wire.records_to_bytes(records)
    with pytest.raises(wire.WireError, match=match):
        wire.evaluate_reply_from_records(wire.records_from_bytes(data))


def test_wire_untampered_control_decodes() -> None:
    # the fixture of the refusals above is valid as it stands
    records = wire.evaluate_reply_to_records(wire.EvaluateReply(status="ok"))
    records["metrics"] = _tampered()
    back = wire.evaluate_reply_from_records(records)
    assert back.evaluation is not None
    assert back.evaluation.confusion == BIN_CONFUSION


def test_encoding_refuses_a_partial_evaluation() -> None:
    ev = wire.EvalMetrics(num_examples=8, loss=0.5, accuracy=0.5, roc_auc=None, precision=0.5)
    with pytest.raises(ValueError, match="together"):
        wire.evaluate_reply_to_records(wire.EvaluateReply(status="ok", evaluation=ev))


# -- the coordinator's journal record --------------------------------------------------------


def test_coordinator_aggregate_record_is_weighted_and_names_who_is_left_out() -> None:
    nodes = _nodes()
    evaluations = {
        "a": _full(nodes["a"], loss=0.5),
        "b": _full(nodes["b"], loss=0.2),
        "old": wire.EvalMetrics(num_examples=100, loss=9.0, accuracy=0.0, roc_auc=None),
    }
    record = aggregate_record(evaluations)

    assert record is not None
    assert record.metrics is not None
    assert record.left_out == ("old",)
    assert record.metrics.nodes == ("a", "b")
    assert record.metrics.num_examples == 10
    assert record.metrics.accuracy == pytest.approx(0.7)
    assert record.metrics.loss == pytest.approx(0.44)
    assert record.metrics.confusion == ((3, 2), (1, 4))
    # DP releases: no loss, no AUC; a release noised to no examples is left out
    released = {
        name: dataclasses.replace(ev, loss=None, roc_auc=None)
        for name, ev in evaluations.items()
        if name != "old"
    }
    empty = wire.EvalMetrics(0, None, 0.0, None, 0.0, 0.0, 0.0, ((0, 0), (0, 0)))
    dp = aggregate_record({**released, "noised-away": empty})
    assert dp is not None
    assert dp.metrics is not None
    assert dp.metrics.loss is None
    assert dp.metrics.roc_auc is None
    assert dp.left_out == ("noised-away",)
    assert dp.metrics.accuracy == pytest.approx(0.7)
    assert aggregate_record({"old": evaluations["old"]}) is None
    three = _full(classification_metrics(TRI_Y, _peaked(TRI_PRED, 3), 3))
    mixed = aggregate_record({"a": evaluations["a"], "t": three})
    assert mixed is not None
    assert mixed.metrics is None
    assert "disagree on the number of classes" in str(mixed.error)
    assert mixed.as_dict() == {"error": mixed.error, "left_out": []}


def test_round_record_in_the_journal_carries_each_node_and_the_federation(tmp_path: Path) -> None:
    nodes = _nodes()

    def ok(name: str, node_id: int, m: ClassificationMetrics) -> NodeOutcome:
        charge = wire.PrivacyCharge(1.2, 0.1, 10, 1e-5, "rdp", 0.5, 8.0)
        reply = wire.TrainReply(status="ok", num_examples=m.num_examples * 4, charge=charge)
        return NodeOutcome(member=Member(name=name, node_id=node_id), status="ok", reply=reply)

    refused = NodeOutcome(
        member=Member(name="c", node_id=3), status="refused", code="budget", reason="over"
    )
    outcome = RoundOutcome(
        round=1, weights=[], outcomes=[ok("a", 1, nodes["a"]), ok("b", 2, nodes["b"]), refused]
    )
    journal = RunJournal(tmp_path / "journal.jsonl")
    journal.append(round_record(outcome))
    (entry,) = read_journal(journal.path).rounds
    line = json.loads(journal.path.read_text())

    assert entry.participants == ("a", "b")  # the refused node is not counted
    assert entry.num_examples == 40
    charge = entry.nodes["a"].charge
    assert charge is not None
    assert charge.epsilon == 0.5
    assert entry.nodes["c"].code == "budget"
    # no loss and no evaluation ride in a round (issue 10): only DP-covered figures
    assert not any("loss" in key or "eval" in key for key in line)
    assert not any("loss" in key or "eval" in key for key in line["nodes"]["a"])


# -- the demo's table ------------------------------------------------------------------------


def test_demo_table_shows_node_and_federation_metrics() -> None:
    from rich.console import Console

    from lepton.demo import _print_table, federated_figures

    nodes = _nodes()
    evaluations = {"a": _full(nodes["a"], 0.5), "b": _full(nodes["b"], 0.2)}
    aggregate = aggregate_record(evaluations)
    assert aggregate is not None
    summary = {
        "federation": "heart-disease",
        "rounds_completed": 2,
        "delta": 1e-5,
        "accountant": "rdp",
        "secagg": None,
        "nodes": [
            {
                "name": name,
                "num_examples": 50,
                "local_only": None,
                "federated": federated_figures(ev),
                "epsilon": 0.5,
                "epsilon_budget": 1.0,
                "epsilon_coordinator_ledger": 0.5,
            }
            for name, ev in evaluations.items()
        ],
        "federation_metrics": aggregate.as_dict(),
        "wall_seconds": 1.0,
        "ledger_reconciliation": {"ok": True, "nodes": {"a": {}, "b": {}}},
        "release": None,
        "audit": {"ok": True, "events": 3},
    }
    console = Console(record=True, width=250)
    _print_table(console, summary)
    text = console.export_text()

    assert "fed F1" in text
    assert "0.667" in text  # node a's F1 (2/3)
    assert "federation (weighted)" in text
    assert "0.700" in text  # the weighted accuracy
    assert "0.733" in text  # the weighted F1, (8 * 2/3 + 2) / 10
    assert "[[3, 2], [1, 4]]" in text  # the pooled confusion matrix
