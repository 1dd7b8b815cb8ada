"""The tasks sparseforge trains and exports, and the aliases SparseML accepted for them.

One table, shared by the trainer, the task CLIs, `load_model` and the export command.
"""

from __future__ import annotations

from sparseforge.errors import SparseforgeError

TEXT_CLASSIFICATION = "text-classification"
TOKEN_CLASSIFICATION = "token-classification"
QUESTION_ANSWERING = "question-answering"
MASKED_LANGUAGE_MODELING = "masked-language-modeling"

TASKS = (TEXT_CLASSIFICATION, TOKEN_CLASSIFICATION, QUESTION_ANSWERING, MASKED_LANGUAGE_MODELING)

# SparseML's spellings (export_onnx --task, sparseml.transformers.<task>), normalised below.
TASK_ALIASES: dict[str, str] = {
    "text-classification": TEXT_CLASSIFICATION,
    "glue": TEXT_CLASSIFICATION,
    "sentiment-analysis": TEXT_CLASSIFICATION,
    "sequence-classification": TEXT_CLASSIFICATION,
    "token-classification": TOKEN_CLASSIFICATION,
    "ner": TOKEN_CLASSIFICATION,
    "question-answering": QUESTION_ANSWERING,
    "qa": QUESTION_ANSWERING,
    "masked-language-modeling": MASKED_LANGUAGE_MODELING,
    "mlm": MASKED_LANGUAGE_MODELING,
    "fill-mask": MASKED_LANGUAGE_MODELING,
}

# transformers' auto class per task (names only: this module does not import transformers).
AUTO_MODEL_CLASSES: dict[str, str] = {
    TEXT_CLASSIFICATION: "AutoModelForSequenceClassification",
    TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
    QUESTION_ANSWERING: "AutoModelForQuestionAnswering",
    MASKED_LANGUAGE_MODELING: "AutoModelForMaskedLM",
}

# Names of the model outputs that matter for each task (what the ONNX graph returns).
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {
    TEXT_CLASSIFICATION: ("logits",),
    TOKEN_CLASSIFICATION: ("logits",),
    QUESTION_ANSWERING: ("start_logits", "end_logits"),
    MASKED_LANGUAGE_MODELING: ("logits",),
}


def normalize_task(task: str) -> str:
    """The canonical task name for `task` or a SparseML alias (`glue`, `ner`, `qa`, `mlm`, ...)."""
    key = task.strip().lower().replace("_", "-")
    if key not in TASK_ALIASES:
        raise SparseforgeError(
            f"unknown task '{task}'; valid tasks: {', '.join(TASKS)} (aliases: {', '.join(sorted(set(TASK_ALIASES) - set(TASKS)))})"
        )
    return TASK_ALIASES[key]
