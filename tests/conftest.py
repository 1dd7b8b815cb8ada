"""Shared fixtures: tiny BERT models built from a config and an offline WordPiece tokenizer.

Nothing here downloads anything: models are built from `BertConfig` (2 layers, hidden 32) and
the tokenizer from a vocabulary written by the fixture, so any lowercase English text tokenizes.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

FIXTURES = Path(__file__).parent / "fixtures"

WORDS = (
    "the a an is was were be been and or but not no very good bad great terrible movie film "
    "story actor plot love hate fun boring best worst what who where when why how of in on at "
    "to for with by from this that it he she they we you i john paul london paris france "
    "germany company bank city president minister said says"
).split()
VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list(string.ascii_lowercase)
    + [f"##{ch}" for ch in string.ascii_lowercase]
    + list(string.digits)
    + [f"##{d}" for d in string.digits]
    + list(".,!?;:'\"-()")
    + WORDS
)


def write_tokenizer(directory: Path):
    """Save a BERT WordPiece tokenizer over VOCAB into `directory` and return it."""
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(VOCAB)})
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    values = dict(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return BertConfig(**values)


TASK_CLASSES = {
    "text-classification": "BertForSequenceClassification",
    "token-classification": "BertForTokenClassification",
    "question-answering": "BertForQuestionAnswering",
    "masked-language-modeling": "BertForMaskedLM",
}


def make_tiny_model(task: str = "text-classification", seed: int = 0, **config_overrides):
    """A freshly initialised 2-layer BERT for `task` (deterministic for a given seed)."""
    import transformers

    torch.manual_seed(seed)
    cls = getattr(transformers, TASK_CLASSES[task])
    return cls(tiny_bert_config(**config_overrides)).eval()


def save_tiny_model(
    directory: Path, task: str = "text-classification", seed: int = 0, **config_overrides
):
    """Save a tiny model plus tokenizer as a Hugging Face folder; returns the folder."""
    model = make_tiny_model(task, seed=seed, **config_overrides)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    write_tokenizer(directory)
    return directory


@pytest.fixture
def tiny_tokenizer(tmp_path):
    return write_tokenizer(tmp_path / "tokenizer")


@pytest.fixture
def tiny_model_dir(tmp_path):
    """Factory fixture: tiny_model_dir(task, **config) -> path of a saved tiny model with tokenizer."""

    def factory(
        task: str = "text-classification",
        name: str | None = None,
        seed: int = 0,
        **config_overrides,
    ):
        return save_tiny_model(
            tmp_path / (name or task.replace("-", "_")), task, seed=seed, **config_overrides
        )

    return factory
