"""Recipe loading: SparseML's formats and quirks, stages, overrides, round-trips, and errors."""

import math
import time
from pathlib import Path

import pytest
from hang import HANG_SECONDS

from sparseforge import Recipe, RecipeError
from sparseforge.modifiers.base import Modifier
from sparseforge.modifiers.training import (
    EpochRangeModifier,
    LearningRateFunctionModifier,
    SetLearningRateModifier,
    SetWeightDecayModifier,
    TrainableParamsModifier,
)
from sparseforge.recipe.registry import _REGISTRY, register

RECIPES = Path(__file__).parent.parent / "fixtures" / "recipes"


@pytest.fixture(scope="module", autouse=True)
def pruning_like_modifier():
    """A modifier with pruning-style field types, registered only for these tests."""

    class RecipeTestPruningModifier(Modifier):
        params: str | list[str]
        init_sparsity: float = 0.0
        final_sparsity: float
        mask_type: str | list[int] = "unstructured"
        leave_enabled: bool = True

    register(RecipeTestPruningModifier)
    yield RecipeTestPruningModifier
    _REGISTRY.pop("RecipeTestPruningModifier", None)


def test_markdown_front_matter_with_licence_comment_and_anchors():
    recipe = Recipe.load(RECIPES / "seed_style.md")
    kinds = [type(mod) for mod in recipe.modifiers]
    assert kinds == [
        EpochRangeModifier,
        LearningRateFunctionModifier,
        LearningRateFunctionModifier,
        SetWeightDecayModifier,
    ]
    epoch_range, lr_main, lr_qat, decay = recipe.modifiers
    assert (epoch_range.start_epoch, epoch_range.end_epoch) == (0.0, 40.0)
    assert (lr_main.start_epoch, lr_main.end_epoch, lr_main.init_lr) == (0.0, 30.0, 5e-5)
    assert (lr_qat.start_epoch, lr_qat.end_epoch) == (30.0, 40.0)
    assert decay.weight_decay == 0.01
    assert recipe.max_epochs == 40
    assert list(recipe.stages[0].groups) == ["training_modifiers", "regularization_modifiers"]


def test_transfer_guide_style_with_eval_flow_style_and_yaml11_floats():
    recipe = Recipe.load(RECIPES / "transfer_style.yaml")
    epoch_range, lr_main, lr_qat, trainable, decay = recipe.modifiers
    assert epoch_range.end_epoch == 13.0
    assert lr_main.init_lr == 1.5e-4 and isinstance(lr_main.init_lr, float)
    assert lr_main.final_lr == 0.0 and isinstance(lr_main.final_lr, float)
    # flow style `- !X {a: 1}` parses like block style
    assert (lr_qat.lr_func, lr_qat.start_epoch, lr_qat.end_epoch, lr_qat.init_lr) == (
        "cosine",
        8.0,
        13.0,
        8e-5,
    )
    # eval(name) of a non-numeric variable yields its value
    assert trainable.params == ["re:bert.embeddings.*"] and trainable.end_epoch == 2.0
    assert decay.weight_decay == 0.01
    assert recipe.version == "1.1.0"


def test_integer_sparsity_and_exponent_strings_become_floats():
    recipe = Recipe.load(
        """
final: 1
lr: 8e-5
pruning_modifiers:
  - !RecipeTestPruningModifier
    params: ["re:.*weight"]
    init_sparsity: 0
    final_sparsity: eval(final)
    mask_type: [1, 4]
training_modifiers:
  - !SetLearningRateModifier {learning_rate: eval(lr)}
"""
    )
    prune, set_lr = recipe.modifiers
    assert prune.init_sparsity == 0.0 and isinstance(prune.init_sparsity, float)
    assert prune.final_sparsity == 1.0 and isinstance(prune.final_sparsity, float)
    assert prune.mask_type == [1, 4]
    assert set_lr.learning_rate == pytest.approx(8e-5)


def test_staged_recipe_holds_absolute_epochs_and_stage_variables_override():
    # SparseML's loader does not move a file's stage 2 after stage 1 (issue 18.1); only
    # compose_staged does. (This test asserted the old shift: finetune at 2.0, max_epochs 5.)
    recipe = Recipe.load(RECIPES / "staged.yaml")
    assert [stage.name for stage in recipe.stages] == ["dense_stage", "finetune_stage"]
    dense, finetune = recipe.stages
    assert dense.span() == (0.0, 2.0) and finetune.span() == (0.0, 3.0)
    dense_lr = dense.groups["training_modifiers"][1]
    finetune_set = finetune.groups["training_modifiers"][1]
    assert dense_lr.init_lr == 0.1  # global variable
    assert finetune_set.learning_rate == 0.01  # stage variable overrides the global one
    assert finetune_set.start_epoch == 0.0 and finetune_set.scheduled_start == 0.0
    assert recipe.max_epochs == 3


def test_recipe_args_override_variables_in_every_form():
    for args in (
        {"num_epochs": 10},
        '{"num_epochs": 10}',
        "num_epochs=10",
        "num_epochs=10,init_lr=0.001",
    ):
        recipe = Recipe.load(RECIPES / "transfer_style.yaml", args)
        assert recipe.modifiers[0].end_epoch == 10.0
        assert recipe.modifiers[2].end_epoch == 10.0
        assert recipe.max_epochs == 10
    assert (
        Recipe.load(RECIPES / "transfer_style.yaml", "num_epochs=10,init_lr=0.001")
        .modifiers[1]
        .init_lr
        == 0.001
    )


def test_recipe_args_reach_every_alias_of_an_anchored_variable():
    """Issue 21: the seed writes `end_epoch: *num_epochs`; YAML resolves the alias to 40 when
    parsing, so an override of num_epochs used to change the variable and nothing else."""
    recipe = Recipe.load(
        RECIPES / "seed_style.md",
        {"num_epochs": 2, "quantization_start_epoch": 1.5, "init_lr": 1e-4},
    )
    epoch_range, lr_main, lr_qat, _ = recipe.modifiers
    assert epoch_range.end_epoch == 2.0 and recipe.max_epochs == 2
    assert (lr_main.end_epoch, lr_main.init_lr) == (1.5, 1e-4)
    assert (lr_qat.start_epoch, lr_qat.end_epoch, lr_qat.init_lr) == (1.5, 2.0, 1e-4)
    # without overrides the aliases keep their values; the evaluated YAML has no eval() left
    plain = Recipe.load(RECIPES / "seed_style.md")
    assert plain.modifiers[0].end_epoch == 40.0 and "eval(" not in plain.to_yaml()


def test_alias_links_respect_stage_scopes_and_leave_other_values_alone():
    text = (
        "num_epochs: &n 10\n"
        "other: *n\n"
        "func: &f linear\n"
        "stage_a:\n"
        "  num_epochs: 3\n"
        "  modifiers:\n"
        "    - !EpochRangeModifier {start_epoch: 0, end_epoch: *n}\n"
        "stage_b:\n"
        "  modifiers:\n"
        "    - !LearningRateFunctionModifier\n"
        "      {start_epoch: 0, end_epoch: *n, lr_func: *f, init_lr: 0.1, final_lr: 0.0}\n"
    )
    recipe = Recipe.load(text, {"num_epochs": 4})
    stage_a, stage_b = recipe.stages
    # stage_a defines its own num_epochs: an alias of the global there keeps the global's number
    assert stage_a.modifiers[0].end_epoch == 10.0
    assert stage_b.modifiers[0].end_epoch == 4.0 and stage_b.modifiers[0].lr_func == "linear"
    assert recipe.variables["other"] == 4
    # a recipe without stages: aliases in flow-style modifier fields follow the override too
    nested = Recipe.load(
        "end_epoch: &e 3\n"
        "modifiers:\n"
        "  - !EpochRangeModifier {start_epoch: 0, end_epoch: *e}\n"
        "  - !SetLearningRateModifier {start_epoch: *e, learning_rate: 0.1}\n",
        {"end_epoch": 6},
    )
    assert nested.modifiers[0].end_epoch == 6.0 and nested.modifiers[1].start_epoch == 6.0


def test_recipe_args_for_an_undefined_variable_is_an_error():
    with pytest.raises(RecipeError, match=r"'nope'.*does not define.*num_epochs"):
        Recipe.load(RECIPES / "transfer_style.yaml", "nope=1")


def test_to_yaml_round_trips_to_equal_modifiers():
    for name in ("seed_style.md", "transfer_style.yaml", "staged.yaml"):
        recipe = Recipe.load(RECIPES / name)
        text = recipe.to_yaml()
        assert "eval(" not in text and text.startswith("version: 1.1.0")
        again = Recipe.load(text)
        assert again.modifiers == recipe.modifiers, name
        assert [m.scheduled_start for m in again.modifiers] == [
            m.scheduled_start for m in recipe.modifiers
        ]
        assert again.max_epochs == recipe.max_epochs
        assert again.to_yaml() == text


def test_save_writes_the_evaluated_recipe(tmp_path):
    recipe = Recipe.load(RECIPES / "transfer_style.yaml")
    path = recipe.save(tmp_path / "recipe.yaml")
    assert Recipe.load(path).modifiers == recipe.modifiers
    assert not list(tmp_path.glob("*.tmp"))


def test_dict_and_modifier_list_sources():
    data = {
        "num_epochs": 2,
        "training_modifiers": [
            {"!EpochRangeModifier": {"start_epoch": 0, "end_epoch": "eval(num_epochs)"}},
            {"SetLearningRateModifier": {"learning_rate": 0.1}},
        ],
    }
    from_dict = Recipe.load(data, {"num_epochs": 4})
    assert [type(m) for m in from_dict.modifiers] == [EpochRangeModifier, SetLearningRateModifier]
    assert from_dict.max_epochs == 4
    mods = [
        EpochRangeModifier(start_epoch=0, end_epoch=2),
        SetLearningRateModifier(learning_rate=0.1),
    ]
    recipe = Recipe.load(mods)
    assert recipe.modifiers == mods and recipe.max_epochs == 2
    with pytest.raises(RecipeError, match="tagged modifier"):
        Recipe.load({"training_modifiers": [{"a": 1, "b": 2}]})


def test_top_level_list_and_the_sparseml_v0_modifiers_key():
    text = "modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 4}\n"
    assert Recipe.load(text).max_epochs == 4
    assert Recipe.load("- !EpochRangeModifier {start_epoch: 0, end_epoch: 2}\n").max_epochs == 2


def test_max_epochs_is_sparseml_ceiling():
    recipe = Recipe.load(
        "m_modifiers:\n  - !SetLearningRateModifier {start_epoch: 2.5, learning_rate: 0.1}\n"
    )
    assert recipe.max_epochs == 3
    assert (
        Recipe.load("m_modifiers:\n  - !SetLearningRateModifier {learning_rate: 0.1}\n").max_epochs
        == -1
    )


# ----- errors: each names the file, the line, the modifier and the field ---------------------


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_modifier_is_located(tmp_path):
    path = write(tmp_path, "a: 1\ntraining_modifiers:\n  - !EpochRangeModifer {end_epoch: 2}\n")
    with pytest.raises(RecipeError) as info:
        Recipe.load(path)
    err = info.value
    assert err.file == str(path) and err.line == 3
    assert "unknown modifier !EpochRangeModifer" in str(
        err
    ) and "did you mean EpochRangeModifier" in str(err)
    assert str(err).count("EpochRangeModifier") == 1  # each suggestion once (it was listed twice)


def test_unimplemented_sparseml_modifier_says_so():
    with pytest.raises(
        RecipeError,
        match="SparseML modifier that is not implemented|not implemented in sparseforge",
    ):
        Recipe.load("m_modifiers:\n  - !RigLPruningModifier {start_epoch: 0}\n")


def test_unknown_field_is_located_with_suggestion(tmp_path):
    path = write(
        tmp_path,
        "m_modifiers:\n  - !LearningRateFunctionModifier\n    start_epoch: 0\n    end_epoch: 2\n"
        "    lr_funk: linear\n    init_lr: 0.1\n    final_lr: 0.0\n",
    )
    with pytest.raises(RecipeError) as info:
        Recipe.load(path)
    err = info.value
    assert (err.line, err.modifier, err.field) == (5, "LearningRateFunctionModifier", "lr_funk")
    assert "did you mean 'lr_func'" in str(err)
    assert str(err).startswith(f"{path}:5: modifier LearningRateFunctionModifier, field 'lr_funk'")


def test_invalid_value_is_located(tmp_path):
    path = write(
        tmp_path,
        "m_modifiers:\n  - !LearningRateFunctionModifier\n    start_epoch: 0\n    end_epoch: 2\n    lr_func: stepwise\n    init_lr: 0.1\n    final_lr: 0.0\n",
    )
    with pytest.raises(RecipeError) as info:
        Recipe.load(path)
    assert (info.value.line, info.value.field) == (5, "lr_func")
    assert "'linear', 'cosine' or 'cyclic_linear'" in str(info.value)


def test_bad_eval_inside_a_modifier_is_located(tmp_path):
    path = write(
        tmp_path,
        "x: 1\nm_modifiers:\n  - !SetLearningRateModifier\n    learning_rate: eval(__import__('os').getcwd())\n",
    )
    with pytest.raises(RecipeError) as info:
        Recipe.load(path)
    assert (info.value.line, info.value.field) == (4, "learning_rate")
    assert "not allowed" in str(info.value)


def test_cycle_and_undefined_variables_are_located(tmp_path):
    path = write(
        tmp_path,
        "a: eval(b)\nb: eval(a)\nm_modifiers:\n  - !SetLearningRateModifier {learning_rate: eval(a)}\n",
    )
    with pytest.raises(RecipeError, match="cycle") as info:
        Recipe.load(path)
    assert info.value.file == str(path) and info.value.line in (1, 2)
    with pytest.raises(RecipeError, match="undefined variable 'nope'"):
        Recipe.load("m_modifiers:\n  - !SetLearningRateModifier {learning_rate: eval(nope)}\n")


def test_python_tags_never_construct_objects(tmp_path):
    marker = tmp_path / "pwned"
    text = f"x: !!python/object/apply:os.system ['touch {marker}']\nm_modifiers: []\n"
    with pytest.raises(RecipeError):
        Recipe.load(text)
    assert not marker.exists()


def test_yaml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, "a: 1\nm_modifiers:\n  - !SetLearningRateModifier {learning_rate: 0.1\n")
    with pytest.raises(RecipeError, match="invalid YAML") as info:
        Recipe.load(path)
    # the reader fails at the end of the text (line 4), and names where the open mapping began
    assert (
        info.value.line == 4
        and info.value.file == str(path)
        and "line 3, column 30" in str(info.value)
    )


def test_markdown_without_front_matter_is_an_error(tmp_path):
    with pytest.raises(RecipeError, match="front matter"):
        Recipe.load(write(tmp_path, "# just docs\n", name="recipe.md"))


def test_modifiers_under_a_non_group_key_are_refused():
    with pytest.raises(RecipeError, match="'mods' holds modifiers"):
        Recipe.load("mods:\n  - !SetLearningRateModifier {learning_rate: 0.1}\n")


def test_missing_file_and_schedule_errors(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        Recipe.load(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="before start_epoch"):
        Recipe.load("m_modifiers:\n  - !EpochRangeModifier {start_epoch: 3, end_epoch: 1}\n")
    with pytest.raises(RecipeError, match="either start_epoch or start_step"):
        Recipe.load("m_modifiers:\n  - !EpochRangeModifier {start_epoch: 3, start_step: 10}\n")


def test_trainable_params_fields_validate():
    with pytest.raises(RecipeError, match="trainable"):
        Recipe.load("m_modifiers:\n  - !TrainableParamsModifier {params: [a]}\n")
    recipe = Recipe.load(
        "m_modifiers:\n  - !TrainableParamsModifier {params: __ALL__, trainable: false}\n"
    )
    assert isinstance(recipe.modifiers[0], TrainableParamsModifier)


# ----- the loading contract: a Recipe or a RecipeError, quickly (issue 20, items 5-7) ---------

EPOCHS_AT = (
    "training_modifiers:\n  - !EpochRangeModifier\n    start_epoch: 0.0\n    end_epoch: {}\n"
)


@pytest.mark.parametrize(
    "value", [".nan", ".NaN", ".inf", "-.inf", "1e999", "nan", "eval(big * big)"]
)
def test_nan_and_inf_in_a_schedule_field_are_located_errors(value):
    text = "big: 1e200\n" + EPOCHS_AT.format(value)
    with pytest.raises(
        RecipeError, match=r"must be a finite number, got (nan|inf|-inf)|overflow"
    ) as info:
        Recipe.load(text)
    assert (info.value.modifier, info.value.field, info.value.line) == (
        "EpochRangeModifier",
        "end_epoch",
        5,
    )


def test_nan_anywhere_in_any_field_is_refused():
    with pytest.raises(RecipeError, match="finite") as info:
        Recipe.load(
            "m_modifiers:\n  - !GMPruningModifier {params: [w], init_sparsity: 0.0, final_sparsity: .nan, start_epoch: 0, end_epoch: 1, update_frequency: 0.5}\n"
        )
    assert info.value.field == "final_sparsity"
    with pytest.raises(RecipeError, match="update_frequency.*finite|finite") as info:
        Recipe.load(
            "m_modifiers:\n  - !GMPruningModifier {params: [w], final_sparsity: 0.5, start_epoch: 0, end_epoch: 1, update_frequency: .inf}\n"
        )
    assert info.value.field == "update_frequency"
    lr = "m_modifiers:\n  - !LearningRateModifier {{lr_class: StepLR, lr_kwargs: {{step_size: 1, gamma: {}}}, init_lr: 0.1}}\n"
    with pytest.raises(RecipeError, match="finite") as info:
        Recipe.load(lr.format(".nan"))
    assert info.value.field == "lr_kwargs"
    quant = "q_modifiers:\n  - !QuantizationModifier\n    start_epoch: 0\n    scheme:\n      weights: {{num_bits: 8, kwargs: {{averaging_constant: {}}}}}\n"
    assert Recipe.load(quant.format("0.01")).modifiers[0].scheme.weights.kwargs == {
        "averaging_constant": 0.01
    }
    with pytest.raises(RecipeError, match="finite") as info:  # inside a nested spec too
        Recipe.load(quant.format(".nan"))
    assert info.value.field == "scheme"
    with pytest.raises(ValueError, match="finite"):  # the Python API validates the same way
        EpochRangeModifier(start_epoch=0.0, end_epoch=float("nan"))


def test_a_nan_recipe_is_never_written():
    text = EPOCHS_AT.format(".nan")
    with pytest.raises(RecipeError):
        Recipe.load(text)
    # what a checkpoint would have held before the fix is refused on reading back too
    with pytest.raises(RecipeError, match="finite"):
        Recipe.load(
            "version: 1.1.0\ntraining_modifiers:\n- !EpochRangeModifier\n  start_epoch: 0.0\n  end_epoch: .nan\n"
        )


def test_4300_digit_integers_are_recipe_errors():
    with pytest.raises(RecipeError, match=r"4300 digits") as info:
        Recipe.load(EPOCHS_AT.format("1" * 5000))
    assert info.value.line == 4
    with pytest.raises(RecipeError, match="integer is too large") as info:
        Recipe.load("m_modifiers:\n  - !EpochRangeModifier {start_step: " + "9" * 4000 + "}\n")
    assert info.value.field == "start_step"
    with pytest.raises(RecipeError, match="4300 digits"):
        Recipe.load(TRANSFER_ARGS_RECIPE, args='{"num_epochs": ' + "1" * 5000 + "}")


TRANSFER_ARGS_RECIPE = "num_epochs: 2\n" + EPOCHS_AT.format("eval(num_epochs)")


def test_wrong_types_in_list_fields_are_recipe_errors():
    text = (
        "m_modifiers:\n  - !LearningRateModifier\n    start_epoch: 0.0\n    end_epoch: 4.0\n"
        "    lr_class: MultiStepLR\n    lr_kwargs: {{milestones: {}, gamma: 0.1}}\n    init_lr: 0.1\n"
    )
    for milestones in ("['1']", "[1, '2']", "1", "[.nan]"):
        with pytest.raises(
            RecipeError, match=r"milestones must be a list of epochs \(numbers\)|finite"
        ) as info:
            Recipe.load(text.format(milestones))
        assert info.value.modifier == "LearningRateModifier"
    assert Recipe.load(text.format("[1, 2.5]")).modifiers[0].lr_kwargs["milestones"] == [1, 2.5]
    with pytest.raises(RecipeError, match="step_size must be a number"):
        Recipe.load(
            text.replace("MultiStepLR", "StepLR")
            .format("[1]")
            .replace("gamma: 0.1", "step_size: 'x'")
        )


def test_an_invalid_regex_is_refused_at_load_naming_the_field():
    prune = "m_modifiers:\n  - !GMPruningModifier\n    params: ['re:bert.*', 're:(']\n    final_sparsity: 0.5\n    start_epoch: 0\n    end_epoch: 1\n    update_frequency: 0.5\n"
    with pytest.raises(
        RecipeError, match=r"'re:\(' is not a valid regular expression: missing \)"
    ) as info:
        Recipe.load(prune)
    assert (info.value.modifier, info.value.field, info.value.line) == (
        "GMPruningModifier",
        "params",
        3,
    )
    with pytest.raises(RecipeError, match="not a valid regular expression") as info:
        Recipe.load(
            "m_modifiers:\n  - !TrainableParamsModifier {params: 're:[', trainable: false}\n"
        )
    assert info.value.field == "params"


def test_deep_json_in_recipe_args_is_a_recipe_error():
    for depth in (100, 100_000):
        with pytest.raises(RecipeError, match="nests more than 64 levels deep"):
            Recipe.load(
                TRANSFER_ARGS_RECIPE, args='{"num_epochs": ' + "[" * depth + "]" * depth + "}"
            )
    deep_kv = (
        "num_epochs=" + "[" * 500 + "]" * 500
    )  # not YAML we accept: kept as text, then refused by the field
    with pytest.raises(RecipeError, match="end_epoch"):
        Recipe.load(TRANSFER_ARGS_RECIPE, args=deep_kv)
    assert Recipe.load(TRANSFER_ARGS_RECIPE, args='{"num_epochs": 3}').modifiers[0].end_epoch == 3.0


def test_markdown_front_matter_scan_is_linear():
    body = "\n---\n" + EPOCHS_AT.format(2) + "---\n"
    for before in ("<!--" * 30_000, "<!-- x -->" * 12_000, "<!--" * 30_000 + "-->"):
        start = time.perf_counter()
        try:
            recipe = Recipe.from_text(before + body, markdown=True)
        except RecipeError as err:
            assert "front matter" in str(err)
        else:
            assert recipe.modifiers[0].end_epoch == 2.0 and before.endswith("-->")
        assert time.perf_counter() - start < HANG_SECONDS
    assert Recipe.from_text("<!-- a -->\n <!-- b\n c -->" + body, markdown=True).max_epochs == 2


def test_a_recipe_over_the_size_limit_is_refused_before_parsing(tmp_path):
    with pytest.raises(RecipeError, match="the recipe is longer than 1,000,000 characters"):
        Recipe.load("# " + "x" * 1_000_000 + "\n" + EPOCHS_AT.format(2))
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * 3_000_000 + "\n" + EPOCHS_AT.format(2))
    with pytest.raises(RecipeError, match="longer than 1,000,000 characters") as info:
        Recipe.load(big)
    assert info.value.file == str(big)


def test_no_other_exception_escapes_load(monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("boom")

    monkeypatch.setattr("sparseforge.recipe.recipe.load_yaml", broken)
    with pytest.raises(RecipeError, match=r"unexpected TypeError: boom \(a sparseforge bug"):
        Recipe.load(EPOCHS_AT.format(2))


def test_100_kb_recipes_load_within_a_second():
    modifier = (
        "  - !GMPruningModifier\n    params: ['re:bert.encoder.layer.*.attention.self.query.weight']\n"
        "    init_sparsity: eval(init)\n    final_sparsity: 0.8\n    start_epoch: eval(start + 1)\n"
        "    end_epoch: 10.0\n    update_frequency: 0.5\n"
    )
    epochs = "m_modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 1}\n"
    texts = [
        "init: 0.05\nstart: 0\npruning_modifiers:\n" + modifier * (100_000 // len(modifier)),
        "xs: [" + ",".join(["1.5"] * 24_000) + "]\n" + epochs,
        "".join(f"v{i}: eval({'+'.join(['1'] * 30)})\n" for i in range(1300)) + epochs,
        "base: &b {start_epoch: 0, end_epoch: 1}\nm_modifiers:\n"
        + "  - !EpochRangeModifier {<<: *b}\n" * 3000,
    ]
    Recipe.load(epochs)  # the first load imports the modifier modules
    for text in texts:
        assert len(text) < 100_000
        start = time.process_time()
        assert Recipe.load(text).modifiers
        assert time.process_time() - start < HANG_SECONDS


def test_keys_that_are_not_names_are_located_errors():
    for key in ("&uantize_embeddings", "1", "null", "[a]"):
        text = f"num_epochs: 2\n{key}: 1\n" + EPOCHS_AT.format("eval(num_epochs)")
        with pytest.raises(RecipeError) as info:
            Recipe.load(text)
        assert info.value.line == 2 and (
            "is not a name" in str(info.value) or "plain value" in str(info.value)
        )
    staged = "stage_a:\n  2: 1\n  m_modifiers:\n    - !EpochRangeModifier {start_epoch: 0, end_epoch: 1}\n"
    with pytest.raises(RecipeError, match="the key 2 is not a name") as info:
        Recipe.load(staged)
    assert info.value.line == 2


def test_cosine_restarts_t_mult_is_checked_at_load():
    text = (
        "m_modifiers:\n  - !LearningRateModifier {{start_epoch: 0.0, end_epoch: 4.0, init_lr: 0.1, "
        "lr_class: CosineAnnealingWarmRestarts, lr_kwargs: {{lr_min: 0.0, cycle_epochs: 1.0, T_mult: {}}}}}\n"
    )
    assert Recipe.load(text.format(2)).modifiers[0].lr_kwargs["T_mult"] == 2
    for bad in ("0.5", "0", "'2'"):
        with pytest.raises(RecipeError, match="T_mult must be|T_mult must be a number"):
            Recipe.load(text.format(bad))


@pytest.mark.parametrize(
    "args",
    [
        '{"num_epochs": NaN}',
        '{"num_epochs": Infinity}',
        '{"num_epochs": 1e999}',
        "num_epochs=.nan",
        "num_epochs=!!bool maybe",
        "num_epochs=&x [*x]",
        "num_epochs=" + "[" * 1000,
        "num_epochs=" + "1" * 5000,
        '{"num_epochs": ' + "1" * 5000 + "}",
        "num_epochs=1,b",
        "=1",
        "{",
        "[1]",
        '{"num_epochs": "eval(10**10**10)"}',
        "num_epochs=eval(" + "+".join(["1"] * 3000) + ")",
        '{"num_epochs": {"a": [1, {"b": null}]}}',
        "num_epochs=3",
        '{"num_epochs": 2.5}',
    ],
)
def test_hostile_recipe_args_load_or_raise_recipe_error(args):
    start = time.process_time()
    try:
        recipe = Recipe.load(TRANSFER_ARGS_RECIPE, args=args)
    except RecipeError as err:
        assert "a sparseforge bug" not in str(err) and "\n" not in str(err), str(err)
    else:
        assert all(math.isfinite(b) for b in recipe.modifiers[0].epoch_bounds())
    assert time.process_time() - start < HANG_SECONDS
