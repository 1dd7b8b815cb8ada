"""`sparseforge train <task> [ARGS]`: dispatch to the task's module.

The contract of a task module (listed in `TASK_MODULES`): it exposes `build(args) -> TaskRun` and
`main(argv) -> int`, which hands `build` to `sparseforge.transformers.tasks.task_utils.run_cli`
(parse and resolve the arguments once, build, then drive the TaskRun: train, evaluate, predict,
export). Task names go through
`sparseforge.tasks.normalize_task`, so SparseML's spellings work (`text_classification`, `glue`,
`sentiment_analysis`, `ner`, `qa`, `mlm`, ...).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from sparseforge.errors import SparseforgeError
from sparseforge.tasks import TASKS, normalize_task

TASK_MODULES: dict[str, str] = {
    "text-classification": "sparseforge.transformers.tasks.text_classification",
    "token-classification": "sparseforge.transformers.tasks.token_classification",
    "question-answering": "sparseforge.transformers.tasks.question_answering",
    "masked-language-modeling": "sparseforge.transformers.tasks.masked_language_modeling",
}

USAGE = (
    "usage: sparseforge train TASK --model_name_or_path MODEL --output_dir DIR [--recipe RECIPE] "
    "[--distill_teacher TEACHER] [data and TrainingArguments flags]\n\ntasks: "
    + ", ".join(TASKS)
    + "\n`sparseforge train TASK --help` lists every flag."
)


def cli_main(argv: Sequence[str]) -> int:
    """Run `sparseforge train TASK ...`; returns the exit code."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    task = normalize_task(argv[0])
    module_name = TASK_MODULES[task]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise SparseforgeError(
            f"task '{task}' is not available in this installation ({module_name} is missing)"
        ) from None
    return int(module.main(argv[1:]) or 0)
