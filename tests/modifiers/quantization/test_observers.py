"""FakeQuantize: torch's observer formulas, moving average, zero preservation, export op."""

from __future__ import annotations

import pytest
import torch

from sparseforge.modifiers.quantization.observers import (
    FakeQuantize,
    fake_quantizers,
    quant_range,
    set_observers,
)


def reference_asymmetric(x: torch.Tensor, qmin: int = 0, qmax: int = 255) -> torch.Tensor:
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / (qmax - qmin)
    zero = min(max(qmin - round(low / scale), qmin), qmax)
    q = torch.clamp(torch.round(x / scale) + zero, qmin, qmax)
    return (q - zero) * scale


def test_quant_ranges():
    assert quant_range(8, signed=False) == (0, 255)
    assert quant_range(8, signed=True) == (-128, 127)
    assert quant_range(8, signed=False, reduce_range=True) == (0, 127)
    assert quant_range(4, signed=True) == (-8, 7)


def test_asymmetric_matches_reference_and_zero_point():
    torch.manual_seed(0)
    x = torch.randn(64) * 3 + 1
    fq = FakeQuantize(num_bits=8, symmetric=False)
    out = fq(x)
    assert torch.allclose(out, reference_asymmetric(x), atol=1e-6)
    assert 0 <= int(fq.zero_point) <= 255
    assert fq.quant_min == 0 and fq.quant_max == 255
    # the grid has at most 256 distinct values
    assert out.unique().numel() <= 256


def test_symmetric_keeps_exact_zeros_and_uses_int8():
    torch.manual_seed(0)
    w = torch.randn(16, 16)
    w[torch.rand_like(w) < 0.7] = 0.0
    fq = FakeQuantize(num_bits=8, symmetric=True, channels=16)
    out = fq(w)
    assert bool((out[w == 0] == 0).all())
    assert int(fq.zero_point.abs().max()) == 0
    assert fq.scale.shape == (16,)
    expected = w.abs().amax(dim=1) / 127.5
    assert torch.allclose(fq.scale, expected)


def test_moving_average_and_freeze():
    fq = FakeQuantize()
    fq(torch.tensor([-1.0, 1.0]))
    assert fq.min_val.item() == -1.0 and fq.max_val.item() == 1.0
    fq(torch.tensor([-3.0, 5.0]))
    assert fq.min_val.item() == pytest.approx(-1.0 + 0.01 * (-3.0 + 1.0))
    assert fq.max_val.item() == pytest.approx(1.0 + 0.01 * (5.0 - 1.0))
    model = torch.nn.Sequential(fq)
    set_observers(model, False)
    scale = fq.scale.clone()
    fq(torch.tensor([-100.0, 100.0]))
    assert torch.equal(fq.scale, scale)
    assert list(fake_quantizers(model)) == ["0"]


def test_straight_through_gradient():
    x = torch.linspace(-1, 1, 11, requires_grad=True)
    FakeQuantize()(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_state_is_in_buffers_and_roundtrips():
    fq = FakeQuantize(channels=4, symmetric=True)
    fq(torch.randn(4, 8))
    state = fq.state_dict()
    assert set(state) == {"scale", "zero_point", "min_val", "max_val"}
    fresh = FakeQuantize(channels=4, symmetric=True)
    fresh.load_state_dict(state)
    fresh.observer_enabled = False
    x = torch.randn(4, 8)
    assert torch.equal(
        fresh(x), torch.fake_quantize_per_channel_affine(x, fq.scale, fq.zero_point, 0, -128, 127)
    )


def test_rejects_more_than_eight_bits():
    with pytest.raises(ValueError, match="num_bits"):
        FakeQuantize(num_bits=16)
