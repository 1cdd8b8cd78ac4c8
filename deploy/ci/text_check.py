"""Inside a node image built with NODE_EXTRAS=node,text and SECTOR_DATA=text (deploy/ci/e2e.py):
each text model builds from the packaged MiniLM or the tiny tokenizer and runs on tokenised
text, and a text demo partition loads through the node's connector. Prints JSON figures."""

from __future__ import annotations

import json

import torch

from client_node.connectors import load_node_data
from client_node.settings import DataSection
from lepton_fl.datasets import get_task
from lepton_fl.models import ModelSpec, build_model, load_tokenizer

INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
MODELS = {"minilm": "minilm", "minilm_embeddings": "minilm", "tiny_bert": "tiny"}


def main() -> None:
    figures: dict[str, object] = {}
    for name, tokenizer in MODELS.items():
        tokens = load_tokenizer(tokenizer, 32)(["a fine drug", "awful side effects"])
        model = build_model(ModelSpec(name=name), input_shape=(32,), num_classes=2, seed=0)
        with torch.no_grad():
            logits = model(*(torch.as_tensor(tokens[key]) for key in INPUTS))
        if tuple(logits.shape) != (2, 2) or not bool(torch.isfinite(logits).all()):
            raise SystemExit(f"{name}: logits {tuple(logits.shape)} are not two finite pairs")
        figures[name] = "ok"
    task = get_task("drug_reviews")
    split = load_node_data(DataSection(task=task.name, partition=task.partitions[0]))
    if len(split.train) == 0:
        raise SystemExit(f"{task.name}/{task.partitions[0]}: no training examples")
    figures[f"{task.name}/{task.partitions[0]}"] = [len(split.train), len(split.test)]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
