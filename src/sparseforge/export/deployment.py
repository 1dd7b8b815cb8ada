"""`to_onnx`: a trained model folder -> a verified `deployment/` folder.

    deployment/
      model.onnx            FP32 (dense) or QDQ int8 (QAT) graph; model.data beside it when large
      config.json, tokenizer files, recipe.yaml (when the model has one)
      export_report.json    ORT-vs-PyTorch differences, opset, node counts, size, weight sparsity

Where it goes follows SparseML (`<model_path>/deployment`) unless `output_dir` says otherwise.
Nothing the user did not ask to replace is deleted: an existing folder is replaced only when it
is a previous sparseforge deployment holding nothing but what that export wrote, or when
`overwrite=True`. The new folder is written beside the target and renamed into place, so a
failed export (including a failed verification) leaves no half-written folder behind.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from sparseforge.checkpoint import RECIPE_FILE, load_task_model, require_tokenizer_files
from sparseforge.errors import ExportError, SparseforgeError
from sparseforge.export import ort_fusion, verify
from sparseforge.export.onnx_export import DEFAULT_OPSET, export_onnx
from sparseforge.export.samples import read_texts, sample_batches
from sparseforge.tasks import TASK_OUTPUTS, normalize_task

logger = logging.getLogger(__name__)

REPORT_FILE = "export_report.json"
# The opsets torch's ONNX exporter supports: it builds opset 18 graphs (lower ones go through onnx's
# best-effort version converter, which fails on BERT graphs) and declares 23 as its newest.
MIN_OPSET, MAX_OPSET = 18, 23
MODEL_FILE = "model.onnx"
GENERATOR = "sparseforge"


def _is_previous_deployment(folder: Path) -> bool:
    """A folder sparseforge wrote and nobody added files to since."""
    report = folder / REPORT_FILE
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("generator") != GENERATOR:
        return False
    written = set(data.get("files", [])) | {REPORT_FILE}
    return all(entry.name in written for entry in folder.iterdir())


def resolve_output_dir(
    model_path: Path,
    output_dir: str | os.PathLike | None,
    overwrite: bool,
    *,
    flag: str = "--output_dir",
    overwrite_flag: str | None = "--overwrite",
) -> Path:
    """Where the deployment goes; refuse early (before exporting) if it may not be replaced: the
    model folder itself, a file, or a non-empty folder that is not a previous deployment. The
    training CLIs' `--onnx_export_path` goes through this same rule (`flag` names the option)."""
    target = Path(output_dir) if output_dir is not None else model_path / "deployment"
    resolved, model_resolved = target.resolve(), model_path.resolve()
    if resolved == model_resolved or resolved in model_resolved.parents:
        raise ExportError(
            f"{flag} {target} would replace the model folder {model_path}; choose another folder"
        )
    if target.exists():
        if not target.is_dir():
            raise ExportError(
                f"{flag} {target} exists and is not a folder; remove it or choose another {flag}"
            )
        if not overwrite and any(target.iterdir()) and not _is_previous_deployment(target):
            offer = f"pass {overwrite_flag} to replace it, or " if overwrite_flag else ""
            raise ExportError(
                f"{flag} {target} exists and is not a sparseforge deployment folder (or holds files an export did "
                f"not write): it is not replaced; {offer}choose another {flag} (new or empty)"
            )
    return target


def _replace_folder(staging: Path, target: Path) -> None:
    """Move `staging` to `target`, replacing an existing `target` only once the new one is complete."""
    if not target.exists():
        os.replace(staging, target)
        return
    backup = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, backup)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def check_export_args(opset: int, sequence_length: int, num_samples: int) -> None:
    """Numbers the export cannot honour, refused before anything is loaded."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"--opset {opset} is not supported by torch's ONNX exporter; valid: {MIN_OPSET} to {MAX_OPSET}"
        )
    if sequence_length < 2:
        raise ExportError(f"--sequence_length must be >= 2, got {sequence_length}")
    if num_samples < 1:
        raise ExportError(
            f"--num_samples must be >= 1 (verification needs samples), got {num_samples}"
        )


def written_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset of a model, as written in the file."""
    return next(item.version for item in proto.opset_import if item.domain in ("", "ai.onnx"))


def _load_tokenizer(model_path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_path))
    except Exception as err:  # transformers raises OSError/ValueError/... for missing files
        raise SparseforgeError(
            f"{model_path}: cannot load the tokenizer ({type(err).__name__}); the deployment folder needs "
            "the tokenizer files saved with the model"
        ) from None


def to_onnx(
    model_path: str | os.PathLike,
    task: str,
    *,
    sequence_length: int = 384,
    opset: int = DEFAULT_OPSET,
    output_dir: str | os.PathLike | None = None,
    int8_ops: bool = False,
    data_file: str | os.PathLike | None = None,
    text_column: str | None = None,
    num_samples: int = 8,
    overwrite: bool = False,
    recipe: str | os.PathLike | None = None,
    optimize: bool = True,
    fuse_quantized_attention: bool = False,
) -> Path:
    """Export the model at `model_path` for `task` into a verified deployment folder; returns it.

    Raises ExportError when onnxruntime's outputs differ from PyTorch's beyond the tolerance
    (see `sparseforge.export.verify`); the report is then in the error message, no folder is written.
    `optimize` applies onnxruntime's transformer fusions when the fused graph verifies
    (`sparseforge.export.ort_fusion`); the verification below always checks the graph written.
    `fuse_quantized_attention` (QAT models with quantized attention matmuls) runs their
    attention as onnxruntime's QAttention, dropping the Q/K/probs/V rounding (see the docs).
    """
    model_path = Path(model_path)
    task = normalize_task(task)
    check_export_args(opset, sequence_length, num_samples)
    target = resolve_output_dir(model_path, output_dir, overwrite)
    model, tokenizer = _load_for_export(model_path, task, recipe, sequence_length)
    texts = read_texts(Path(data_file), num_samples, text_column) if data_file else None
    batches = sample_batches(tokenizer, task, sequence_length, texts=texts, num_samples=num_samples)
    output_names = TASK_OUTPUTS[task]

    staging = _make_staging(target)
    try:
        onnx_path = staging / MODEL_FILE
        logger.info("exporting %s (%s) to ONNX opset %d", model_path, task, opset)
        result = _export_and_verify(
            model,
            batches,
            output_names,
            onnx_path,
            opset=opset,
            int8_ops=int8_ops,
            optimize=optimize,
            fuse_quantized_attention=fuse_quantized_attention,
            target=target,
        )
        _copy_model_files(model_path, tokenizer, recipe, staging)
        report = {
            "generator": GENERATOR,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model_path": str(model_path),
            "task": task,
            "precision": ("int8 integer ops" if int8_ops else "int8 QDQ")
            if result.quantized
            else "fp32",
            "opset": written_opset(result.proto),
            "inputs": list(batches[0]),
            "outputs": list(output_names),
            "sequence_length": sequence_length,
            "samples": {
                "source": str(data_file) if data_file else "built-in sentences",
                "count": len(batches[0]["input_ids"]),
            },
            **result.report_fields(onnx_path),
        }
        if not result.ok:
            raise ExportError(
                f"onnxruntime differs from PyTorch beyond tolerance: max |diff| {result.diff['max_abs_diff']:.3g} "
                f"(bound {result.bounds['max_abs_diff']:.3g}), mean {result.diff['mean_abs_diff']:.3g} "
                f"(bound {result.bounds['mean_abs_diff']:.3g}); nothing was written to {target}"
            )
        report["files"] = sorted(entry.name for entry in staging.iterdir()) + [REPORT_FILE]
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "deployment written to %s (%s, max |ORT - torch| %.3g)",
        target,
        report["precision"],
        result.diff["max_abs_diff"],
    )
    return target


def _load_for_export(
    model_path: Path, task: str, recipe: str | os.PathLike | None, sequence_length: int
) -> tuple[torch.nn.Module, Any]:
    """The task model (its saved recipe's structure applied) and its tokenizer, checked before exporting."""
    if (model_path / "config.json").is_file():
        require_tokenizer_files(model_path, "--model_path")
    model = load_task_model(model_path, task, recipe=recipe)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and sequence_length > max_positions:
        raise ExportError(
            f"sequence_length {sequence_length} exceeds the model's max_position_embeddings {max_positions}"
        )
    return model, _load_tokenizer(model_path)


def _make_staging(target: Path) -> Path:
    """An empty folder beside `target` with the permissions of an ordinary folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(
        staging, 0o777 & ~umask
    )  # mkdtemp makes it private; a deployment is an ordinary folder
    return staging


@dataclass
class _Verified:
    """What exporting and checking one graph measured (the report's verification part)."""

    proto: onnx.ModelProto
    quantized: bool
    stats: dict[str, Any]
    fusion: dict[str, Any]
    optimized_counts: dict[str, int]
    diff: dict[str, Any]
    bounds: dict[str, float]
    ok: bool

    def report_fields(self, onnx_path: Path) -> dict[str, Any]:
        return {
            "verification": {**self.diff, "tolerance": self.bounds, "passed": self.ok},
            "rewrites": self.stats,
            "ort_fusion": self.fusion,
            "node_counts": verify.node_counts(self.proto),
            "onnxruntime_optimized_node_counts": self.optimized_counts,
            "file_size_bytes": verify.file_size(onnx_path),
            "weight_sparsity": verify.weight_sparsity(self.proto),
        }


def _export_and_verify(
    model: torch.nn.Module,
    batches: list[dict[str, Any]],
    output_names: Any,
    onnx_path: Path,
    *,
    opset: int,
    int8_ops: bool,
    optimize: bool,
    fuse_quantized_attention: bool = False,
    target: Path,
) -> _Verified:
    """Write the graph to `onnx_path` (fused when `optimize` and it verifies), then compare
    onnxruntime's outputs with PyTorch's on `batches`."""
    with ort_fusion.fusable_attention(model) if optimize else contextlib.nullcontext():
        stats = export_onnx(
            model, batches[0], output_names, onnx_path, opset=opset, int8_ops=int8_ops
        )
    fusion = {"applied": False, "reason": "disabled"}
    if optimize:
        fusion = ort_fusion.apply_to_export(
            onnx_path, model, batches, output_names, fuse_quantized_attention
        )
    proto = onnx.load(str(onnx_path))
    if written_opset(proto) != opset:
        raise ExportError(
            f"asked for opset {opset}, the exporter wrote opset {written_opset(proto)}; nothing was written to {target}"
        )
    quantized = verify.is_quantized_graph(proto)
    optimized_path = onnx_path.parent / "ort_optimized.onnx"
    session = verify.create_session(onnx_path, optimized_path)
    optimized_counts = verify.node_counts(onnx.load(str(optimized_path), load_external_data=False))
    for leftover in onnx_path.parent.glob("ort_optimized.onnx*"):
        leftover.unlink()
    diff = verify.compare(session, model, batches, output_names)
    ok, bounds = verify.tolerance_check(diff, quantized)
    return _Verified(proto, quantized, stats, fusion, optimized_counts, diff, bounds, ok)


def _copy_model_files(
    model_path: Path, tokenizer: Any, recipe: str | os.PathLike | None, staging: Path
) -> None:
    """config.json, the tokenizer files and the recipe (given, else the model's own) into `staging`."""
    shutil.copy2(model_path / "config.json", staging / "config.json")
    tokenizer.save_pretrained(str(staging))
    recipe_src = Path(recipe) if recipe is not None else model_path / RECIPE_FILE
    if recipe_src.is_file():
        shutil.copy2(recipe_src, staging / RECIPE_FILE)
