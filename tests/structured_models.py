"""Tiny BERT-class models of four families and a training loop, for the structured pruning tests."""

from __future__ import annotations

import torch
import transformers

FAMILIES = ("bert", "roberta", "distilbert", "mpnet")


def make_model(
    family: str = "bert",
    seed: int = 0,
    layers: int = 3,
    heads: int = 4,
    ffn: int = 64,
    labels: int = 2,
    vocab: int = 100,
):
    """A freshly initialised sequence classifier of `family` (hidden 32), deterministic per seed."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, num_labels=labels)
    if family == "distilbert":
        config = transformers.DistilBertConfig(
            dim=32,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=ffn,
            dropout=0.0,
            attention_dropout=0.0,
            max_position_embeddings=64,
            seq_classif_dropout=0.0,
            **common,
        )
        return transformers.DistilBertForSequenceClassification(config).eval()
    config_cls, model_cls = {
        "bert": (transformers.BertConfig, transformers.BertForSequenceClassification),
        "roberta": (transformers.RobertaConfig, transformers.RobertaForSequenceClassification),
        "mpnet": (transformers.MPNetConfig, transformers.MPNetForSequenceClassification),
    }[family]
    config = config_cls(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=64,
        **common,
    )
    return model_cls(config).eval()


def batch(seed: int = 0, size: int = 4, length: int = 9):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (size, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, length - 3 :] = 0
    labels = torch.randint(0, 2, (size,), generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


def train(model, optimizer, manager, steps: int, seed: int = 0, teacher_loss: bool = False):
    """Plain loop: forward, (distillation) loss update, backward, step."""
    model.train()
    for step in range(steps):
        inputs = batch(seed + step)
        out = model(**inputs)
        loss = out.loss
        if teacher_loss:
            loss = manager.loss_update(loss, student_outputs=out, student_inputs=inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
