"""ort_fusion: onnxruntime's transformer fusions on sparseforge's exports, verified against PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import make_tiny_model

from sparseforge.export import export_onnx, ort_fusion, to_onnx, verify
from sparseforge.export.cli import build_parser
from sparseforge.export.deployment import REPORT_FILE
from sparseforge.transformers import load_model

LAYERS = 2


def padded_batches() -> list[dict[str, torch.Tensor]]:
    """Two batches of other shapes than the export sample, with padded rows."""
    generator = torch.Generator().manual_seed(3)
    batches = []
    for batch, seq in ((4, 16), (3, 33)):
        ids = torch.randint(5, 100, (batch, seq), generator=generator)
        mask = torch.ones_like(ids)
        mask[1, seq // 2 :] = 0
        mask[-1, 2:] = 0
        batches.append(
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        )
    return batches


def drop_heads(model: torch.nn.Module, layer: int, keep: list[int]) -> None:
    """Keep only heads `keep` of `layer` (rows of Q/K/V, columns of the output dense), as
    structured pruning's compaction does; the attention reshapes with -1 heads."""
    attention = model.bert.encoder.layer[layer].attention
    size = attention.self.attention_head_size
    rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])
    with torch.no_grad():
        for name in ("query", "key", "value"):
            old = getattr(attention.self, name)
            new = torch.nn.Linear(old.in_features, len(rows))
            new.weight.copy_(old.weight[rows])
            new.bias.copy_(old.bias[rows])
            setattr(attention.self, name, new)
        old = attention.output.dense
        new = torch.nn.Linear(len(rows), old.out_features)
        new.weight.copy_(old.weight[:, rows])
        new.bias.copy_(old.bias)
        attention.output.dense = new
    attention.self.num_attention_heads = len(keep)


def export_and_fuse(model, tmp_path, name="model"):
    path = tmp_path / f"{name}.onnx"
    ids = torch.randint(5, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    sample = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }
    with ort_fusion.fusable_attention(model):
        export_onnx(model, sample, ["logits"], path)
    fused, report = ort_fusion.fuse(onnx.load(str(path)))
    fused_path = tmp_path / f"{name}_fused.onnx"
    onnx.save(fused, str(fused_path))
    return path, fused_path, report


def check_against_torch(path, model):
    diff = verify.compare(verify.create_session(path), model, padded_batches(), ["logits"])
    ok, _ = verify.tolerance_check(diff, quantized=False)
    return ok, diff


@pytest.mark.slow
def test_tiny_bert_export_gets_every_fusion_and_matches_torch(tmp_path):
    model = make_tiny_model("text-classification", num_hidden_layers=LAYERS)
    assert model.config._attn_implementation != "eager"  # the export switches and restores it
    plain, fused_path, report = export_and_fuse(model, tmp_path)
    assert model.config._attn_implementation != "eager"
    counts = verify.node_counts(onnx.load(str(fused_path)))
    expected = {"Attention": LAYERS, "SkipLayerNormalization": 2 * LAYERS, "BiasGelu": LAYERS}
    assert {op: counts.get(op, 0) for op in expected} == expected
    assert counts["EmbedLayerNormalization"] == 1
    assert "LayerNormalization" not in counts and "Softmax" not in counts and "Where" not in counts
    assert report["fused_nodes"] == {**expected, "EmbedLayerNormalization": 1}
    assert report["rewrites"]["attention_masks"] == LAYERS
    # the fused graph computes what PyTorch computes, padding included
    ok, diff = check_against_torch(fused_path, model)
    assert ok and diff["max_abs_diff"] < 1e-5
    # the plain export the rewrites started from is unchanged on disk
    assert "Attention" not in verify.node_counts(onnx.load(str(plain)))


@pytest.mark.slow
def test_layers_with_different_head_counts_fuse_with_their_own(tmp_path):
    model = make_tiny_model("text-classification", num_hidden_layers=LAYERS, num_attention_heads=4)
    drop_heads(model, 0, [0, 2, 3])
    drop_heads(model, 1, [1])
    _, fused_path, report = export_and_fuse(model, tmp_path)
    assert report["rewrites"]["head_reshapes"] == LAYERS
    graph = onnx.load(str(fused_path))
    heads = sorted(
        onnx.helper.get_attribute_value(attr)
        for node in graph.graph.node
        if node.op_type == "Attention"
        for attr in node.attribute
        if attr.name == "num_heads"
    )
    assert heads == [1, 3]
    ok, diff = check_against_torch(fused_path, model)
    assert ok, diff


@pytest.mark.slow
def test_mask_rewrite_needs_the_attention_mask_input(tmp_path):
    model = make_tiny_model("text-classification", num_hidden_layers=1)
    path = tmp_path / "nomask.onnx"
    ids = torch.randint(5, 100, (2, 8))
    with ort_fusion.fusable_attention(model):
        export_onnx(model, {"input_ids": ids}, ["logits"], path)
    graph = onnx.load(str(path))
    assert ort_fusion.canonical_attention_mask(graph) == 0
    fused, _ = ort_fusion.fuse(graph)
    onnx.save(fused, str(tmp_path / "nomask_fused.onnx"))
    session = verify.create_session(tmp_path / "nomask_fused.onnx")
    with torch.no_grad():
        expected = model(input_ids=ids).logits.numpy()
    got = session.run(["logits"], {"input_ids": ids.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def report_of(folder):
    return json.loads((folder / REPORT_FILE).read_text())


@pytest.mark.slow
def test_to_onnx_writes_the_fused_graph_and_reports_it(tiny_model_dir):
    model_dir = tiny_model_dir("text-classification", num_hidden_layers=LAYERS)
    target = to_onnx(model_dir, "text-classification", sequence_length=16)
    report = report_of(target)
    fusion = report["ort_fusion"]
    assert fusion["applied"] is True
    assert fusion["fused_nodes"]["Attention"] == LAYERS
    assert fusion["fused_nodes"]["SkipLayerNormalization"] == 2 * LAYERS
    # node counts and verification describe the file written, which is the fused graph
    assert report["node_counts"]["Attention"] == LAYERS
    assert report["verification"]["passed"]
    graph = onnx.load(str(target / "model.onnx"))
    assert {op.domain for op in graph.opset_import} >= {"", "com.microsoft"}
    assert sorted(p.name for p in target.iterdir() if p.name.startswith(".")) == []
    model = load_model(model_dir, "text-classification")
    ok, diff = check_against_torch(target / "model.onnx", model)
    assert ok, diff


@pytest.mark.slow
def test_option_off_reproduces_the_plain_export(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir("text-classification", num_hidden_layers=1)
    target = to_onnx(model_dir, "text-classification", sequence_length=16, optimize=False)
    report = report_of(target)
    assert report["ort_fusion"] == {"applied": False, "reason": "disabled"}
    written = onnx.load(str(target / "model.onnx"))
    assert all(node.domain in ("", "ai.onnx") for node in written.graph.node)
    # the same graph export_onnx gives for the model as loaded (its own attention implementation)
    model = load_model(model_dir, "text-classification")
    ids = torch.randint(5, 100, (8, 16))
    direct = tmp_path / "direct.onnx"
    sample = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }
    export_onnx(model, sample, ["logits"], direct)
    assert [n.op_type for n in written.graph.node] == [
        n.op_type for n in onnx.load(str(direct)).graph.node
    ]


@pytest.fixture(scope="module")
def float_attention_qat_dir(tmp_path_factory):
    """float_attention_qat_dir(qat_model_dir, per_channel) -> a QAT model whose attention matmuls
    are not quantized (`exclude_module_types: [QATMatMul]`), built with export/conftest's helper."""
    cache = {}

    def factory(qat_model_dir, per_channel: bool):
        if per_channel not in cache:
            helpers = qat_model_dir.__globals__  # export/conftest.py: recipes and save_qat_model
            recipe = helpers["PER_CHANNEL_QAT_RECIPE" if per_channel else "QAT_RECIPE"]
            exclude = "      exclude_module_types: ['LayerNorm', 'Tanh', 'QATMatMul']\n"
            recipe = recipe.replace("      exclude_module_types: ['LayerNorm', 'Tanh']\n", "")
            recipe = recipe.replace("epoch: 1.0\n", "epoch: 1.0\n" + exclude)
            assert "QATMatMul" in recipe
            folder = tmp_path_factory.mktemp("qat_float_attention") / str(per_channel)
            cache[per_channel] = helpers["save_qat_model"](
                folder, "text-classification", recipe=recipe
            )
        return cache[per_channel]

    return factory


@pytest.mark.slow
@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_export_gets_integer_attention_with_the_qat_scales(
    qat_model_dir, float_attention_qat_dir, tmp_path, per_channel
):
    model_dir = float_attention_qat_dir(qat_model_dir, per_channel)
    target = to_onnx(model_dir, "glue", sequence_length=16, output_dir=tmp_path / "fused")
    report = report_of(target)
    fusion = report["ort_fusion"]
    assert fusion["applied"] is True and report["precision"] == "int8 QDQ"
    assert report["verification"]["passed"]
    assert fusion["rewrites"]["quantized_attention"] == LAYERS
    assert fusion["fused_nodes"]["QAttention"] == LAYERS
    assert fusion["fused_nodes"]["SkipLayerNormalization"] >= 2 * LAYERS
    assert fusion["fused_nodes"]["BiasGelu"] == LAYERS
    assert "Attention" not in fusion["fused_nodes"]  # no Q/K/V projection left in float
    # attention output, intermediate and output dense stay integer MatMuls; Q/K/V run in QAttention
    optimized = report["onnxruntime_optimized_node_counts"]
    assert (
        optimized.get("MatMulIntegerToFloat", 0) + optimized.get("QLinearMatMul", 0) == 3 * LAYERS
    )
    assert "Softmax" not in optimized

    # against the unfused QDQ graph of the same (eager) export: same int8 weights, same outputs
    model = load_model(model_dir, "text-classification")
    plain, fused_path, _ = export_and_fuse(model, tmp_path)
    graph = onnx.load(str(fused_path))
    stored = {init.name: onnx.numpy_helper.to_array(init) for init in graph.graph.initializer}
    qattention = next(node for node in graph.graph.node if node.op_type == "QAttention")
    weight = stored[qattention.input[1]]
    assert weight.dtype == np.int8 and weight.shape == (32, 96)
    plain_int8 = [onnx.numpy_helper.to_array(i) for i in onnx.load(str(plain)).graph.initializer]
    for part in np.split(weight, 3, axis=1):
        assert any(a.dtype == np.int8 and np.array_equal(a, part) for a in plain_int8)
    scales = stored[qattention.input[4]]
    # one scale per output column: Q's, K's and V's (per tensor), or each row's (per channel)
    assert scales.shape == (96,)
    assert len(np.unique(scales)) > 3 if per_channel else len(np.unique(scales)) <= 3
    sessions = [verify.create_session(path) for path in (plain, fused_path)]
    for batch in padded_batches():
        feeds = {name: tensor.numpy() for name, tensor in batch.items()}
        plain_out, fused_out = (session.run(["logits"], feeds)[0] for session in sessions)
        np.testing.assert_allclose(fused_out, plain_out, atol=1e-5)


@pytest.mark.slow
def test_quantized_attention_matmuls_stay_quantized(qat_model_dir, tmp_path):
    """QAttention computes Q.K^T and probs.V in float: a QAT model that quantized them keeps them."""
    model = load_model(qat_model_dir("text-classification"), "text-classification")
    assert model.config._attn_implementation == "sparseforge_qat"
    with ort_fusion.fusable_attention(model):  # kept: it is already the eager form
        assert model.config._attn_implementation == "sparseforge_qat"
    target = to_onnx(qat_model_dir("text-classification"), "glue", sequence_length=16)
    report = report_of(target)
    fused = report["ort_fusion"].get("fused_nodes", {})
    assert "QAttention" not in fused and "Attention" not in fused
    assert report["verification"]["passed"]
    optimized = report["onnxruntime_optimized_node_counts"]
    assert (
        optimized.get("QLinearMatMul", 0) + optimized.get("MatMulIntegerToFloat", 0)
        == 6 * LAYERS + 2 * LAYERS
    )
    # Q/K/V biases are added by their MatMulIntegerToFloat, not by Add nodes of their own
    assert report["ort_fusion"]["rewrites"]["linear_biases"] == 3 * LAYERS
    optimized_path = tmp_path / "optimized.onnx"
    verify.create_session(target / "model.onnx", optimized_path)
    graph = onnx.load(str(optimized_path))
    constants = {init.name for init in graph.graph.initializer}
    kernels = {out: n.op_type for n in graph.graph.node for out in n.output}
    with_bias = [n for n in graph.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert sum(len(n.input) == 7 and n.input[6] in constants for n in with_bias) == 3 * LAYERS
    assert not [
        n
        for n in graph.graph.node
        if n.op_type == "Add"
        and kernels.get(n.input[0]) == "MatMulIntegerToFloat"
        and n.input[1] in constants
    ]


def dequantized_tables(path, tmp_path, rows: int) -> list[str]:
    """Initializers of `rows` rows that onnxruntime's optimized graph dequantizes whole."""
    optimized = tmp_path / f"{path.stem}_optimized.onnx"
    verify.create_session(path, optimized)
    graph = onnx.load(str(optimized))
    tables = {i.name for i in graph.graph.initializer if len(i.dims) == 2 and i.dims[0] == rows}
    nodes = graph.graph.node
    return [n.input[0] for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in tables]


@pytest.mark.slow
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantized_embeddings_are_dequantized_after_the_lookup(
    qat_model_dir, tmp_path, per_channel
):
    """onnxruntime would dequantize the whole int8 vocabulary table on every run (the largest
    cost at batch 1); the export gathers the int8 rows first, plain and fused."""
    model = load_model(qat_model_dir("text-classification", per_channel), "text-classification")
    vocab, width = model.config.vocab_size, model.config.hidden_size
    plain, fused, _ = export_and_fuse(model, tmp_path)
    for path in (plain, fused):
        graph = onnx.load(str(path))
        tables = [i for i in graph.graph.initializer if list(i.dims) == [vocab, width]]
        assert len(tables) == 1 and tables[0].data_type == onnx.TensorProto.INT8
        lookup = next(n for n in graph.graph.node if n.input[:1] == [tables[0].name])
        assert lookup.op_type == "Gather"
        assert dequantized_tables(path, tmp_path, vocab) == []
        diff = verify.compare(verify.create_session(path), model, padded_batches(), ["logits"])
        assert verify.tolerance_check(diff, quantized=True)[0], diff


@pytest.mark.slow
@pytest.mark.parametrize("per_channel", [False, True])
def test_option_runs_quantized_attention_as_qattention(qat_model_dir, tmp_path, per_channel):
    """`fuse_quantized_attention`: the QAT attention (quantized Q, K, probs, V) becomes
    QAttention over the same int8 Q/K/V weights; outputs stay within the QDQ tolerance."""
    model_dir = qat_model_dir("text-classification", per_channel)
    target = to_onnx(
        model_dir,
        "glue",
        sequence_length=16,
        output_dir=tmp_path / "fused",
        fuse_quantized_attention=True,
    )
    report = report_of(target)
    fusion = report["ort_fusion"]
    assert fusion["applied"] is True and report["verification"]["passed"]
    assert fusion["rewrites"]["float_attention_matmuls"] == LAYERS
    assert fusion["fused_nodes"]["QAttention"] == LAYERS
    optimized = report["onnxruntime_optimized_node_counts"]
    # only the attention output, intermediate and output dense remain integer MatMuls
    assert optimized.get("MatMulIntegerToFloat", 0) == 3 * LAYERS
    assert "Softmax" not in optimized and "QLinearMatMul" not in optimized
    assert "Transpose" not in optimized
    graph = onnx.load(str(target / "model.onnx"))
    stored = {init.name: onnx.numpy_helper.to_array(init) for init in graph.graph.initializer}
    qattention = next(node for node in graph.graph.node if node.op_type == "QAttention")
    assert stored[qattention.input[1]].dtype == np.int8
    assert stored[qattention.input[1]].shape == (32, 96)
    model = load_model(model_dir, "text-classification")
    diff = verify.compare(
        verify.create_session(target / "model.onnx"), model, padded_batches(), ["logits"]
    )
    assert verify.tolerance_check(diff, quantized=True)[0], diff


@pytest.mark.slow
def test_option_falls_back_when_the_float_attention_misses_the_tolerance(
    qat_model_dir, tmp_path, monkeypatch
):
    """A quantized model's tolerance is loose: the miss is simulated, the fallback is real."""
    real_check = ort_fusion._check

    def refuse_qattention(path, *args):
        if any(n.op_type == "QAttention" for n in onnx.load(str(path)).graph.node):
            return "fused graph max |diff| 9 beyond tolerance"
        return real_check(path, *args)

    monkeypatch.setattr(ort_fusion, "_check", refuse_qattention)
    target = to_onnx(
        qat_model_dir("text-classification"),
        "glue",
        sequence_length=16,
        output_dir=tmp_path / "fallback",
        fuse_quantized_attention=True,
    )
    report = report_of(target)
    fusion = report["ort_fusion"]
    assert fusion["applied"] is True and report["verification"]["passed"]
    assert fusion["fuse_quantized_attention"].startswith("not applied: fused graph max |diff|")
    assert "QAttention" not in fusion["fused_nodes"]
    assert fusion["rewrites"]["linear_biases"] == 3 * LAYERS


@pytest.mark.slow
def test_fused_graph_that_fails_verification_is_not_kept(tiny_model_dir, monkeypatch):
    real_fuse = ort_fusion.fuse

    def corrupting_fuse(graph, **options):
        fused, report = real_fuse(graph, **options)
        for init in fused.graph.initializer:
            array = onnx.numpy_helper.to_array(init)
            if array.dtype == np.float32 and array.ndim == 2 and "qkv" in init.name.lower():
                init.CopyFrom(onnx.numpy_helper.from_array(array * 3.0, init.name))
        return fused, report

    monkeypatch.setattr(ort_fusion, "fuse", corrupting_fuse)
    model_dir = tiny_model_dir("text-classification", num_hidden_layers=1)
    target = to_onnx(model_dir, "text-classification", sequence_length=16)
    report = report_of(target)
    assert report["ort_fusion"]["applied"] is False
    assert "beyond tolerance" in report["ort_fusion"]["reason"]
    assert "Attention" not in report["node_counts"] and report["verification"]["passed"]


@pytest.mark.slow
def test_fused_graph_onnxruntime_cannot_load_is_not_kept(tiny_model_dir, monkeypatch):
    real_fuse = ort_fusion.fuse

    def broken_fuse(graph, **options):
        fused, report = real_fuse(graph, **options)
        fused.graph.node[-1].input[0] = "no_such_tensor"
        return fused, report

    monkeypatch.setattr(ort_fusion, "fuse", broken_fuse)
    model_dir = tiny_model_dir("text-classification", num_hidden_layers=1)
    target = to_onnx(model_dir, "text-classification", sequence_length=16)
    report = report_of(target)
    assert report["ort_fusion"]["applied"] is False
    assert "cannot run the fused graph" in report["ort_fusion"]["reason"]
    assert report["verification"]["passed"] and "Attention" not in report["node_counts"]
    assert sorted(p.name for p in target.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    ("argv", "expected"), [([], True), (["--no_ort_fusion"], False), (["--no-ort-fusion"], False)]
)
def test_cli_flag(argv, expected):
    args = build_parser().parse_args(["onnx", "--model_path", "m", "--task", "glue", *argv])
    assert args.ort_fusion is expected
    assert args.fuse_quantized_attention is False


def test_cli_flag_for_quantized_attention():
    base = ["onnx", "--model_path", "m", "--task", "glue"]
    for flag in ("--fuse_quantized_attention", "--fuse-quantized-attention"):
        assert build_parser().parse_args([*base, flag]).fuse_quantized_attention is True
