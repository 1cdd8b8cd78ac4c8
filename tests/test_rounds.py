"""FedAvg aggregation and the classification of node replies."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict

from coordinator.fl.rounds import classify_records, classify_reply, weighted_average
from lepton_fl.config import Member
from lepton_fl.wire import TrainReply, train_reply_to_records


def test_weighted_average_weights_by_examples() -> None:
    a = [np.array([0.0, 0.0], dtype=np.float32)]
    b = [np.array([4.0, 8.0], dtype=np.float32)]
    (avg,) = weighted_average([(a, 1), (b, 3)])
    np.testing.assert_allclose(avg, [3.0, 6.0])
    assert avg.dtype == np.float32


def test_weighted_average_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes"):
        weighted_average([([np.zeros(2)], 1), ([np.zeros(3)], 1)])


def test_weighted_average_rejects_no_examples() -> None:
    with pytest.raises(ValueError, match="no examples"):
        weighted_average([([np.zeros(2)], 0)])


MEMBER = Member(name="clinic", node_id=5)


def test_classify_missing_reply_is_dropped() -> None:
    assert classify_reply(MEMBER, None).status == "dropped"


def test_classify_refusal_keeps_reason() -> None:
    content = train_reply_to_records(TrainReply("refused", "budget_exhausted", "no"))
    outcome = classify_records(MEMBER, content)
    assert (outcome.status, outcome.code, outcome.reason) == ("refused", "budget_exhausted", "no")


def test_classify_malformed_reply_is_an_error_not_a_crash() -> None:
    outcome = classify_records(MEMBER, RecordDict())
    assert outcome.status == "error"
    assert outcome.code == "malformed_message"


def test_classify_empty_update_is_an_error() -> None:
    content = train_reply_to_records(TrainReply("ok", num_examples=0))
    assert classify_records(MEMBER, content).code == "empty_update"
