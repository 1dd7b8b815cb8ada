"""zoo: stubs resolve offline through the user registry and the shipped recipes, and never escape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sparseforge import zoo
from sparseforge.cli import main as sparseforge_main
from sparseforge.errors import RecipeError
from sparseforge.zoo import ZooError

SST2_SPARSE = "zoo:nlp/sentiment_analysis/obert-base/pytorch/huggingface/sst2/pruned90_quant-none"
SST2_DENSE = "zoo:nlp/sentiment_analysis/obert-base/pytorch/huggingface/sst2/base-none"
USER_STUB = "zoo:nlp/text_classification/tiny-bert/pytorch/huggingface/demo/base-none"

DENSE_RECIPE = """
num_epochs: 2
training_modifiers:
  - !EpochRangeModifier
      start_epoch: 0.0
      end_epoch: eval(num_epochs)
"""


@pytest.fixture(autouse=True)
def registry(tmp_path, monkeypatch):
    root = tmp_path / "registry"
    monkeypatch.setenv("SPARSEFORGE_ZOO", str(root))
    return root


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "dense.yaml"
    path.write_text(DENSE_RECIPE)
    return path


def test_registry_root_env_and_xdg(tmp_path, monkeypatch, registry):
    assert zoo.registry_root() == registry
    monkeypatch.delenv("SPARSEFORGE_ZOO")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert zoo.registry_root() == tmp_path / "xdg" / "sparseforge" / "zoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.registry_root() == tmp_path / "home" / ".cache" / "sparseforge" / "zoo"


def test_shipped_recipe_resolves_without_add(registry):
    path = Path(zoo.resolve_recipe(SST2_SPARSE))
    assert path.name == "recipe.md"
    assert zoo.SHIPPED_ROOT in path.parents
    assert "ConstantPruningModifier" in path.read_text()
    assert not registry.exists()  # nothing was written to resolve it
    assert zoo.resolve(SST2_SPARSE) == str(path)  # a stub without a model gives its recipe


def test_add_recipe_then_resolve_and_shadow_shipped(recipe_file, registry):
    entry = zoo.add(USER_STUB, recipe_file)
    resolved = Path(zoo.resolve_recipe(USER_STUB))
    assert registry.resolve() in resolved.parents
    assert resolved.read_text() == DENSE_RECIPE
    assert entry.contents == "recipe"
    # a user entry of a shipped stub wins over the shipped recipe
    zoo.add(SST2_DENSE, recipe_file)
    assert Path(zoo.resolve_recipe(SST2_DENSE)).read_text() == DENSE_RECIPE
    sources = [e.source for e in zoo.lookup(SST2_DENSE)]
    assert sources == ["user", "shipped"]


def test_add_model_folder_and_resolve(tiny_model_dir, recipe_file):
    model_dir = tiny_model_dir("text-classification")
    zoo.add(USER_STUB, model_dir)
    zoo.add(USER_STUB, recipe_file)
    model_path = Path(zoo.resolve_model(USER_STUB))
    assert (model_path / "config.json").read_bytes() == (model_dir / "config.json").read_bytes()
    assert sorted(p.name for p in model_path.iterdir()) == sorted(
        p.name for p in model_dir.iterdir()
    )
    assert zoo.resolve(USER_STUB) == str(model_path)  # model preferred when kind is not given
    assert zoo.resolve(USER_STUB, kind="recipe").endswith("recipe.yaml")

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(zoo.resolve(USER_STUB, kind="model"))
    assert model.config.hidden_size == 32


def test_add_refuses_overwrite_bad_input_and_leaves_nothing(tmp_path, recipe_file, registry):
    zoo.add(USER_STUB, recipe_file)
    with pytest.raises(ZooError, match="--force"):
        zoo.add(USER_STUB, recipe_file)
    other = tmp_path / "other.md"
    other.write_text("---\n" + DENSE_RECIPE.replace("2", "3") + "---\n# doc\n")
    entry = zoo.add(USER_STUB, other, force=True)
    assert entry.recipe.name == "recipe.md"
    assert [p.name for p in entry.path.iterdir()] == ["recipe.md"]  # the old recipe.yaml is gone

    broken = tmp_path / "broken.yaml"
    broken.write_text("training_modifiers:\n  - !NoSuchModifier\n      start_epoch: 0\n")
    stub = "zoo:nlp/x/y/pytorch/huggingface/z/broken"
    with pytest.raises(
        RecipeError,
        match=r"broken.yaml:2: modifier NoSuchModifier: unknown modifier !NoSuchModifier",
    ) as info:
        zoo.add(stub, broken)
    assert (info.value.file, info.value.line) == (str(broken), 2)
    assert not list((registry / "nlp" / "x").rglob("recipe*"))

    not_a_model = tmp_path / "empty_dir"
    not_a_model.mkdir()
    with pytest.raises(ZooError, match="config.json"):
        zoo.add(stub, not_a_model)
    with pytest.raises(ZooError, match="does not exist"):
        zoo.add(stub, tmp_path / "missing.yaml")


def test_unknown_stub_lists_nearest(recipe_file):
    with pytest.raises(ZooError) as info:
        zoo.resolve_recipe(SST2_SPARSE.replace("sst2", "sst3"))
    message = str(info.value)
    assert "\n" not in message
    assert SST2_SPARSE in message.split("nearest known:")[1]


def test_recipe_only_stub_is_not_a_model():
    with pytest.raises(ZooError, match="recipe but no model"):
        zoo.resolve_model(SST2_DENSE)


def test_non_stubs_pass_through():
    for value in ("bert-base-uncased", "/tmp/some/model", "disable", "self", "recipe.yaml"):
        assert zoo.resolve(value) == value


@pytest.mark.parametrize(
    "stub",
    [
        "zoo:nlp/../../../etc/passwd",
        "zoo:../outside",
        "zoo:nlp/sentiment_analysis/..",
        "zoo:/etc/passwd",
        "zoo:nlp//x",
        "zoo:nlp/.hidden",
        "zoo:nlp\\..\\x/y",
        "zoo:single",
        "zoo:nlp/x?recipe_type=../../y",
        "zoo:nlp/x?evil=1",
    ],
)
def test_traversal_and_malformed_stubs_rejected(stub, recipe_file):
    with pytest.raises(ZooError, match="malformed stub|add takes"):
        zoo.resolve_recipe(stub)
    with pytest.raises(ZooError):
        zoo.add(stub, recipe_file)


def test_symlinks_cannot_escape_the_registry(tmp_path, registry, recipe_file):
    outside = tmp_path / "outside" / "entry"
    outside.mkdir(parents=True)
    (outside / "recipe.yaml").write_text(DENSE_RECIPE)
    (registry / "nlp" / "evil").mkdir(parents=True)
    os.symlink(outside, registry / "nlp" / "evil" / "dir")
    with pytest.raises(ZooError, match="unknown"):
        zoo.resolve_recipe("zoo:nlp/evil/dir")
    # a symlinked recipe file inside a real entry folder is refused as well
    (registry / "nlp" / "evil" / "file").mkdir()
    os.symlink(outside / "recipe.yaml", registry / "nlp" / "evil" / "file" / "recipe.yaml")
    with pytest.raises(ZooError, match="unknown"):
        zoo.resolve_recipe("zoo:nlp/evil/file")
    assert all("evil" not in e.stub for e in zoo.list_entries())
    # and add does not write through a symlinked parent
    with pytest.raises(ZooError, match="outside the registry"):
        zoo.add("zoo:nlp/evil/dir/sub", recipe_file)
    assert not (outside / "sub").exists()


def test_recipe_type_query_selects_named_recipe(tmp_path, registry, recipe_file):
    zoo.add(USER_STUB, recipe_file)
    entry_dir = zoo.lookup(USER_STUB)[0].path
    (entry_dir / "recipe_transfer.yaml").write_text(DENSE_RECIPE + "\n# transfer\n")
    assert zoo.resolve_recipe(USER_STUB + "?recipe_type=transfer").endswith("recipe_transfer.yaml")
    assert zoo.resolve_recipe(USER_STUB + "?recipe_type=original").endswith("recipe.yaml")


def test_cli_add_list_show_remove(recipe_file, capsys):
    assert zoo.cli_main(["add", USER_STUB, str(recipe_file)]) == 0
    assert "added " + USER_STUB in capsys.readouterr().out

    assert zoo.cli_main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    user_line = next(line for line in lines if line.startswith(USER_STUB))
    assert user_line.split()[1:] == ["recipe", "user"]
    shipped = [line.split()[0] for line in lines if line.endswith("shipped")]
    assert SST2_SPARSE in shipped and SST2_DENSE in shipped
    assert len(shipped) == len(list(zoo.SHIPPED_ROOT.rglob("recipe.md")))

    assert zoo.cli_main(["list", "conll2003"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed and all("conll2003" in line for line in listed)

    assert zoo.cli_main(["show", USER_STUB]) == 0
    out = capsys.readouterr().out
    assert "[user]" in out and "recipe.yaml" in out and "model:  none" in out

    assert zoo.cli_main(["remove", USER_STUB]) == 0
    with pytest.raises(ZooError):
        zoo.resolve_recipe(USER_STUB)


def test_cli_unknown_stub_is_one_line_error(capsys):
    code = sparseforge_main(
        ["zoo", "show", "zoo:nlp/sentiment_analysis/obert-base/pytorch/huggingface/sst2/pruned95"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sparseforge zoo: error: unknown zoo stub")
    assert "nearest known:" in err


def test_recipe_check_accepts_stub(capsys):
    code = sparseforge_main(["recipe", "check", SST2_DENSE])
    assert code == 0
    assert "valid recipe, 2 modifier(s), max_epochs 2" in capsys.readouterr().out


def test_one_resolver_for_model_recipe_and_teacher_at_every_edge(
    tiny_model_dir, recipe_file, tmp_path
):
    """zoo.resolve(value, kind) is what the task CLIs, the teacher loader and oneshot use."""
    from sparseforge.oneshot import resolve_stubs
    from sparseforge.transformers.arguments import (
        ModelArguments,
        RecipeArguments,
        resolve_model_and_recipe,
    )
    from sparseforge.transformers.trainer import teacher_source

    model_dir = tiny_model_dir("text-classification")
    zoo.add(USER_STUB, model_dir)
    zoo.add(USER_STUB, recipe_file)
    model_path, recipe_path = zoo.resolve(USER_STUB, "model"), zoo.resolve(USER_STUB, "recipe")
    assert Path(model_path).name == "model" and Path(recipe_path).name == "recipe.yaml"
    assert zoo.resolve(USER_STUB, "teacher") == model_path
    with pytest.raises(ZooError, match="recipe but no model"):
        zoo.resolve(SST2_DENSE, "teacher")  # a shipped recipe-only stub is no model or teacher
    # the task CLIs' edge: model and recipe stubs (the recipe loaded); plain paths unchanged
    path, recipe = resolve_model_and_recipe(
        ModelArguments(model_name_or_path=USER_STUB), RecipeArguments(recipe=USER_STUB)
    )
    assert path == model_path and recipe.end_epoch == 2.0
    path, recipe = resolve_model_and_recipe(
        ModelArguments(model_name_or_path=str(model_dir)), RecipeArguments(recipe=str(recipe_file))
    )
    assert path == str(model_dir) and recipe.end_epoch == 2.0
    # the teacher: a stub is its model folder; 'self', a folder and 'disable' keep their meaning
    assert teacher_source(USER_STUB) == model_path
    assert teacher_source(str(model_dir)) == str(model_dir)
    assert (
        teacher_source("self") == "self"
        and teacher_source("disable") is None
        and teacher_source(None) is None
    )
    # oneshot's public edge
    assert resolve_stubs(USER_STUB, USER_STUB) == (model_path, recipe_path)
    assert resolve_stubs(str(model_dir), "modifiers: []") == (str(model_dir), "modifiers: []")
