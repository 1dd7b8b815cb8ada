"""`sparseforge compact` and the structure part of `sparseforge analyze`."""

import json

import pytest
import torch
from conftest import write_tokenizer
from structured_models import batch, logits, make_model, train

from sparseforge import Manager
from sparseforge.cli import main
from sparseforge.sparsity import encoder_macs, encoder_structure, layer_macs
from sparseforge.transformers.loading import load_model

RECIPE = """
pruning_modifiers:
  - !GroupPruningModifier
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
    final_sparsity: {heads: 0.5, neurons: 0.5, layers: 0.34}
    compact: false
"""


@pytest.fixture
def masked_dir(tmp_path):
    """A BERT trained with masks only (compact: false): its pruned groups are zero, dense shapes."""
    model = make_model("bert")
    manager = Manager(RECIPE)
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), steps_per_epoch=4
    )
    train(model, optimizer, manager, 5)
    trained = logits(model, batch(21))  # the bypassed layer is still hooked: what training saw
    manager.finalize(model)
    folder = tmp_path / "masked"
    model.save_pretrained(folder)
    write_tokenizer(folder)
    manager.recipe.save(folder / "recipe.yaml")
    return folder, trained


def test_compact_cli_removes_zeroed_groups_and_reloads(masked_dir, tmp_path, capsys):
    folder, trained = masked_dir
    assert main(["compact", str(folder), "--output_dir", str(tmp_path / "small")]) == 0
    out = capsys.readouterr().out
    assert "2 of 3 layers kept" in out
    small = tmp_path / "small"
    assert (small / "tokenizer_config.json").is_file() and (small / "recipe.yaml").is_file()
    model = load_model(small, "text-classification")
    torch.testing.assert_close(logits(model, batch(21)), trained, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in make_model("bert").parameters()
    )
    # the source is never modified, and an existing non-empty output is refused
    assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 3
    assert main(["compact", str(folder), "--output_dir", str(small)]) == 2


def test_analyze_reports_heads_neurons_layers_and_macs(masked_dir, tmp_path, capsys):
    folder, _ = masked_dir
    main(["compact", str(folder), "--output_dir", str(tmp_path / "small")])
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "small"), "--json", "--sequence_length", "64"]) == 0
    report = json.loads(capsys.readouterr().out)["structure"]
    assert (
        len(report["kept_layers"]) == 2
        and sum(report["heads"]) == 4
        and sum(report["neurons"]) == 64
    )
    expected = sum(
        layer_macs(32, h, 8, n, 64) for h, n in zip(report["heads"], report["neurons"], strict=True)
    )
    assert report["encoder_macs_per_token"] == expected
    assert report["dense_encoder_macs_per_token"] == 3 * layer_macs(32, 4, 8, 64, 64)
    assert main(["analyze", str(tmp_path / "small")]) == 0
    text = capsys.readouterr().out
    assert "heads" in text and "x fewer" in text


def test_macs_of_a_plain_config():
    structure = encoder_structure(
        {
            "hidden_size": 384,
            "num_attention_heads": 12,
            "num_hidden_layers": 6,
            "intermediate_size": 1536,
        }
    )
    now, full = encoder_macs(structure, 128)
    assert now == full == 6 * (4 * 384 * 384 + 2 * 384 * 128 + 2 * 384 * 1536)
