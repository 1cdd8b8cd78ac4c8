"""``minilm_embeddings``: frozen all-MiniLM-L6-v2 sentence embeddings with a trained head.

The model is called like the other text models, ``model(input_ids, attention_mask,
token_type_ids, position_ids)``, so a node feeds it the token arrays its task prepares. Inside,
a :class:`SentenceEncoder` turns each row of tokens into a fixed feature vector and a
:class:`~lepton_fl.models.tabular_mlp.TabularMLP` head (``hidden = ()``: linear) maps it to the
class logits.

Features: the hidden states of the encoder layers :data:`EMBEDDING_LAYERS` (defined, with the
encoder's width, in the torch-free :mod:`lepton_fl.models.spec`), each averaged over
the row's real tokens (mean pooling, as sentence-transformers pools all-MiniLM-L6-v2) and
L2-normalised, concatenated and scaled to norm ``sqrt(384)``, a fixed constant: about unit size
per coordinate, whatever the data. Layers 3 and 4 rather than the last layer: on the drug reviews'
tuning seeds (100, 101) their pooled states gave the better DP head (federated, eps 8: accuracy
0.66-0.68 and ROC-AUC 0.72-0.75, against 0.65-0.66 and 0.69-0.71 for the last layer).

Privacy and cost: the encoder is a :class:`~lepton_fl.models.frozen.FrozenEncoder`: frozen
(weights as shipped by the package, ``eval`` mode, no dropout), not a submodule (the model's
parameters are the head's alone), loaded on the first forward pass and shared by every copy of
the model, its features cached per token row in the node's trainer.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from lepton_fl.models.frozen import FrozenEncoder
from lepton_fl.models.spec import EMBEDDING_LAYERS, MINILM_WIDTH, check_text_input
from lepton_fl.models.tabular_mlp import TabularMLP
from lepton_fl.models.tokenization import minilm_path, require_text_stack

if TYPE_CHECKING:
    from transformers import BertModel

__all__ = [
    "EMBEDDING_LAYERS",
    "SentenceEmbeddingClassifier",
    "SentenceEncoder",
    "build_minilm_embeddings",
    "minilm_encoder",
]


class SentenceEncoder(FrozenEncoder):
    """A frozen BERT encoder as a feature map: token rows -> pooled, normalised features."""

    def __init__(self, load: functools.partial[BertModel], layers: tuple[int, ...]) -> None:
        super().__init__(MINILM_WIDTH * len(layers), (torch.int64,) * 3)
        self._load_bert = load
        self.layers = layers
        self._scale = math.sqrt(MINILM_WIDTH)

    def _load(self) -> nn.Module:
        return self._load_bert()

    def _encode(self, rows: tuple[torch.Tensor, ...], device: torch.device) -> torch.Tensor:
        ids, mask, types = rows
        bert = self.network(device)
        out = bert(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            token_type_ids=types.to(device),
            output_hidden_states=True,
        )
        weights = mask.to(device=device, dtype=torch.float32).unsqueeze(-1)
        counts = weights.sum(dim=1).clamp_min(1.0)
        pooled = [(out.hidden_states[k] * weights).sum(dim=1) / counts for k in self.layers]
        normalised = [nn.functional.normalize(p, dim=1) for p in pooled]
        scale = self._scale / math.sqrt(len(self.layers))
        return (torch.cat(normalised, dim=1) * scale).to("cpu", dtype=torch.float32)


def _load_minilm() -> BertModel:
    from lepton_fl.models.text import offline_and_quiet

    with offline_and_quiet():
        from transformers import BertModel

        return BertModel.from_pretrained(
            str(minilm_path()), local_files_only=True, add_pooling_layer=False
        )


@functools.cache
def minilm_encoder() -> SentenceEncoder:
    """The process's one frozen all-MiniLM-L6-v2 feature map (loaded on first use)."""
    return SentenceEncoder(functools.partial(_load_minilm), EMBEDDING_LAYERS)


class SentenceEmbeddingClassifier(nn.Module):
    """``(input_ids, attention_mask, token_type_ids, position_ids) -> logits``: frozen
    features, trained head. Only the head is a submodule (its parameters are the model's)."""

    def __init__(self, encoder: SentenceEncoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder  # a plain attribute: not a submodule, no parameters
        self.head = head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Class logits ``(n, num_classes)``; ``position_ids`` is accepted and unused (the
        encoder uses its own, identical, positions)."""
        features = self.encoder.features(input_ids, attention_mask, token_type_ids)
        return self.head(features)  # type: ignore[no-any-return]


def build_minilm_embeddings(
    *, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...], dropout: float
) -> SentenceEmbeddingClassifier:
    """The frozen-MiniLM model with a head drawn from the current torch RNG (``build_model``
    seeds it). Checks that the package is installed; loads the encoder only when first used."""
    check_text_input(input_shape, "minilm_embeddings")
    # fail at build time, not at the first batch, if the text extra is missing
    require_text_stack("the 'minilm_embeddings' model")
    minilm_path()
    encoder = minilm_encoder()
    head = TabularMLP(
        num_features=encoder.width, num_classes=num_classes, hidden=hidden, dropout=dropout
    )
    return SentenceEmbeddingClassifier(encoder, head)
