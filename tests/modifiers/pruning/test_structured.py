"""GroupPruningModifier: groups found per family, exact counts per update, real removal, reload."""

import json

import pytest
import torch
import transformers
from structured_models import batch, logits, make_model, train

from sparseforge import Manager, ModelMatchError, RecipeError
from sparseforge.modifiers.pruning.compaction import PLAN_KEY, compact_model, compact_zeroed
from sparseforge.modifiers.pruning.group_masks import select_groups, target_count
from sparseforge.modifiers.pruning.groups import find_encoder_groups
from sparseforge.transformers.loading import load_model

RECIPE = """
pruning_modifiers:
  - !GroupPruningModifier
    start_epoch: 0.0
    end_epoch: 2.0
    update_frequency: 0.5
    inter_func: linear
    final_sparsity: FINAL
    score: SCORE
"""


def recipe(final="{heads: 0.5, neurons: 0.5}", score="first_order", **extra):
    text = RECIPE.replace("FINAL", final).replace("SCORE", score)
    return text + "".join(f"    {k}: {v}\n" for k, v in extra.items())


def run(model, text, steps, optimizer=None, **kwargs):
    manager = Manager(text)
    optimizer = manager.modify(
        model,
        optimizer or torch.optim.AdamW(model.parameters(), lr=1e-3),
        steps_per_epoch=4,
        **kwargs,
    )
    train(model, optimizer, manager, steps, teacher_loss="distillation_teacher" in kwargs)
    return manager, optimizer


# ----- discovery -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family, q, o, ffn_in",
    [
        (
            "bert",
            "bert.encoder.layer.1.attention.self.query",
            "bert.encoder.layer.1.attention.output.dense",
            "bert.encoder.layer.1.intermediate.dense",
        ),
        (
            "roberta",
            "roberta.encoder.layer.1.attention.self.query",
            "roberta.encoder.layer.1.attention.output.dense",
            "roberta.encoder.layer.1.intermediate.dense",
        ),
        (
            "distilbert",
            "distilbert.transformer.layer.1.attention.q_lin",
            "distilbert.transformer.layer.1.attention.out_lin",
            "distilbert.transformer.layer.1.ffn.lin1",
        ),
        (
            "mpnet",
            "mpnet.encoder.layer.1.attention.attn.q",
            "mpnet.encoder.layer.1.attention.attn.o",
            "mpnet.encoder.layer.1.intermediate.dense",
        ),
    ],
)
def test_groups_found_from_the_model_whatever_its_names(family, q, o, ffn_in):
    groups = find_encoder_groups(make_model(family, heads=4))
    assert len(groups.layers) == 3
    layer = groups.layers[1]
    assert (layer.q, layer.o, layer.ffn_in) == (q, o, ffn_in)
    assert (layer.num_heads, layer.head_size) == (4, 8)
    assert (groups.shared_head_table is not None) == (family == "mpnet")


def test_a_model_without_an_encoder_is_a_model_match_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ModelMatchError, match="no BERT-class encoder layers"):
        Manager(recipe()).modify(model, torch.optim.SGD(model.parameters(), lr=0.1), 4)


# ----- masks -------------------------------------------------------------------------------------
def test_select_groups_is_global_with_a_minimum_per_layer_and_never_revives():
    scores = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.1, 0.2, 0.3, 0.4])]
    keep = select_groups(scores, 4, min_keep=1)
    # globally the four lowest are all of layer 1, but layer 1 keeps its best (0.4)
    assert keep[0].tolist() == [False, True, True, True]
    assert keep[1].tolist() == [False, False, False, True]
    previous = [torch.tensor([True, True, False, True]), torch.ones(4, dtype=torch.bool)]
    keep = select_groups(scores, 1, min_keep=1, previous=previous)
    assert keep[0].tolist() == [True, True, False, True]
    assert target_count(0.9, [4, 4], 1) == 6  # capped by the minimum kept per layer


@pytest.mark.parametrize("score", ["magnitude", "first_order", "movement"])
def test_exact_group_counts_after_each_update_and_masks_in_forward(score):
    model = make_model("bert")
    manager, optimizer = run(model, recipe(score=score), 5)  # last update at epoch 1.0: halfway
    mod = manager.modifiers[0]
    keep = mod.group_keep()
    assert sum(int(k.sum()) for k in keep["heads"]) == 12 - round(0.25 * 12)
    assert sum(int(k.sum()) for k in keep["neurons"]) == 192 - round(0.25 * 192)
    assert all(int(k.sum()) >= 1 for k in keep["heads"])
    groups = find_encoder_groups(model)
    for layer, heads, neurons in zip(groups.layers, keep["heads"], keep["neurons"], strict=True):
        rows = heads.repeat_interleave(8)
        q = model.get_submodule(layer.q)
        assert not q.weight[~rows].any() and not q.bias[~rows].any()
        assert not model.get_submodule(layer.o).weight[:, ~rows].any()
        assert not model.get_submodule(layer.ffn_in).bias[~neurons].any()
        assert not model.get_submodule(layer.ffn_out).weight[:, ~neurons].any()
        assert q.weight[rows].abs().sum() > 0
    # gradients of pruned rows are zeroed before the step
    out = model(**batch(5))
    out.loss.backward()
    manager.mask_gradients()
    layer = groups.layers[0]
    rows = keep["heads"][0].repeat_interleave(8)
    assert not model.get_submodule(layer.q).weight.grad[~rows].any()
    assert manager.logs()["structured/heads_kept"] == 9.0


def test_global_sparsity_false_prunes_every_kept_layer_alike():
    """Per-layer ranking (`global_sparsity: false`): layers chosen first, then each kept layer
    keeps the same number of heads and neurons."""
    model = make_model("bert", layers=4)
    text = recipe("{heads: 0.5, neurons: 0.75, layers: 0.5}", global_sparsity="false")
    manager, _ = run(model, text, 9)  # past end_epoch 2.0: final targets, compacted
    mod = manager.modifiers[0]
    kept_layers = [i for i, alive in enumerate(mod.group_keep()["layers"][0].tolist()) if alive]
    assert len(kept_layers) == 2
    groups = find_encoder_groups(model)  # compacted: the kept layers' Linears are smaller
    widths = [
        (
            model.get_submodule(groups.layers[i].q).out_features,
            groups.neurons(model, groups.layers[i]),
        )
        for i in kept_layers
    ]
    assert widths == [(2 * 8, 16), (2 * 8, 16)]  # 2 of 4 heads (size 8), 16 of 64 neurons each
    assert type(mod).model_fields["global_sparsity"].default is True  # the default ranks across


# ----- compaction: outputs equal the masked model's ----------------------------------------------
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_compacted_model_equals_masked_model(family):
    model = make_model(family)
    # last update at epoch 1.5 (step 6): sparsity 0.375 of heads and neurons, 1 layer of 3
    manager, optimizer = run(model, recipe("{heads: 0.5, neurons: 0.5, layers: 0.34}"), 7)
    inputs = batch(42)
    masked = logits(model, inputs)
    params_before = sum(p.numel() for p in model.parameters())
    manager.finalize(model)
    compacted = logits(model, inputs)
    torch.testing.assert_close(compacted, masked, atol=1e-5, rtol=0)
    groups = find_encoder_groups(model)
    assert len(groups.layers) == 2
    assert sum(groups.heads(model, layer) for layer in groups.layers) == 8 - round(0.375 * 8)
    assert sum(groups.neurons(model, layer) for layer in groups.layers) == 128 - round(0.375 * 128)
    assert sum(p.numel() for p in model.parameters()) < params_before
    assert all(type(model.get_submodule(layer.q)) is torch.nn.Linear for layer in groups.layers)


def test_compaction_at_end_epoch_moves_the_optimizer_and_training_continues():
    model = make_model("bert")
    manager, optimizer = run(
        model, recipe(), 9
    )  # end_epoch 2.0 = step 8: compacted, then one more step
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in ids for p in model.parameters())
    q = model.bert.encoder.layer[0].attention.self.query.weight
    assert optimizer.state[q]["exp_avg"].shape == q.shape
    assert (
        model.bert.encoder.layer[0].attention.self.query.out_features < 32
        or model.bert.encoder.layer[1].attention.self.query.out_features < 32
    )
    before = q.detach().clone()
    train(model, optimizer, manager, 1, seed=77)
    assert not torch.equal(before, q.detach())


def test_compact_zeroed_removes_all_zero_groups():
    model = make_model("roberta")
    groups = find_encoder_groups(model)
    with torch.no_grad():
        layer = groups.layers[0]
        for role in ("q", "k", "v"):
            module = model.get_submodule(getattr(layer, role))
            module.weight[8:16] = 0
            module.bias[8:16] = 0
        model.get_submodule(layer.o).weight[:, 8:16] = 0
        ffn_in, ffn_out = model.get_submodule(layer.ffn_in), model.get_submodule(layer.ffn_out)
        ffn_in.weight[:10] = 0
        ffn_in.bias[:10] = 0
        ffn_out.weight[:, :10] = 0
        for name in groups.weight_names(groups.layers[2]):
            model.get_parameter(name).zero_()
    plan = compact_zeroed(model)
    assert plan["kept_layers"] == [0, 1]
    assert plan["heads"] == [[0, 2, 3], [0, 1, 2, 3]]
    assert plan["neurons"] == [54, 64]


def test_mpnet_heads_refused_but_neurons_and_layers_compact():
    model = make_model("mpnet")
    with pytest.raises(ModelMatchError, match="relative"):
        Manager(recipe()).modify(model, torch.optim.SGD(model.parameters(), lr=0.1), 4)
    manager, _ = run(model, recipe("{neurons: 0.5, layers: 0.34}"), 7)
    inputs = batch(3)
    masked = logits(model, inputs)
    manager.finalize(model)
    torch.testing.assert_close(logits(model, inputs), masked, atol=1e-5, rtol=0)
    assert len(model.mpnet.encoder.layer) == 2


# ----- validation before training ------------------------------------------------------------------
@pytest.mark.parametrize(
    "final, message",
    [
        ("{heads: 1.0}", "heads sparsity must be within"),
        ("{layer: 0.5}", "unknown structure 'layer'"),
        ("1.0", "1.0 would remove every head"),
    ],
)
def test_bad_targets_are_recipe_errors(final, message):
    with pytest.raises(RecipeError, match=message) as info:
        Manager(recipe(final))
    assert "final_sparsity" in str(info.value) and "line" in str(info.value)


def test_params_and_unreachable_targets_are_refused_before_training():
    with pytest.raises(RecipeError, match="finds its groups"):
        Manager(recipe() + "    params: ['re:.*query.weight']\n")
    model = make_model("bert", layers=2)
    text = recipe("{neurons: 0.9}", min_neurons_per_layer=16)
    with pytest.raises(ModelMatchError, match="most this model allows is 0.75"):
        Manager(text).modify(model, torch.optim.SGD(model.parameters(), lr=0.1), 4)


# ----- saving and reload ----------------------------------------------------------------------------
def test_saved_model_reloads_with_load_model(tmp_path):
    model = make_model("bert")
    manager, _ = run(model, recipe("{heads: 0.5, neurons: 0.4, layers: 0.34}"), 9)
    manager.finalize(model)
    model.save_pretrained(tmp_path)
    manager.recipe.save(tmp_path / "recipe.yaml")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and PLAN_KEY in config
    loaded = load_model(tmp_path, "text-classification")
    inputs = batch(11)
    torch.testing.assert_close(logits(loaded, inputs), logits(model, inputs), atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError):  # uneven heads: plain transformers cannot build it
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_neurons_and_layers_evenly_removed_load_in_plain_transformers(tmp_path, family):
    model = make_model(family, layers=2)
    groups = find_encoder_groups(model)
    keep_neurons = [torch.arange(0, 64, 2), torch.arange(32)]
    compact_model(model, [1], [[0, 1, 2, 3]] * 2, keep_neurons, groups=groups)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    width, depth = (
        ("hidden_dim", "n_layers")
        if family == "distilbert"
        else ("intermediate_size", "num_hidden_layers")
    )
    assert (config[width], config[depth]) == (32, 1)
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    inputs = batch(12)
    torch.testing.assert_close(logits(plain, inputs), logits(model, inputs), atol=1e-6, rtol=0)


def test_apply_structure_rebuilds_a_fresh_model(tmp_path):
    model = make_model("distilbert")
    manager, _ = run(model, recipe("{heads: 0.5, neurons: 0.5, layers: 0.34}"), 9)
    manager.finalize(model)
    fresh = transformers.DistilBertForSequenceClassification(model.config)
    Manager(recipe("{heads: 0.5, neurons: 0.5, layers: 0.34}")).apply_structure(fresh)
    fresh.load_state_dict(model.state_dict())  # strict
    inputs = batch(13)
    torch.testing.assert_close(logits(fresh, inputs), logits(model, inputs), atol=1e-6, rtol=0)


# ----- with other modifiers ------------------------------------------------------------------------
def test_distillation_trains_with_structured_pruning():
    model = make_model("bert")
    teacher = make_model("bert", seed=1)
    text = (
        recipe()
        + """
distillation_modifiers:
  - !DistillationModifier
    hardness: 0.5
    temperature: 2.0
    distill_output_keys: [logits]
"""
    )
    manager, _ = run(model, text, 9, distillation_teacher=teacher)
    assert "distillation/loss" in manager.logs() or any(
        k.startswith("distillation") for k in manager.logs()
    )
    manager.finalize(model)
    assert (
        sum(
            m.out_features
            for m in model.modules()
            if isinstance(m, torch.nn.Linear) and m.out_features < 32
        )
        > 0
    )


def test_unstructured_pruning_of_what_is_left():
    model = make_model("bert")
    text = (
        recipe("{neurons: 0.3}")
        + """
  - !GMPruningModifier
    params: ['re:bert.encoder.layer.*.intermediate.dense.weight']
    start_epoch: 2.0
    end_epoch: 3.0
    update_frequency: 0.5
    init_sparsity: 0.3
    final_sparsity: 0.7
"""
    )
    manager, _ = run(model, text, 13)
    manager.finalize(model)
    for layer in model.bert.encoder.layer:
        weight = layer.intermediate.dense.weight
        assert weight.shape[0] < 64  # neurons removed for real ...
        zeros = float((weight == 0).float().mean())
        assert abs(zeros - 0.7) < 0.02  # ... and 70% of what is left pruned


def test_resume_mid_schedule_continues_exactly():
    import copy

    model = make_model("bert")
    manager, optimizer = run(model, recipe(score="first_order"), 3)
    state = manager.state_dict()
    twin = copy.deepcopy(model)
    twin_manager = Manager(recipe(score="first_order"))
    twin_optimizer = twin_manager.modify(
        twin, torch.optim.AdamW(twin.parameters(), lr=1e-3), steps_per_epoch=4
    )
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    twin_manager.load_state_dict(state)
    train(model, optimizer, manager, 4, seed=60)
    train(twin, twin_optimizer, twin_manager, 4, seed=60)
    for a, b in zip(
        manager.modifiers[0].group_keep()["heads"],
        twin_manager.modifiers[0].group_keep()["heads"],
        strict=True,
    ):
        assert torch.equal(a, b)
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_compaction_refuses_quantized_layers_rather_than_dropping_their_quantization():
    from sparseforge.modifiers.quantization import QuantizationModifier

    model = make_model("bert")
    QuantizationModifier(submodules=["bert.encoder"]).apply_structure(model)
    groups = find_encoder_groups(model)  # QAT Linear subclasses are still found
    with pytest.raises(ModelMatchError, match="before quantization-aware training"):
        compact_model(model, [0, 1, 2], [[0, 1]] * 3, [torch.arange(64)] * 3, groups=groups)


def test_group_counts_follow_the_schedule_at_every_update():
    model = make_model("bert")
    manager = Manager(
        recipe("{heads: 0.5, neurons: 0.75, layers: 0.34}").replace("linear", "cubic")
    )
    optimizer = manager.modify(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), steps_per_epoch=4
    )
    mod = manager.modifiers[0]
    for step in range(8):  # updates every 2 steps (0.5 epoch) until end_epoch 2.0 = step 8
        train(model, optimizer, manager, 1, seed=step)
        epoch = 2 * (step // 2) / 4
        cubic = 1 - (1 - epoch / 2) ** 3
        keep = mod.group_keep()
        layers_pruned = round(cubic * 0.34 * 3)
        live = keep["layers"][0]
        assert int((~live).sum()) == layers_pruned
        live_heads = [k for k, alive in zip(keep["heads"], live.tolist(), strict=True) if alive]
        live_neurons = [k for k, alive in zip(keep["neurons"], live.tolist(), strict=True) if alive]
        heads_total, neurons_total = 4 * len(live_heads), 64 * len(live_neurons)
        assert sum(int(k.sum()) for k in live_heads) == heads_total - round(
            cubic * 0.5 * heads_total
        )
        assert sum(int(k.sum()) for k in live_neurons) == neurons_total - round(
            cubic * 0.75 * neurons_total
        )
