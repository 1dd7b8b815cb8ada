"""SparseGPT and Wanda on single weight matrices, against direct reference computations."""

from __future__ import annotations

import pytest
import torch

from sparseforge import Manager, RecipeError
from sparseforge.modifiers.pruning.calibrated import InputHessian, relative_error
from sparseforge.modifiers.pruning.masks import MaskStructure
from sparseforge.modifiers.pruning.sparsegpt import SparseGPTModifier, sparsegpt_prune
from sparseforge.modifiers.pruning.wanda import WandaPruningModifier, wanda_prune
from sparseforge.recipe import Recipe

UNSTRUCTURED = MaskStructure("unstructured")
TWO_FOUR = MaskStructure("nm", n=2, m=4)


def correlated_inputs(tokens: int = 512, columns: int = 32, seed: int = 0) -> torch.Tensor:
    """Inputs with correlated channels of very different scales (as transformer activations)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(tokens, 8, generator=gen) @ torch.randn(8, columns, generator=gen)
    scales = torch.logspace(-1, 1, columns)[torch.randperm(columns, generator=gen)]
    return (base + 0.3 * torch.randn(tokens, columns, generator=gen)) * scales


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    h = InputHessian(x.shape[1])
    h.add(x)
    return h.matrix


def reference_sparsegpt(
    weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, damp_frac: float
) -> torch.Tensor:
    """SparseGPT as its definition reads, without Cholesky or blocks (one block of all columns):
    scores w^2 / [H_F^-1]_00 with F the columns not yet processed, then the OBS update of F."""
    w = weight.clone().double()
    h = hessian.double()
    h = h + damp_frac * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    columns = w.shape[1]
    inverse_diag = torch.stack([torch.linalg.inv(h[i:, i:])[0, 0] for i in range(columns)])
    scores = (w**2 / inverse_diag).reshape(-1)
    count = round(sparsity * w.numel())
    prune = torch.zeros(w.numel(), dtype=torch.bool)
    prune[torch.argsort(scores, stable=True)[:count]] = True
    prune = prune.reshape(w.shape)
    for i in range(columns):
        inverse = torch.linalg.inv(h[i:, i:])
        removed = torch.where(prune[:, i], w[:, i], torch.zeros_like(w[:, i]))
        w[:, i:] -= (removed / inverse[0, 0]).unsqueeze(1) * inverse[0].unsqueeze(0)
        w[:, i] = torch.where(prune[:, i], torch.zeros_like(w[:, i]), w[:, i])
    return w.float()


def magnitude_prune(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    count = round(sparsity * weight.numel())
    order = torch.argsort(weight.abs().reshape(-1), stable=True)[:count]
    flat = weight.clone().reshape(-1)
    flat[order] = 0
    return flat.reshape(weight.shape)


@pytest.fixture
def layer():
    torch.manual_seed(0)
    weight = torch.randn(16, 32)
    x = correlated_inputs()
    return weight, x, hessian_of(x)


def test_matches_the_direct_reference(layer):
    weight, _, h = layer
    ours = sparsegpt_prune(weight, h, 0.5, UNSTRUCTURED, block_size=32, dampening_frac=0.01)
    reference = reference_sparsegpt(weight, h, 0.5, 0.01)
    assert torch.equal(ours == 0, reference == 0)
    torch.testing.assert_close(ours, reference, atol=2e-4, rtol=1e-3)


def test_reconstruction_error_below_magnitude_and_wanda_below_magnitude(layer):
    weight, x, h = layer
    dense_out = x @ weight.t()
    errors = {}
    for name, pruned in {
        "sparsegpt": sparsegpt_prune(weight, h, 0.5, UNSTRUCTURED, block_size=8),
        "wanda": wanda_prune(weight, torch.diag(h).sqrt(), 0.5, UNSTRUCTURED),
        "magnitude": magnitude_prune(weight, 0.5),
    }.items():
        direct = float(((dense_out - x @ pruned.t()) ** 2).sum() / (dense_out**2).sum())
        assert relative_error(weight, pruned, h) == pytest.approx(direct, rel=1e-3)
        errors[name] = direct
    assert errors["sparsegpt"] < 0.5 * errors["magnitude"]
    assert errors["wanda"] < errors["magnitude"]


@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.77])
def test_exact_unstructured_sparsity_across_blocks(layer, sparsity):
    weight, _, h = layer
    pruned = sparsegpt_prune(weight, h, sparsity, UNSTRUCTURED, block_size=5)
    assert int((pruned == 0).sum()) == round(sparsity * weight.numel())


def test_two_four_pattern_and_block_size_independence(layer):
    weight, _, h = layer
    small = sparsegpt_prune(weight, h, 0.5, TWO_FOUR, block_size=4)
    large = sparsegpt_prune(weight, h, 0.5, TWO_FOUR, block_size=128)
    zeros_per_group = (small == 0).reshape(16, -1, 4).sum(dim=2)
    assert bool((zeros_per_group == 2).all())
    torch.testing.assert_close(small, large, atol=1e-4, rtol=1e-4)
    wanda = wanda_prune(weight, torch.diag(h).sqrt(), 0.5, TWO_FOUR)
    assert bool(((wanda == 0).reshape(16, -1, 4).sum(dim=2) == 2).all())


def test_wanda_prunes_each_row_by_weight_times_input_norm():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    norms = torch.tensor([10.0, 1.0, 1.0, 0.1])
    pruned = wanda_prune(weight, norms, 0.5, UNSTRUCTURED)
    # scores row 0: 10, 2, 3, 0.4 -> drop columns 3 and 1; row 1: 40, 3, 2, 0.1 -> drop 3 and 2
    assert torch.equal(pruned, torch.tensor([[1.0, 0.0, 3.0, 0.0], [4.0, 3.0, 0.0, 0.0]]))


def test_zero_sparsity_keeps_the_weights_and_dead_inputs_are_zeroed(layer):
    weight, x, _ = layer
    assert torch.allclose(sparsegpt_prune(weight, hessian_of(x), 0.0, UNSTRUCTURED), weight)
    x = x.clone()
    x[:, 3] = 0.0  # an input channel that is never active
    pruned = sparsegpt_prune(weight, hessian_of(x), 0.25, UNSTRUCTURED, block_size=8)
    assert torch.isfinite(pruned).all()
    assert bool((pruned[:, 3] == 0).all())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("sparsity: 1.0", "sparsity must be within [0, 1)"),
        ("sparsity: -0.1", "sparsity must be within [0, 1)"),
        ("mask_structure: 2:4", "write it quoted: '2:4'"),
        ("{sparsity: 0.7, mask_structure: '2:4'}", "set sparsity: 0.5"),
        ("{mask_structure: '2:4', block_size: 6}", "multiple of M=4"),
        ("{sparsity: 0.5, dampening_frac: 0}", "dampening_frac"),
        ("{}", "sparsity is required"),
        ("{sparsity: 0.5, sparsity_profile: owl}", "unknown field"),
    ],
)
def test_bad_fields_are_recipe_errors_with_the_line(fields, message):
    text = (
        f"modifiers:\n  - !SparseGPTModifier\n      {fields}\n"
        if not fields.startswith("{")
        else f"modifiers:\n  - !SparseGPTModifier {fields}\n"
    )
    with pytest.raises(RecipeError, match=r"line|:\d") as info:
        Recipe.from_text(text, file="r.yaml")
    assert message in str(info.value)
    assert "SparseGPTModifier" in str(info.value)


def test_recipe_round_trip_and_registry():
    recipe = Recipe.from_text(
        "modifiers:\n  - !SparseGPTModifier {sparsity: 0.5, block_size: 64, ignore: [classifier]}\n  - !WandaPruningModifier {mask_structure: '2:4'}\n"
    )
    again = Recipe.from_text(recipe.to_yaml())
    first, second = again.modifiers
    assert (
        isinstance(first, SparseGPTModifier)
        and first.block_size == 64
        and first.ignore == ["classifier"]
    )
    assert isinstance(second, WandaPruningModifier) and second.target_sparsity == 0.5


def test_training_manager_refuses_one_shot_modifiers():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    manager = Manager([SparseGPTModifier(sparsity=0.5)])
    with pytest.raises(RecipeError, match="sparseforge oneshot"):
        manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=1)
