"""Scores of structural groups (heads, FFN neurons, layers): higher = more important.

- `magnitude`: the L2 norm of the group's weights and biases (Q/K/V rows + output columns for a
  head; intermediate row, its bias and the output column for a neuron; every weight of a layer).
- `first_order`: the first-order Taylor estimate of the loss change if the group were zeroed,
  `|sum over the group of w * grad|`, accumulated over optimizer steps (Molchanov et al. 2019;
  Michel et al. 2019 rank heads this way). The default: it measures what the loss needs rather
  than what the pretrained weights happen to be, which is what transformer pruning studies find
  matters once the model is fine-tuned on a task.
- `movement`: `-sum(w * grad)` accumulated (Sanh et al. 2020): groups moving away from zero rank high.

Every score is one 1-D tensor per layer: `scores["heads"][l][h]`, `scores["neurons"][l][n]`,
`scores["layers"][0][l]` (layers are one group set of size L).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sparseforge.modifiers.pruning.groups import EncoderGroups, LayerGroups

STRUCTURES = ("heads", "neurons", "layers")
SCORES = ("magnitude", "first_order", "movement")
GroupScores = dict[str, list[torch.Tensor]]
# what is summed per element: w*w for magnitude, w*grad for the gradient scores
Elementwise = Callable[[torch.nn.Parameter], torch.Tensor | None]


def _linear(model: torch.nn.Module, name: str) -> torch.nn.Linear:
    return model.get_submodule(name)  # type: ignore[return-value]


def layer_group_sums(
    model: torch.nn.Module, layer: LayerGroups, fn: Elementwise
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head and per neuron of `layer`: the sum of `fn(param)` over the group's elements."""
    d = layer.head_size
    heads = None
    for role in ("q", "k", "v"):
        mod = _linear(model, getattr(layer, role))
        values = fn(mod.weight)
        if values is not None:
            part = values.float().reshape(-1, d * values.shape[1]).sum(1)
            heads = part if heads is None else heads + part
        if mod.bias is not None and (b := fn(mod.bias)) is not None:
            part = b.float().reshape(-1, d).sum(1)
            heads = part if heads is None else heads + part
    o = fn(_linear(model, layer.o).weight)
    if o is not None:
        part = o.float().reshape(o.shape[0], -1, d).sum((0, 2))
        heads = part if heads is None else heads + part
    ffn_in, ffn_out = _linear(model, layer.ffn_in), _linear(model, layer.ffn_out)
    neurons = None
    for values, dim in ((fn(ffn_in.weight), 1), (fn(ffn_out.weight), 0)):
        if values is not None:
            part = values.float().sum(dim)
            neurons = part if neurons is None else neurons + part
    if ffn_in.bias is not None and (b := fn(ffn_in.bias)) is not None:
        neurons = b.float() if neurons is None else neurons + b.float()
    if heads is None:
        heads = torch.zeros(_linear(model, layer.q).out_features // d)
    if neurons is None:
        neurons = torch.zeros(ffn_in.out_features)
    return heads.detach().cpu(), neurons.detach().cpu()


@torch.no_grad()
def magnitude_scores(model: torch.nn.Module, groups: EncoderGroups) -> GroupScores:
    """L2 norm of every group's weights (see the module docstring)."""
    heads, neurons, layers = [], [], []
    for layer in groups.layers:
        h, n = layer_group_sums(model, layer, lambda p: p.detach() * p.detach())
        heads.append(h.sqrt())
        neurons.append(n.sqrt())
        layers.append((h.sum() + n.sum()).sqrt())
    return {"heads": heads, "neurons": neurons, "layers": [torch.stack(layers)]}


class GradientScoreAccumulator:
    """Accumulates `first_order` or `movement` group scores once per optimizer step."""

    def __init__(self, kind: str):
        if kind not in ("first_order", "movement"):
            raise ValueError(f"not a gradient score: {kind!r}")
        self.kind = kind
        self.totals: GroupScores = {}
        self.steps = 0

    @torch.no_grad()
    def accumulate(self, model: torch.nn.Module, groups: EncoderGroups) -> None:
        def w_grad(p: torch.nn.Parameter) -> torch.Tensor | None:
            if p.grad is None or not bool(torch.isfinite(p.grad).all()):
                return None
            return p.detach() * p.grad

        step: GroupScores = {"heads": [], "neurons": [], "layers": []}
        layer_values = []
        for layer in groups.layers:
            h, n = layer_group_sums(model, layer, w_grad)
            total = h.sum() + n.sum()
            if self.kind == "first_order":
                h, n, total = h.abs(), n.abs(), total.abs()
            else:
                h, n, total = -h, -n, -total
            step["heads"].append(h)
            step["neurons"].append(n)
            layer_values.append(total)
        step["layers"] = [torch.stack(layer_values)]
        if not self.totals or _shapes(self.totals) != _shapes(step):
            self.totals = step
        else:
            for key, values in step.items():
                self.totals[key] = [a + b for a, b in zip(self.totals[key], values, strict=True)]
        self.steps += 1

    def scores(self, model: torch.nn.Module, groups: EncoderGroups) -> GroupScores:
        """The accumulated scores; before any gradient, magnitude stands in (a first update at
        step 0 has nothing else to go on)."""
        if not self.totals:
            return magnitude_scores(model, groups)
        return {key: [v.clone() for v in values] for key, values in self.totals.items()}

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "steps": self.steps,
            "totals": {k: [v.clone() for v in vs] for k, vs in self.totals.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))
        self.totals = {
            k: [torch.as_tensor(v) for v in vs] for k, vs in state.get("totals", {}).items()
        }


def _shapes(scores: GroupScores) -> list[tuple[int, ...]]:
    return [tuple(v.shape) for key in STRUCTURES for v in scores.get(key, [])]
