"""`sparseforge.oneshot` / `sparseforge oneshot` on tiny BERT and tiny causal LMs built from configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, make_tiny_model

import sparseforge
from sparseforge import DataError, ModelMatchError, RecipeError, SparseforgeError
from sparseforge.cli import main
from sparseforge.modifiers.pruning import (
    GMPruningModifier,
    OBSPruningModifier,
    SparseGPTModifier,
    WandaPruningModifier,
)
from sparseforge.oneshot import capture_first_inputs, find_layers
from sparseforge.transformers import load_model

SST2 = FIXTURES / "text_classification" / "sst2_train.tsv"
SPARSEGPT_RECIPE = """
oneshot_modifiers:
  - !SparseGPTModifier
      sparsity: 0.5
      block_size: 16
      targets: [Linear]
"""


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def token_batches(
    count: int = 8, length: int = 12, vocab: int = 100, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(5, vocab, (1, length), generator=gen)} for _ in range(count)
    ]


def encoder_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".encoder." in n
    }


def zero_fraction(tensor: torch.Tensor) -> float:
    return float((tensor == 0).sum()) / tensor.numel()


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


# ----- the layer pipeline --------------------------------------------------------------------------
def test_find_layers_and_first_inputs_for_bert_and_llama():
    bert = make_tiny_model()
    prefix, layers = find_layers(bert)
    assert prefix == "bert.encoder.layer" and len(layers) == 2
    batches = token_batches(2)
    cached = capture_first_inputs(bert, layers[0], batches)
    with torch.no_grad():
        embedded = bert.bert.embeddings(input_ids=batches[1]["input_ids"])
    torch.testing.assert_close(cached[1][0][0], embedded)
    llama = tiny_llama()
    assert find_layers(llama)[0] == "model.layers"


def test_sparsegpt_on_tiny_bert_from_a_text_file_saves_a_reloadable_folder(
    tiny_model_dir, tmp_path
):
    source = tiny_model_dir("text-classification")
    out = tmp_path / "pruned"
    result = sparseforge.oneshot(
        str(source),
        SPARSEGPT_RECIPE,
        str(SST2),
        text_column="sentence",
        num_calibration_samples=16,
        max_seq_length=32,
        output_dir=out,
    )
    model = result.model
    for name, module in encoder_linears(model).items():
        assert zero_fraction(module.weight) == 0.5, name
    assert (
        zero_fraction(model.classifier.weight) == 0.0
        and zero_fraction(model.bert.pooler.dense.weight) == 0.0
    )
    report = json.loads((out / "oneshot_report.json").read_text())
    assert report["calibration_samples"] == 16
    assert set(report["layers"]) == {"bert.encoder.layer.0", "bert.encoder.layer.1"}
    assert all(layer["sparsity"] == 0.5 for layer in report["layers"].values())
    errors = [entry["relative_error"] for entry in report["modules"].values()]
    assert len(errors) == 12 and all(0 < e < 1 for e in errors)
    assert (out / "recipe.yaml").is_file() and (out / "tokenizer_config.json").is_file()
    reloaded = load_model(out, "text-classification")
    batch = token_batches(1)[0]
    torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)


def test_layer_by_layer_error_is_lower_than_wanda_and_magnitude():
    batches = token_batches(16, length=16)
    errors = {}
    for name, mod in {
        "sparsegpt": SparseGPTModifier(sparsity=0.5, block_size=16),
        "wanda": WandaPruningModifier(sparsity=0.5),
    }.items():
        result = sparseforge.oneshot(make_tiny_model(), [mod], batches)
        errors[name] = sum(e["relative_error"] for e in result.report["modules"].values())
    assert errors["sparsegpt"] < errors["wanda"]


def test_sparsegpt_two_four_on_a_tiny_causal_lm():
    model = tiny_llama()
    batches = token_batches(6, length=10, vocab=128)
    before = model(**batches[0]).logits
    result = sparseforge.oneshot(
        model,
        [SparseGPTModifier(mask_structure="2:4", block_size=16, sequential_update=True)],
        batches,
    )
    targets = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")
    }
    assert len(targets) == 14 and set(result.report["modules"]) == set(targets)
    for module in targets.values():
        zeros = (module.weight == 0).reshape(module.weight.shape[0], -1, 4).sum(dim=2)
        assert bool((zeros == 2).all())
    assert zero_fraction(model.lm_head.weight) == 0.0
    after = model(**batches[0]).logits
    assert torch.isfinite(after).all() and not torch.equal(after, before)


def test_wanda_on_gpt2_conv1d_prunes_each_output_row():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    ).eval()
    sparseforge.oneshot(model, [WandaPruningModifier(sparsity=0.5)], token_batches(4, vocab=128))
    weight = model.transformer.h[1].mlp.c_fc.weight  # Conv1D: (in, out)
    per_output = (weight == 0).sum(dim=0)
    assert bool((per_output == weight.shape[0] // 2).all())


def test_targets_and_ignore_select_modules():
    model = make_tiny_model()
    mod = SparseGPTModifier(
        sparsity=0.5,
        targets=["re:bert.encoder.layer.1$"],
        ignore=["re:.*value$", "BertIntermediate"],
    )
    sparseforge.oneshot(model, [mod], token_batches(4))
    pruned = {n for n, m in encoder_linears(model).items() if zero_fraction(m.weight) > 0}
    assert pruned == {
        "bert.encoder.layer.1.attention.self.query",
        "bert.encoder.layer.1.attention.self.key",
        "bert.encoder.layer.1.attention.output.dense",
        "bert.encoder.layer.1.output.dense",
    }
    with pytest.raises(ModelMatchError, match="matches no module"):
        sparseforge.oneshot(
            make_tiny_model(),
            [SparseGPTModifier(sparsity=0.5, targets=["bert.encoder.layer.9"])],
            token_batches(2),
        )


# ----- modifiers applied at once -------------------------------------------------------------------
def test_one_shot_magnitude_needs_no_data_and_gradual_is_refused():
    model = make_tiny_model()
    gmp = GMPruningModifier(
        init_sparsity=0.5,
        final_sparsity=0.5,
        start_epoch=0,
        end_epoch=0,
        params=["re:bert.encoder.*weight$"],
    )
    result = sparseforge.oneshot(model, [gmp])
    assert all(zero_fraction(m.weight) == 0.5 for m in encoder_linears(model).values())
    assert result.report["modules"]["bert.encoder.layer.0.output.dense"]["sparsity"] == 0.5
    gradual = GMPruningModifier(
        init_sparsity=0.0,
        final_sparsity=0.5,
        start_epoch=0,
        end_epoch=2,
        params=["re:bert.encoder.*weight$"],
    )
    with pytest.raises(RecipeError, match="start_epoch equal to end_epoch"):
        sparseforge.oneshot(make_tiny_model(), [gradual])


def test_one_shot_obs_from_calibration_gradients():
    model = make_tiny_model()
    obs = OBSPruningModifier(
        init_sparsity=0.5,
        final_sparsity=0.5,
        start_epoch=0,
        end_epoch=0,
        num_grads=8,
        fisher_block_size=16,
        damp=1e-5,
        params=["re:bert.encoder.*(query|key|value|dense).weight$"],
    )
    with pytest.raises(DataError, match="OBSPruningModifier need calibration data"):
        sparseforge.oneshot(make_tiny_model(), [obs.model_copy()])
    sparseforge.oneshot(model, [obs], token_batches(4))
    weights = [m.weight for m in encoder_linears(model).values()]
    total = sum(float((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert total == pytest.approx(0.5, abs=1e-3)
    magnitude = make_tiny_model()
    with torch.no_grad():  # OBS also moves the kept weights; magnitude pruning would not
        kept = [(w != 0) for w in weights]
        moved = any(
            not torch.equal(w[k], m.weight[k])
            for w, k, m in zip(weights, kept, encoder_linears(magnitude).values(), strict=True)
        )
    assert moved


# ----- post-training quantization ----------------------------------------------------------------
@pytest.mark.slow
def test_ptq_scales_equal_the_observed_ranges_and_the_folder_reloads_and_exports(tmp_path):
    model = make_tiny_model()
    batches = token_batches(6)
    target = model.bert.encoder.layer[0].intermediate.dense
    seen: list[torch.Tensor] = []
    handle = target.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    handle.remove()
    low, high = min(float(s.min()) for s in seen), max(float(s.max()) for s in seen)
    out = tmp_path / "ptq"
    recipe = "modifiers:\n  - !QuantizationModifier\n      scheme: {weights: {num_bits: 8, symmetric: true, strategy: channel}}\n"
    result = sparseforge.oneshot(model, recipe, batches, output_dir=out)
    assert result.report["quantizers"] > 0
    input_fq = target.input_fake_quant
    assert float(input_fq.scale) == pytest.approx((max(high, 0) - min(low, 0)) / 255, rel=1e-6)
    assert not input_fq.observer_enabled
    expected = target.weight.detach().abs().amax(dim=1) / 127.5
    torch.testing.assert_close(target.weight_fake_quant.scale, expected)
    reloaded = load_model(out, "text-classification")
    torch.testing.assert_close(reloaded(**batches[0]).logits, model(**batches[0]).logits)
    from conftest import write_tokenizer

    write_tokenizer(out)
    from sparseforge.export.deployment import REPORT_FILE, to_onnx

    deployment = to_onnx(out, "text-classification", sequence_length=16)
    report = json.loads((deployment / REPORT_FILE).read_text())
    assert report["precision"].lower().startswith("int8")


def test_sparsegpt_then_w8a8_preset(tmp_path):
    model = make_tiny_model()
    recipe = SPARSEGPT_RECIPE + "  - !QuantizationModifier\n      scheme: W8A8\n"
    sparseforge.oneshot(model, recipe, token_batches(6))
    dense = model.bert.encoder.layer[1].output.dense
    assert zero_fraction(dense.weight) == 0.5
    assert dense.input_fake_quant.symmetric and dense.input_fake_quant.quant_min == -128
    assert dense.weight_fake_quant.per_channel


# ----- errors before any work ----------------------------------------------------------------------
def test_clear_errors_before_any_work(tmp_path):
    model = make_tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError, match="SparseGPTModifier need calibration data"):
        sparseforge.oneshot(model, SPARSEGPT_RECIPE)
    with pytest.raises(DataError, match="empty: it holds no sample"):
        sparseforge.oneshot(model, SPARSEGPT_RECIPE, [])
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(DataError, match="no examples"):
        sparseforge.oneshot(model, SPARSEGPT_RECIPE, str(empty), tokenizer=object())
    with pytest.raises(RecipeError, match=r"line 4.*sparsity must be within \[0, 1\)"):
        sparseforge.oneshot(model, SPARSEGPT_RECIPE.replace("0.5", "1.5"), token_batches(2))
    with pytest.raises(DataError, match="no column 'text'"):
        sparseforge.oneshot(model, SPARSEGPT_RECIPE, str(SST2), tokenizer=object())
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("user file")
    with pytest.raises(SparseforgeError, match="not empty"):
        sparseforge.oneshot(model, SPARSEGPT_RECIPE, token_batches(2), output_dir=tmp_path / "used")
    with pytest.raises(RecipeError, match="no modifier that runs one-shot"):
        sparseforge.oneshot(
            model,
            "modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 1}\n",
            token_batches(2),
        )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "used" / "keep.txt").read_text() == "user file"


# ----- the command line ----------------------------------------------------------------------------
def test_cli_writes_the_folder_and_reports_errors_in_one_line(tiny_model_dir, tmp_path, capsys):
    source = tiny_model_dir("text-classification")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("modifiers:\n  - !WandaPruningModifier {mask_structure: '2:4'}\n")
    out = tmp_path / "out"
    argv = [
        "oneshot",
        "--model_path",
        str(source),
        "--recipe",
        str(recipe),
        "--dataset",
        str(SST2),
        "--text_column",
        "sentence",
        "--num_calibration_samples",
        "8",
        "--max_seq_length",
        "16",
        "--output_dir",
        str(out),
    ]
    assert main(argv) == 0
    assert "saved" in capsys.readouterr().out
    model = load_model(out, "text-classification")
    weight = model.bert.encoder.layer[0].attention.self.query.weight
    assert bool(((weight == 0).reshape(32, -1, 4).sum(dim=2) == 2).all())
    bad = argv[:]
    bad[bad.index("sentence")] = "review"
    bad[-1] = str(tmp_path / "out4")
    assert main(bad) == 2
    assert "no column 'review'" in capsys.readouterr().err


def test_result_paths(tmp_path):
    result = sparseforge.oneshot(
        make_tiny_model(),
        [WandaPruningModifier(sparsity=0.25)],
        token_batches(2),
        output_dir=tmp_path / "o",
    )
    assert result.output_dir == Path(tmp_path / "o")
    assert sorted(p.name for p in result.output_dir.iterdir()) == [
        "config.json",
        "model.safetensors",
        "oneshot_report.json",
        "recipe.yaml",
    ]


def test_a_failed_save_leaves_no_folder_and_an_empty_folder_is_filled(tmp_path, monkeypatch):
    """The output folder is written aside and renamed: it exists only once complete."""
    model = make_tiny_model()

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        sparseforge.oneshot(
            model,
            [WandaPruningModifier(sparsity=0.25)],
            token_batches(2),
            output_dir=tmp_path / "o",
        )
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy
    (tmp_path / "empty").mkdir()
    result = sparseforge.oneshot(
        make_tiny_model(),
        [WandaPruningModifier(sparsity=0.25)],
        token_batches(2),
        output_dir=tmp_path / "empty",
    )
    assert (result.output_dir / "oneshot_report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


# ----- compressed-tensors ------------------------------------------------------------------------
W8A8_LINEARS = (
    SPARSEGPT_RECIPE
    + "  - !QuantizationModifier\n      scheme: W8A8\n      ignore: [Embedding, QATMatMul]\n"
)


def test_save_compressed_round_trip_with_plain_transformers(tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForSequenceClassification

    model = make_tiny_model()
    batches = token_batches(6)
    out = tmp_path / "compressed"
    result = sparseforge.oneshot(model, W8A8_LINEARS, batches, output_dir=out, save_compressed=True)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    sizes = result.report["compressed"]
    linears = [
        m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".encoder." in n
    ] + [model.bert.pooler.dense, model.classifier]
    # one byte per int8 weight plus one float32 scale per output channel, against four bytes
    assert sizes["quantized_weight_bytes"] == sum(
        m.weight.numel() + 4 * m.weight.shape[0] for m in linears
    )
    assert sizes["quantized_weight_dense_fp32_bytes"] == sum(4 * m.weight.numel() for m in linears)
    loaded = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    float_model = make_tiny_model()
    float_model.load_state_dict(
        {k: v for k, v in model.state_dict().items() if "_fake_quant" not in k}
    )
    with torch.no_grad():
        ours = torch.cat([model(**b).logits for b in batches])
        theirs = torch.cat([loaded(**b).logits for b in batches])
        unquantized = torch.cat([float_model(**b).logits for b in batches])
    # the same quantized model: most samples give bit-identical logits; the rest differ by a rounding
    # tie (torch's x * (1/s) against compressed-tensors' x / s), below what quantization changes
    identical = sum(torch.equal(a, b) for a, b in zip(theirs, ours, strict=True))
    assert identical >= len(batches) - 2
    assert float((theirs - ours).abs().max()) < 0.5 * float((unquantized - ours).abs().max())
    weight = loaded.bert.encoder.layer[0].output.dense.weight
    assert zero_fraction(weight) >= 0.5
    with pytest.raises(ModelMatchError, match="compressed-tensors format"):
        load_model(out, "text-classification")


def test_save_compressed_refuses_what_the_format_cannot_hold_before_work(tmp_path):
    pytest.importorskip("compressed_tensors")
    model = make_tiny_model()
    before = model.bert.encoder.layer[0].output.dense.weight.clone()
    with pytest.raises(ModelMatchError, match="no sparse-only format"):
        sparseforge.oneshot(
            model,
            SPARSEGPT_RECIPE,
            token_batches(2),
            output_dir=tmp_path / "a",
            save_compressed=True,
        )
    with pytest.raises(ModelMatchError, match="Linear input and weight quantization only"):
        sparseforge.oneshot(
            model,
            SPARSEGPT_RECIPE + "  - !QuantizationModifier {scheme: W8A8}\n",
            token_batches(2),
            output_dir=tmp_path / "b",
            save_compressed=True,
        )
    assert torch.equal(model.bert.encoder.layer[0].output.dense.weight, before)


def test_a_sparseforge_folder_keeps_its_recipe_so_the_output_reloads(tiny_model_dir, tmp_path):
    source = tiny_model_dir("text-classification")
    ptq = "modifiers:\n  - !QuantizationModifier\n      scheme: W8A8\n"
    sparseforge.oneshot(
        str(source),
        ptq,
        str(SST2),
        text_column="sentence",
        num_calibration_samples=8,
        output_dir=tmp_path / "int8",
    )
    result = sparseforge.oneshot(
        str(tmp_path / "int8"),
        SPARSEGPT_RECIPE,
        str(SST2),
        text_column="sentence",
        num_calibration_samples=8,
        output_dir=tmp_path / "both",
    )
    saved = (tmp_path / "both" / "recipe.yaml").read_text()
    assert "QuantizationModifier" in saved and "SparseGPTModifier" in saved
    reloaded = load_model(tmp_path / "both", "text-classification")
    batch = token_batches(1)[0]
    torch.testing.assert_close(reloaded(**batch).logits, result.model(**batch).logits)
    assert zero_fraction(reloaded.bert.encoder.layer[1].output.dense.weight) == 0.5


def test_tokenized_dataset_object_with_right_padding():
    from datasets import Dataset

    rows = {
        "input_ids": [[2, 40, 41, 42, 3, 0, 0], [2, 50, 51, 3, 0, 0, 0]],
        "attention_mask": [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0]],
        "label": [0, 1],
    }
    result = sparseforge.oneshot(
        make_tiny_model(),
        [WandaPruningModifier(sparsity=0.5)],
        Dataset.from_dict(rows),
        max_seq_length=6,
    )
    assert result.report["calibration_samples"] == 2
    assert result.report["calibration_tokens"] == 5 + 4  # padding is not calibration data


STAGED_RECIPE = """
oneshot_stage:
  pruning_modifiers:
    - !SparseGPTModifier {sparsity: 0.5, block_size: 16}
finetune_stage:
  training_modifiers:
    - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 2.0}
    - !LearningRateFunctionModifier {start_epoch: 0.0, end_epoch: 2.0, lr_func: linear, init_lr: 0.001, final_lr: 0.0}
  pruning_modifiers:
    - !ConstantPruningModifier {start_epoch: 0.0, params: ['re:bert.encoder.*(query|key|value|dense).weight$']}
  distillation_modifiers:
    - !DistillationModifier {hardness: 0.5, temperature: 2.0, distill_output_keys: [logits]}
"""


def test_one_shot_stage_then_training_stage_from_one_recipe(tiny_model_dir, tmp_path, capsys):
    source = tiny_model_dir("text-classification")
    recipe = tmp_path / "staged.yaml"
    recipe.write_text(STAGED_RECIPE)
    pruned = tmp_path / "pruned"
    argv = [
        "oneshot",
        "--model_path",
        str(source),
        "--recipe",
        str(recipe),
        "--dataset",
        str(SST2),
        "--text_column",
        "sentence",
        "--num_calibration_samples",
        "8",
        "--output_dir",
        str(pruned),
    ]
    assert main(argv) == 0
    assert "continue with: sparseforge train" in capsys.readouterr().out
    applied = (pruned / "recipe.yaml").read_text()
    assert "SparseGPTModifier" in applied and "ConstantPruningModifier" not in applied
    assert "SparseGPTModifier" not in (pruned / "training_recipe.yaml").read_text()
    one_shot = (
        load_model(pruned, "text-classification")
        .bert.encoder.layer[0]
        .intermediate.dense.weight.detach()
        .clone()
    )
    tuned = tmp_path / "tuned"
    data = FIXTURES / "text_classification"
    code = main(
        [
            "train",
            "text-classification",
            "--model_name_or_path",
            str(pruned),
            "--recipe",
            str(pruned / "training_recipe.yaml"),
            "--distill_teacher",
            str(source),
            "--train_file",
            str(data / "train.csv"),
            "--output_dir",
            str(tuned),
            "--do_train",
            "--per_device_train_batch_size",
            "8",
            "--max_seq_length",
            "16",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--save_strategy",
            "no",
            "--seed",
            "1",
        ]
    )
    assert code == 0
    model = load_model(tuned, "text-classification")
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    assert torch.equal(weight == 0, one_shot == 0)  # the one-shot zeros survive fine-tuning
    assert not torch.equal(weight, one_shot)  # and the kept weights trained
    saved = (tuned / "recipe.yaml").read_text()
    assert "SparseGPTModifier" in saved and "ConstantPruningModifier" in saved
