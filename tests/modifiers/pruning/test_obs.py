"""OBS / oBERT checked against a brute-force OBS: explicit Fisher, explicit inverse, KKT."""

import math

import pytest
import torch

from sparseforge import Manager, SparseforgeError
from sparseforge.modifiers.pruning.obs import BlockFisherInverse, obs_scores, obs_update

torch.set_default_dtype(torch.float32)


def brute_fisher(grads, block, damp):
    """Explicit block-diagonal empirical Fisher (float64) for a (m, d) stack of gradients."""
    m, d = grads.shape
    nb = math.ceil(d / block)
    padded = torch.zeros(m, nb * block, dtype=torch.float64)
    padded[:, :d] = grads.double()
    fisher = torch.zeros(nb * block, nb * block, dtype=torch.float64)
    for b in range(nb):
        g = padded[:, b * block : (b + 1) * block]
        fisher[b * block : (b + 1) * block, b * block : (b + 1) * block] = (
            damp * torch.eye(block, dtype=torch.float64) + g.T @ g / m
        )
    return fisher[:d, :d]


def woodbury(grads, block, damp):
    finv = BlockFisherInverse(grads.shape[0], block, grads.shape[1], damp)
    for g in grads:
        finv.add_grad(g)
    return finv


@pytest.mark.parametrize("d, block", [(24, 8), (26, 10), (12, 12)])
def test_woodbury_inverse_equals_explicit_inverse(d, block):
    torch.manual_seed(0)
    grads = torch.randn(7, d)
    finv = woodbury(grads, block, damp=0.1)
    exact = torch.linalg.inv(brute_fisher(grads, block, 0.1))
    torch.testing.assert_close(finv.diag().double(), torch.diagonal(exact), rtol=1e-4, atol=1e-5)
    v = torch.randn(d)
    torch.testing.assert_close(finv.mul(v).double(), exact @ v.double(), rtol=1e-4, atol=1e-4)


def test_unstructured_scores_and_update_are_exact_obs():
    torch.manual_seed(1)
    d, block, damp = 24, 8, 0.05
    grads, w = torch.randn(9, d), torch.randn(d)
    fisher = brute_fisher(grads, block, damp)
    exact = torch.linalg.inv(fisher)
    finv = woodbury(grads, block, damp)
    scores, _ = obs_scores(w, finv)
    torch.testing.assert_close(
        scores.double(), w.double() ** 2 / (2 * torch.diagonal(exact)), rtol=1e-4, atol=1e-6
    )
    # prune one weight per Fisher block: the OBS update is then the exact constrained optimum
    pruned = torch.zeros(d, dtype=torch.bool)
    pruned[[2, 9, 20]] = True
    delta = obs_update(w, finv, pruned, None).double()
    torch.testing.assert_close(
        delta[pruned], -w[pruned].double(), rtol=1e-4, atol=1e-5
    )  # pruned ones reach 0
    residual = fisher @ delta  # KKT: the gradient of 0.5 d^T F d vanishes off the constraints
    assert residual[~pruned].abs().max() < 1e-4 * residual[pruned].abs().max()
    # the loss increase 0.5 d^T F d equals the sum of the pruned weights' scores
    torch.testing.assert_close(
        0.5 * delta @ fisher @ delta, scores[pruned].double().sum(), rtol=1e-4, atol=1e-6
    )
    # and equals SparseML's per-weight sum in general
    many = torch.rand(d) < 0.4
    expected = -(exact[:, many] @ (w.double()[many] / torch.diagonal(exact)[many]))
    torch.testing.assert_close(
        obs_update(w, finv, many, None).double(), expected, rtol=1e-4, atol=1e-4
    )


def test_block4_scores_and_update_are_exact_obs():
    torch.manual_seed(2)
    d, block, damp = 32, 8, 0.05
    grads, w = torch.randn(11, d), torch.randn(d)
    fisher = brute_fisher(grads, block, damp)
    exact = torch.linalg.inv(fisher)
    finv = woodbury(grads, block, damp)
    scores, solved = obs_scores(w.reshape(4, 8), finv, block=4)
    for q in range(d // 4):
        idx = slice(4 * q, 4 * q + 4)
        sub = exact[idx, idx]
        expected = 0.5 * w.double()[idx] @ torch.linalg.solve(sub, w.double()[idx])
        torch.testing.assert_close(
            scores.reshape(-1)[idx].double(), expected.expand(4), rtol=1e-4, atol=1e-6
        )
    pruned = torch.zeros(d, dtype=torch.bool)
    pruned[0:4] = True  # one group in the first Fisher block
    pruned[20:24] = True  # one in the third
    delta = obs_update(w.reshape(4, 8), finv, pruned.reshape(4, 8), solved).reshape(-1).double()
    torch.testing.assert_close(delta[pruned], -w[pruned].double(), rtol=1e-4, atol=1e-5)
    residual = fisher @ delta
    assert residual[~pruned].abs().max() < 1e-4 * residual[pruned].abs().max()


class Sampler:
    """Forward and backward on fixed batches, yielding after each backward (the GradSampler shape)."""

    def __init__(self, seed=0, batches=64, n_in=6):
        gen = torch.Generator().manual_seed(seed)
        self.data = [
            (torch.randn(4, n_in, generator=gen), torch.randn(4, 2, generator=gen))
            for _ in range(batches)
        ]
        self.calls = 0

    def __call__(self, model, num_batches):
        try:
            for x, y in self.data:  # more than asked for: the caller stops it
                self.calls += 1
                torch.nn.functional.mse_loss(model(x), y).backward()
                yield
        finally:
            model.zero_grad(set_to_none=True)  # a sampler cleaning up must not eat the step's grads


def mlp(n_in=6):
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


ONE_SHOT = """
pruning_modifiers:
  - !OBSPruningModifier
    params: ['0.weight', '2.weight']
    init_sparsity: 0.5
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 0
    update_frequency: 1
    num_grads: 16
    damp: '1e-3'
    fisher_block_size: 8
    global_sparsity: {global_}
"""


@pytest.mark.parametrize("global_", [True, False])
def test_one_shot_modifier_matches_brute_force_obs(global_):
    model, sampler = mlp(), Sampler()
    reference = mlp()
    manager = Manager(ONE_SHOT.format(global_=global_))
    manager.modify(
        model, torch.optim.SGD(model.parameters(), lr=0.0), steps_per_epoch=1, grad_sampler=sampler
    )
    manager.update()  # the one-shot update at epoch 0

    # brute force: the same gradients, an explicit inverse per block, the same selection
    names = ["0.weight", "2.weight"]
    grads = {n: [] for n in names}
    for x, y in sampler.data[:16]:
        reference.zero_grad()
        torch.nn.functional.mse_loss(reference(x), y).backward()
        for n in names:
            grads[n].append(reference.get_parameter(n).grad.reshape(-1).clone())
    exact = {n: torch.linalg.inv(brute_fisher(torch.stack(grads[n]), 8, 1e-3)) for n in names}
    weights = {n: reference.get_parameter(n).detach().reshape(-1).double() for n in names}
    scores = {n: weights[n] ** 2 / (2 * torch.diagonal(exact[n])) for n in names}
    if global_:
        allscores = torch.cat([scores[n] for n in names])
        cut = torch.sort(allscores).values[round(0.5 * allscores.numel()) - 1]
        pruned = {n: scores[n] <= cut for n in names}
    else:
        pruned = {
            n: scores[n] <= torch.sort(scores[n]).values[round(0.5 * scores[n].numel()) - 1]
            for n in names
        }
    assert sum(int(p.sum()) for p in pruned.values()) == round(0.5 * 64)  # no ties in random data
    for n in names:
        update = -(
            exact[n][:, pruned[n]] @ (weights[n][pruned[n]] / torch.diagonal(exact[n])[pruned[n]])
        )
        expected = (weights[n] + update).masked_fill(pruned[n], 0)
        got = model.get_parameter(n).detach().reshape(-1).double()
        assert torch.equal(got == 0, pruned[n])
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-5)
    assert sampler.calls == 16


def test_gradual_obs_with_recomputations_and_block4():
    model, sampler = mlp(n_in=8), Sampler(batches=200, n_in=8)
    recipe = """
    pruning_modifiers:
      - !OBSPruningModifier
        params: ['0.weight', '2.weight']
        init_sparsity: 0.25
        final_sparsity: 0.75
        start_epoch: 0
        end_epoch: 2
        update_frequency: 1
        num_grads: 8
        damp: 1e-4
        fisher_block_size: 8
        mask_type: [1, 4]
        num_recomputations: 2
        grad_sampler_kwargs: {batch_size: 8}
    """
    manager = Manager(recipe)
    optimizer = manager.modify(
        model,
        torch.optim.AdamW(model.parameters(), lr=0.01),
        steps_per_epoch=2,
        grad_sampler=sampler,
    )
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        x = torch.randn(4, 8, generator=gen)
        loss = model(x).pow(2).mean()
        loss.backward()
        grad_before = model[2].bias.grad.clone()
        optimizer.step()
        # the step's own gradients survive the gradient sampling done inside step()
        assert model[2].bias.grad is not None and torch.equal(model[2].bias.grad, grad_before)
        optimizer.zero_grad()
    # updates at epochs 0 (0.25), 1 (cubic midpoint), 2 (0.75): two recomputations each
    assert sampler.calls == 3 * 2 * 8
    weights = [model[0].weight, model[2].weight]
    total_blocks = sum(w.numel() // 4 for w in weights)
    zero_blocks = sum(int((w == 0).reshape(-1, 4).all(dim=1).sum()) for w in weights)
    assert zero_blocks == round(0.75 * total_blocks)
    for w in weights:
        blocks = (w == 0).reshape(-1, 4)
        assert bool((blocks.all(dim=1) | (~blocks).all(dim=1)).all())
    assert model.training


def test_obs_without_grad_sampler_fails_before_training():
    model = mlp()
    manager = Manager(ONE_SHOT.format(global_=True))
    with pytest.raises(SparseforgeError, match="grad_sampler"):
        manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=1)


def test_block4_needs_a_fisher_block_multiple_of_four():
    from sparseforge import Recipe, RecipeError

    with pytest.raises(RecipeError, match="multiple of 4"):
        Recipe.load(
            ONE_SHOT.format(global_=True).replace(
                "fisher_block_size: 8", "fisher_block_size: 10\n    mask_type: block4"
            )
        )
    with pytest.raises(RecipeError, match="unstructured"):
        Recipe.load(
            ONE_SHOT.format(global_=True).replace(
                "fisher_block_size: 8", "fisher_block_size: 8\n    mask_type: [2, 2]"
            )
        )


GRADUAL = """
pruning_modifiers:
  - !OBSPruningModifier
    params: ['0.weight', '2.weight']
    init_sparsity: 0.25
    final_sparsity: 0.75
    start_epoch: 0
    end_epoch: 2
    update_frequency: 0.5
    num_grads: 8
    damp: 1e-4
    fisher_block_size: 8
    num_recomputations: 2
    leave_enabled: true
"""


def train_obs(model, optimizer, manager, steps, start=0):
    for step in range(start, start + steps):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def test_gradual_obs_resume_is_bit_identical():
    """Stopped between two OBS updates and resumed from state dicts, the run ends exactly as an
    uninterrupted one: same masks, same weights (the sampler gives the same batches each call)."""

    def setup():
        model, manager = mlp(n_in=8), Manager(GRADUAL)
        optimizer = manager.modify(
            model,
            torch.optim.AdamW(model.parameters(), lr=0.01),
            steps_per_epoch=4,
            grad_sampler=Sampler(batches=8, n_in=8),
        )
        return model, optimizer, manager

    model, optimizer, manager = setup()
    train_obs(model, optimizer, manager, 12)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer, manager = setup()
    train_obs(model, optimizer, manager, 5)  # two updates done (steps 0, 2), more to come
    saved = {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "manager": manager.state_dict(),
    }
    resumed, resumed_optimizer, resumed_manager = setup()
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_manager.load_state_dict(saved["manager"])
    train_obs(resumed, resumed_optimizer, resumed_manager, 7, start=5)

    for key, value in resumed.state_dict().items():
        assert torch.equal(value, reference[key]), key
    weights = [resumed[0].weight, resumed[2].weight]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.75 * sum(w.numel() for w in weights))


class LargeGradSampler(Sampler):
    def __call__(self, model, num_batches):
        try:
            for x, y in self.data:
                (1e4 * torch.nn.functional.mse_loss(model(x), y)).backward()
                yield
        finally:
            model.zero_grad(set_to_none=True)


def test_fisher_inverse_round_off_is_an_error_not_nan_weights():
    """Gradients large next to damp break the float32 Woodbury inverse: say so, leave the weights."""
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    manager = Manager(ONE_SHOT.format(global_=True).replace("damp: '1e-3'", "damp: 1e-7"))
    # a modifier due at epoch 0 runs inside modify(), as in SparseML (issue 18.6)
    with pytest.raises(SparseforgeError, match=r"Fisher inverse of 0.weight .*raise damp"):
        manager.modify(
            model,
            torch.optim.SGD(model.parameters(), lr=0.0),
            steps_per_epoch=1,
            grad_sampler=LargeGradSampler(),
        )
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
