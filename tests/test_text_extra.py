"""A node installed without the `text` extra (transformers, tokenizers, the packaged MiniLM)
refuses text models, tokenizers and text data with what to install, before building anything.

The packages are hidden from this process (``sys.modules[name] = None``: imports fail and
``importlib.util.find_spec`` answers None, as on an installation without them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from client_node.connectors import ConnectorError, load_node_data
from client_node.settings import DataSection
from lepton_fl.datasets import TaskInfo, TextSpec
from lepton_fl.datasets.examples import LocalSplit
from lepton_fl.models import ModelSpec, build_model, load_tokenizer
from lepton_fl.models.tokenization import require_text_stack

TEXT_MODELS = ("tiny_bert", "minilm", "minilm_embeddings")


@pytest.fixture
def no_text_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("transformers", "tokenizers"):
        monkeypatch.setitem(sys.modules, name, None)


def test_the_text_stack_passes_where_it_is_installed() -> None:
    require_text_stack("the test")  # this environment installs the `text` extra


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_a_text_model_names_the_extra(no_text_stack: None, name: str) -> None:
    with pytest.raises(ValueError, match=r"lepton-fl\[text\]") as caught:
        build_model(ModelSpec(name=name), input_shape=(16,), num_classes=2, seed=0)
    message = str(caught.value)
    assert f"'{name}' model" in message
    assert "transformers" in message
    assert "NODE_EXTRAS=node,text" in message


@pytest.mark.parametrize("tokenizer", ["tiny", "minilm"])
def test_a_tokenizer_names_the_extra(no_text_stack: None, tokenizer: str) -> None:
    with pytest.raises(ValueError, match=r"needs tokenizers, .*lepton-fl\[text\]"):
        load_tokenizer(tokenizer, 16)


def _unpartitioned(partition: str, **_: Any) -> LocalSplit:
    raise AssertionError(f"no registered partitions ({partition})")


def test_text_data_on_a_node_without_the_extra_is_refused_with_what_to_install(
    no_text_stack: None, tmp_path: Path
) -> None:
    path = tmp_path / "reviews.jsonl"
    rows = [{"text": f"review number {k}", "label": "good" if k % 2 else "bad"} for k in range(8)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    task = TaskInfo(
        name="reviews",
        description="short reviews written by the test",
        schema=None,
        partitions=(),
        loader=_unpartitioned,
        num_classes=2,
        modality="text",
        labels=("bad", "good"),
        text=TextSpec(tokenizer="tiny", max_length=16),
    )
    data = DataSection.model_validate({"task": "reviews", "source": "jsonl", "path": str(path)})

    with pytest.raises(ConnectorError) as caught:
        load_node_data(data, task=task)

    assert caught.value.code == "no_tokenizer"
    assert "lepton-fl[text]" in str(caught.value)
    assert path.read_text(encoding="utf-8").count("\n") == len(rows), "the data is untouched"
