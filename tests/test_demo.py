"""The demo's own logic: a fixed, stratified split and the results table (training is exercised
by the text-classification CLI tests; the full demo runs from the README)."""

import pytest

from sparseforge.demo import FAST, format_table, int8_cpu_flags, split_examples


def test_split_is_stratified_deterministic_and_disjoint():
    examples = [
        (f"{topic} article {i}", topic)
        for topic in ("sport", "tech", "business")
        for i in range(50)
    ]
    train, test = split_examples(examples, seed=42)
    assert split_examples(examples, seed=42) == (train, test)
    assert split_examples(examples, seed=7) != (train, test)
    assert not set(train) & set(test) and len(train) + len(test) == len(examples)
    for topic in ("sport", "tech", "business"):
        assert sum(label == topic for _, label in test) == 10


def test_table_reports_ratios():
    row = dict(pytorch_accuracy=0.9, onnx_accuracy=0.9, onnx_bytes=90e6, onnx_gzip_bytes=80e6,
               throughput_examples_per_s=40.0, encoder_sparsity=0.0, max_abs_diff_onnx_vs_torch=1e-5)  # fmt: skip
    sparse = dict(row, pytorch_accuracy=0.88, onnx_accuracy=0.87, onnx_bytes=24e6, onnx_gzip_bytes=10e6,
                  throughput_examples_per_s=80.0, encoder_sparsity=0.8, max_abs_diff_onnx_vs_torch=0.02)  # fmt: skip
    table = format_table({"dense FP32": row, "sparse INT8": sparse}, FAST, 3.0)
    assert "3.75x smaller" in table and "8.00x smaller" in table and "2.00x" in table
    assert "0.978x" in table and "0.80" in table

    assert "int8 dot-product instructions of this CPU: unknown" in table
    assert "none of avx512_vnni" in format_table(
        {"dense FP32": row, "sparse INT8": sparse}, FAST, 3.0, []
    )


def test_int8_cpu_flags_read_from_cpuinfo(tmp_path):
    intel = tmp_path / "intel"
    intel.write_text(
        "processor\t: 0\nflags\t\t: fpu avx2 avx512bw avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu avx2 avx512_vnni\n"
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    amd = tmp_path / "amd"
    amd.write_text("processor\t: 0\nflags\t\t: fpu avx2 vnni_like_name\n")
    assert int8_cpu_flags(intel) == ["avx512_vnni"]
    assert int8_cpu_flags(arm) == ["asimddp", "i8mm"]
    assert int8_cpu_flags(amd) == []
    assert int8_cpu_flags(tmp_path / "missing") is None


def test_table_has_the_structured_column_with_its_throughput_and_macs():
    row = dict(pytorch_accuracy=0.9, onnx_accuracy=0.9, onnx_bytes=90e6, onnx_gzip_bytes=80e6, throughput_examples_per_s=40.0,
               encoder_sparsity=0.0, encoder_macs_fraction=1.0, max_abs_diff_onnx_vs_torch=1e-5)  # fmt: skip
    sparse = dict(row, onnx_bytes=24e6, throughput_examples_per_s=60.0, encoder_sparsity=0.8)
    structured = dict(row, pytorch_accuracy=0.81, onnx_accuracy=0.72, onnx_bytes=10e6, onnx_gzip_bytes=8e6,
                      throughput_examples_per_s=140.0, encoder_macs_fraction=0.34)  # fmt: skip
    table = format_table(
        {"dense FP32": row, "sparse INT8": sparse, "structured INT8": structured},
        FAST,
        9.0,
        ["avx_vnni"],
    )
    lines = table.splitlines()
    header = next(line for line in lines if "dense FP32" in line)
    assert header.split() == [
        "dense",
        "FP32",
        "sparse",
        "INT8",
        "ratio",
        "structured",
        "INT8",
        "ratio",
    ]
    throughput = next(line for line in lines if line.startswith("throughput"))
    assert throughput.split()[-4:] == ["60.0", "1.50x", "140.0", "3.50x"]
    accuracy = next(line for line in lines if line.startswith("accuracy, ONNX"))
    assert accuracy.split()[-2:] == ["0.720", "0.800x"]
    size = next(line for line in lines if line.startswith("ONNX size on disk"))
    assert size.split()[-6:] == ["24.0", "3.75x", "smaller", "10.0", "9.00x", "smaller"]
    macs = next(line for line in lines if line.startswith("encoder multiply-accumulates (seq 64)"))
    assert macs.split()[-7:] == ["100%", "100%", "1.00x", "fewer", "34%", "2.94x", "fewer"]
    assert "0.80" in next(line for line in lines if line.startswith("encoder weight sparsity"))


def test_demo_runs_the_shipped_structured_recipe_scaled_by_num_epochs():
    from sparseforge.demo import FULL, STRUCTURED_RECIPE
    from sparseforge.recipe import Recipe
    from sparseforge.zoo import resolve_recipe

    for budget in (FULL, FAST):
        assert budget.structured_recipe_args.startswith("num_epochs=")
        recipe = Recipe.load(resolve_recipe(STRUCTURED_RECIPE), budget.structured_recipe_args)
        epochs = float(budget.structured_recipe_args.split("=")[1])
        assert any(type(m).__name__ == "GroupPruningModifier" for m in recipe.modifiers)
        assert max(float(getattr(m, "end_epoch", 0) or 0) for m in recipe.modifiers) == epochs


@pytest.mark.slow
def test_demo_end_to_end_on_a_tiny_bert_has_the_structured_row(tmp_path, monkeypatch, capsys):
    """The whole demo (three trainings through the CLI, three verified exports, the table) with a
    tiny BERT and written articles in place of MiniLM and BBC News."""
    import json
    import random

    from conftest import WORDS, save_tiny_model

    from sparseforge import demo

    model = save_tiny_model(tmp_path / "tiny", num_attention_heads=4, intermediate_size=128)
    rng = random.Random(0)
    topics = ["sport", "tech", "business", "politics", "entertainment"]
    articles = [
        (f"{topic} {' '.join(rng.sample(WORDS, 8))}", topic) for topic in topics for _ in range(16)
    ]
    speed = demo.onnx_accuracy_and_speed
    monkeypatch.setattr(demo, "model_path", lambda: str(model))
    monkeypatch.setattr(demo, "read_bbc_news", lambda: articles)
    monkeypatch.setattr(demo, "onnx_accuracy_and_speed", lambda *args: speed(*args, seconds=0.2))
    out = tmp_path / "demo"
    assert demo.cli_main(["--fast", "--output_dir", str(out)]) == 0
    results = json.loads((out / "demo_results.json").read_text())["results"]
    assert list(results) == ["dense FP32", "sparse INT8", "structured INT8"]
    structured = results["structured INT8"]
    # the bbc_news recipe's defaults: half the heads and 76% of the neurons removed for real
    assert (
        0.3 < structured["encoder_macs_fraction"] < 0.5
        and results["dense FP32"]["encoder_macs_fraction"] == 1.0
    )
    assert (
        structured["encoder_sparsity"] == 0.0 and results["sparse INT8"]["encoder_sparsity"] > 0.7
    )
    assert (
        structured["onnx_bytes"] < results["sparse INT8"]["onnx_bytes"]
        and structured["throughput_examples_per_s"] > 0
    )
    table = capsys.readouterr().out
    assert "structured INT8" in table and "encoder multiply-accumulates (seq 64)" in table
