"""The one mask creator: exact counts, deterministic ties, blocks, N:M, global threshold."""

import math

import pytest
import torch

from sparseforge.modifiers.pruning.masks import (
    MaskStructure,
    create_masks,
    group_count,
    lowest_k,
    parse_mask_type,
)

SPARSITIES = [0.0, 0.4, 0.6, 0.9, 0.99, 1.0]
ODD_SHAPES = [(7,), (13, 17), (5, 3, 3, 3), (1, 31), (64, 129)]


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_unstructured_exact_count(shape, sparsity):
    torch.manual_seed(0)
    scores = torch.randn(shape).abs()
    mask = create_masks({"w": scores}, {"w": sparsity})["w"]
    assert mask.shape == scores.shape and mask.dtype == torch.bool
    assert int((~mask).sum()) == round(sparsity * scores.numel())
    if 0 < int((~mask).sum()) < mask.numel():  # the pruned ones are the lowest scored
        assert scores[~mask].max() <= scores[mask].min()


def test_ties_are_deterministic_and_exact():
    scores = torch.tensor([1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 3.0])
    mask = create_masks({"w": scores}, {"w": 3 / 7})["w"]
    assert mask.tolist() == [True, False, False, True, False, True, True]  # earlier zeros first
    again = create_masks({"w": scores.clone()}, {"w": 3 / 7})["w"]
    assert torch.equal(mask, again)


def test_lowest_k_handles_neg_inf_and_nan():
    values = torch.tensor([float("nan"), -math.inf, 0.5, -math.inf, 0.1])
    assert lowest_k(values, 3).tolist() == [False, True, False, True, True]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("unstructured", MaskStructure("unstructured")),
        ("block4", MaskStructure("block", (1, 4))),
        ("block", MaskStructure("block", (1, 4))),
        ([1, 4], MaskStructure("block", (1, 4))),
        ([2, 2], MaskStructure("block", (2, 2))),
        ("[4, 1]", MaskStructure("block", (4, 1))),
        ("2:4", MaskStructure("nm", n=2, m=4)),
        ("tensorrt", MaskStructure("nm", n=2, m=4)),
    ],
)
def test_parse_mask_type(text, expected):
    assert parse_mask_type(text) == expected


@pytest.mark.parametrize("bad", ["blocks", [1, 2, 3], "4:2", [0, 4], "a:b", 3])
def test_parse_mask_type_rejects(bad):
    with pytest.raises(ValueError):
        parse_mask_type(bad)


@pytest.mark.parametrize("block", [(1, 4), (2, 2), (4, 1), (2, 8)])
@pytest.mark.parametrize("sparsity", [0.3, 0.7, 0.95])
def test_blocks_constant_and_exact(block, sparsity):
    torch.manual_seed(1)
    weight = torch.randn(16, 32)
    mask = create_masks({"w": weight.abs()}, {"w": sparsity}, list(block))["w"]
    a, b = block
    blocks = mask.reshape(16 // a, a, 32 // b, b).permute(0, 2, 1, 3).reshape(-1, a * b)
    assert bool(
        (blocks.all(dim=1) | (~blocks).all(dim=1)).all()
    )  # every block all kept or all pruned
    assert int((~blocks.all(dim=1)).sum()) == round(sparsity * blocks.shape[0])
    # the pruned blocks are those with the lowest mean |w|
    means = weight.abs().reshape(16 // a, a, 32 // b, b).mean(dim=(1, 3)).reshape(-1)
    kept = blocks.all(dim=1)
    assert means[~kept].max() <= means[kept].min()


def test_one_by_four_equals_block4():
    torch.manual_seed(2)
    scores = torch.randn(24, 40).abs()
    for sparsity in SPARSITIES:
        a = create_masks({"w": scores}, {"w": sparsity}, [1, 4])["w"]
        b = create_masks({"w": scores}, {"w": sparsity}, "block4")["w"]
        assert torch.equal(a, b)


def test_block4_partial_edge_block_and_conv():
    torch.manual_seed(3)
    weight = torch.randn(6, 10)  # 10 inputs: two full blocks and one of 2
    mask = create_masks({"w": weight.abs()}, {"w": 0.5}, "block4")["w"]
    assert group_count(weight.shape, parse_mask_type("block4")) == 18
    pruned_groups = 0
    for row in mask:
        for start in (0, 4, 8):
            chunk = row[start : start + 4]
            assert bool(chunk.all() or (~chunk).all())
            pruned_groups += int(not chunk.any())
    assert pruned_groups == 9
    conv = torch.randn(4, 8, 3, 3)  # blocks run along input channels, as SparseML's block4
    cmask = create_masks({"c": conv.abs()}, {"c": 0.5}, "block4")["c"]
    along_inputs = cmask.permute(0, 2, 3, 1).reshape(-1, 4)
    assert bool((along_inputs.all(dim=1) | (~along_inputs).all(dim=1)).all())


def test_n_m_pattern_at_full_and_partial_sparsity():
    torch.manual_seed(4)
    weight = torch.randn(8, 16)
    mask = create_masks({"w": weight.abs()}, {"w": 0.5}, "2:4")["w"]
    groups = mask.reshape(-1, 4)
    assert bool((groups.sum(dim=1) == 2).all())
    # the two kept in each group are its two largest
    kept_min = torch.where(groups, weight.abs().reshape(-1, 4), torch.inf).min(dim=1).values
    dropped_max = torch.where(~groups, weight.abs().reshape(-1, 4), -torch.inf).max(dim=1).values
    assert bool((dropped_max <= kept_min).all())
    partial = create_masks({"w": weight.abs()}, {"w": 0.25}, "2:4", previous=None)["w"]
    assert int((~partial).sum()) == 32 and bool((partial.reshape(-1, 4).sum(dim=1) >= 2).all())
    # a gradual schedule ends on the N:M pattern and never revives a pruned weight
    final = create_masks({"w": weight.abs()}, {"w": 0.5}, "2:4", previous={"w": partial})["w"]
    assert bool((final.reshape(-1, 4).sum(dim=1) == 2).all())
    assert not bool((final & ~partial).any())


def test_global_sparsity_unequal_layers():
    torch.manual_seed(5)
    scores = {"small": torch.rand(20, 20) * 0.1, "large": torch.rand(30, 10) + 0.5}
    masks = create_masks(scores, {"small": 0.5, "large": 0.5}, global_sparsity=True)
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(0.5 * total)
    assert float((~masks["small"]).float().mean()) > 0.7  # the low-scored layer takes most
    assert float((~masks["large"]).float().mean()) < 0.3
    with pytest.raises(ValueError, match="one target"):
        create_masks(scores, {"small": 0.4, "large": 0.5}, global_sparsity=True)


def test_previous_masks_stay_pruned():
    torch.manual_seed(6)
    weight = torch.randn(10, 12)
    first = create_masks({"w": weight.abs()}, {"w": 0.3}, [1, 4])["w"]
    regrown = weight.abs() + 10 * (~first)  # pruned blocks now score highest
    second = create_masks({"w": regrown}, {"w": 0.5}, [1, 4], previous={"w": first})["w"]
    assert not bool((second & ~first).any())
    assert int((~second).sum()) == 4 * round(0.5 * 30)
