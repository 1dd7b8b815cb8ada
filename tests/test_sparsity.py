"""Measuring sparsity: structures, totals, checkpoints on disk, `sparseforge analyze`, run status."""

import json

import pytest
import torch
from conftest import make_tiny_model

from sparseforge import Manager, SparseforgeError
from sparseforge.cli import main
from sparseforge.modifiers.pruning import create_masks
from sparseforge.sparsity import (
    analyze_model,
    analyze_path,
    detect_structure,
    pruning_status,
    tensor_sparsity,
)


def pruned(shape, sparsity, mask_type, seed=0):
    torch.manual_seed(seed)
    weight = torch.randn(shape)
    return weight * create_masks({"w": weight.abs()}, {"w": sparsity}, mask_type)["w"]


def test_tensor_sparsity_and_structures():
    assert tensor_sparsity(torch.tensor([0.0, 1.0, 0.0, 2.0])) == 0.5
    assert detect_structure(torch.randn(8, 16)) == "dense"
    assert detect_structure(pruned((8, 16), 0.5, "block4")) == "[1,4] blocks"
    assert detect_structure(pruned((8, 16), 0.5, "2:4")) == "2:4"
    assert detect_structure(pruned((8, 16), 0.5, "unstructured")) == "unstructured"
    assert detect_structure(pruned((4, 6), 0.5, "unstructured")) == "unstructured"
    assert detect_structure(torch.tensor([0.0, 1.0])) == "unstructured"


def prune_model(model):
    with torch.no_grad():
        layer = model.bert.encoder.layer[0]
        layer.intermediate.dense.weight.copy_(
            pruned(layer.intermediate.dense.weight.shape, 0.75, [1, 4])
        )
        layer.output.dense.weight.copy_(pruned(layer.output.dense.weight.shape, 0.5, "2:4"))
    return model


def test_analyze_model_totals():
    model = prune_model(make_tiny_model("text-classification"))
    report = analyze_model(model)
    rows = {t.name: t for t in report.tensors}
    assert rows["bert.encoder.layer.0.intermediate.dense.weight"].sparsity == 0.75
    assert rows["bert.encoder.layer.0.intermediate.dense.weight"].structure == "[1,4] blocks"
    assert rows["bert.encoder.layer.0.output.dense.weight"].structure == "2:4"
    assert report.total_params == sum(p.numel() for p in model.parameters())
    assert report.total_zeros == sum(int((p == 0).sum()) for p in model.parameters())
    assert {t.name for t in report.sparse_tensors} == {
        "bert.encoder.layer.0.intermediate.dense.weight",
        "bert.encoder.layer.0.output.dense.weight",
    }
    assert report.sparse_encoded_bytes() < 4 * report.total_params


@pytest.mark.parametrize("form", ["folder", "safetensors", "bin"])
def test_analyze_checkpoints_without_the_model_class(tmp_path, form):
    model = prune_model(make_tiny_model("text-classification"))
    if form == "folder":
        model.save_pretrained(str(tmp_path / "model"))
        path = tmp_path / "model"
    elif form == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        path = tmp_path / "pytorch_model.bin"
        torch.save({"state_dict": model.state_dict()}, str(path))
    report = analyze_path(path)
    rows = {t.name: t for t in report.tensors}
    assert (
        rows["bert.encoder.layer.0.intermediate.dense.weight"].zeros
        == round(0.75 * 64 * 32 / 4) * 4
    )
    assert report.file_bytes and report.file_bytes > 4 * report.total_params * 0.9


def test_cli_table_and_json(tmp_path, capsys):
    model = prune_model(make_tiny_model("text-classification"))
    model.save_pretrained(str(tmp_path / "m"))
    assert main(["analyze", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    line = next(
        row
        for row in out.splitlines()
        if row.startswith("bert.encoder.layer.0.intermediate.dense.weight")
    )
    assert "75.00%" in line and "[1,4] blocks" in line
    assert "size on disk" in out and "LayerNorm" not in out
    assert main(["analyze", str(tmp_path / "m"), "--all"]) == 0
    assert "LayerNorm" in capsys.readouterr().out
    assert main(["analyze", str(tmp_path / "m"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["sparse_tensors"] == 2
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "no such model folder" in capsys.readouterr().err


def test_bad_files_are_clear_errors(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(SparseforgeError, match="safetensors"):
        analyze_path(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparseforgeError, match="no weights"):
        analyze_path(tmp_path / "empty")


def test_pruning_status_during_a_run():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    manager = Manager("""
    pruning_modifiers:
      - !GMPruningModifier {params: ['0.weight'], init_sparsity: 0.25, final_sparsity: 0.5, start_epoch: 0, end_epoch: 2, update_frequency: 1}
    """)
    optimizer = manager.modify(
        model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=1
    )
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    assert pruning_status(manager) == {"0.weight": {"target": 0.25, "measured": 0.25}}
