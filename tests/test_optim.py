"""AdamATan2: hand-computed steps, decoupled weight decay, dtypes, state-dict round trip, validation."""

import math

import pytest
import torch

from attractorlab.optim import AdamATan2


def set_grads(params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.tensor(g, dtype=p.dtype)


def test_two_parameters_two_steps_by_hand():
    # lr 0.1, betas (0.9, 0.95), weight decay 0.5: every step first multiplies p by 1 - 0.1 * 0.5 = 0.95.
    # Step 1: m = 0.1 g, v = 0.05 g^2, sqrt(v / (1 - 0.95)) = |g|, so the step is
    #   lr / (1 - 0.9) * atan2(0.1 g, |g|) = sign(g) * atan(0.1) = sign(g) * 0.0996686525.
    # Step 2 (bias corrections 0.19 and 0.0975, step size 0.1 / 0.19 = 0.5263157895):
    #   a[0]: g 0.2 then -0.1: m = 0.9 * 0.02 - 0.01 = 0.008, v = 0.95 * 0.002 + 0.0005 = 0.0024,
    #         atan2(0.008, sqrt(0.0024 / 0.0975)) = 0.0509460724 -> 0.8503313475 * 0.95 - 0.5263157895 * 0.0509460724
    #   a[1]: g -0.4 then 0.4: m = 0.004, v = 0.0156, atan2(0.004, 0.4) = 0.0099996667
    #   b[0]: g 3.0 then 0.0: m = 0.27, v = 0.4275, atan2(0.27, sqrt(0.4275 / 0.0975)) = 0.1282355011
    a = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    opt = AdamATan2([a, b], lr=0.1, betas=(0.9, 0.95), weight_decay=0.5)
    set_grads([a, b], [[0.2, -0.4], [3.0]])
    opt.step()
    torch.testing.assert_close(a.detach(), torch.tensor([0.8503313475, -1.8003313475], dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.tensor([0.3753313475], dtype=torch.float64))
    set_grads([a, b], [[-0.1, 0.4], [0.0]])
    opt.step()
    torch.testing.assert_close(a.detach(), torch.tensor([0.7810010578, -1.7155777626], dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.tensor([0.2890724111], dtype=torch.float64))
    torch.testing.assert_close(opt.state[b]["exp_avg"], torch.tensor([0.27], dtype=torch.float64))
    torch.testing.assert_close(opt.state[b]["exp_avg_sq"], torch.tensor([0.4275], dtype=torch.float64))
    assert float(opt.state[a]["step"]) == 2.0


def scalar_reference(p, grads, lr, beta1, beta2, weight_decay):
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        p *= 1 - lr * weight_decay
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**t) * math.atan2(m, math.sqrt(v) / math.sqrt(1 - beta2**t))
    return p


def test_matches_the_scalar_formula_over_many_steps():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(5, generator=gen, dtype=torch.float64)
    grads = torch.randn(12, 5, generator=gen, dtype=torch.float64) * torch.logspace(-4, 1, 5, dtype=torch.float64)
    p = torch.nn.Parameter(start.clone())
    opt = AdamATan2([p], lr=3e-3, betas=(0.8, 0.99), weight_decay=1.0)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = [scalar_reference(float(start[i]), grads[:, i].tolist(), 3e-3, 0.8, 0.99, 1.0) for i in range(5)]
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_weight_decay_is_decoupled():
    grads = [[0.3, -1.0], [0.1, 0.2]]
    plain, decayed = (torch.nn.Parameter(torch.tensor([2.0, -1.0])) for _ in range(2))
    opt_plain = AdamATan2([plain], lr=0.01, weight_decay=0.0)
    opt_decayed = AdamATan2([decayed], lr=0.01, weight_decay=2.0)
    set_grads([plain], [grads[0]])
    set_grads([decayed], [grads[0]])
    opt_plain.step()
    opt_decayed.step()
    # the decay acts on p only: difference = -lr * wd * p0, moments identical
    torch.testing.assert_close(decayed.detach() - plain.detach(), torch.tensor([-0.04, 0.02]))
    torch.testing.assert_close(opt_decayed.state[decayed]["exp_avg"], opt_plain.state[plain]["exp_avg"])


def test_zero_gradient_gives_only_the_decay():
    p = torch.nn.Parameter(torch.tensor([1.0, -3.0, 0.0]))
    opt = AdamATan2([p], lr=0.1, weight_decay=0.5)
    for _ in range(3):
        p.grad = torch.zeros(3)
        opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.0, -3.0, 0.0]) * 0.95**3)
    assert not opt.state[p]["exp_avg"].any()


def test_zero_learning_rate_and_missing_gradients_change_nothing():
    p, q = torch.nn.Parameter(torch.tensor([1.0])), torch.nn.Parameter(torch.tensor([2.0]))
    opt = AdamATan2([p, q], lr=0.0, weight_decay=1.0)
    p.grad = torch.tensor([5.0])
    opt.step()
    assert p.item() == 1.0 and q.item() == 2.0
    assert q not in opt.state


def test_bfloat16_parameters_keep_float32_moments():
    start = torch.tensor([0.5, -0.25, 2.0, 1.0])
    grad = torch.tensor([1e-3, -2.0, 0.5, 0.0])
    low = torch.nn.Parameter(start.to(torch.bfloat16))
    ref = torch.nn.Parameter(start.clone())
    opt_low, opt_ref = AdamATan2([low], lr=0.05), AdamATan2([ref], lr=0.05)
    for opt, p in ((opt_low, low), (opt_ref, ref)):
        p.grad = grad.to(p.dtype)
        opt.step()
    assert low.dtype == torch.bfloat16
    assert opt_low.state[low]["exp_avg"].dtype == torch.float32
    torch.testing.assert_close(low.detach().float(), ref.detach(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(opt_low.state[low]["exp_avg"], opt_ref.state[ref]["exp_avg"], rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_continues_identically(dtype):
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(3, 2, generator=gen) for _ in range(5)]
    first = [torch.nn.Parameter(torch.ones(3, 2, dtype=dtype)), torch.nn.Parameter(torch.zeros(2, dtype=dtype))]
    opt = AdamATan2(first, lr=0.02, betas=(0.85, 0.9), weight_decay=0.3)

    def run(optimizer, params, steps):
        for g in steps:
            params[0].grad, params[1].grad = g.to(dtype), g[0].to(dtype)
            optimizer.step()

    run(opt, first, grads[:3])
    second = [torch.nn.Parameter(p.detach().clone()) for p in first]
    resumed = AdamATan2(second, lr=1.0)
    resumed.load_state_dict(opt.state_dict())
    assert resumed.param_groups[0]["lr"] == 0.02 and resumed.param_groups[0]["betas"] == (0.85, 0.9)
    assert resumed.state[second[0]]["exp_avg"].dtype == torch.float32
    run(opt, first, grads[3:])
    run(resumed, second, grads[3:])
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs", [{"lr": -1e-3}, {"lr": float("nan")}, {"lr": "0.1"}, {"betas": (1.0, 0.9)},
                                    {"betas": (0.9, -0.1)}, {"betas": (0.9, 0.95, 0.99)}, {"weight_decay": -0.1},
                                    {"weight_decay": float("inf")}])
def test_invalid_settings_are_value_errors(kwargs):
    with pytest.raises(ValueError, match="AdamATan2"):
        AdamATan2([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_defaults_and_closure():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = AdamATan2([p])
    assert opt.defaults == {"lr": 1e-4, "betas": (0.9, 0.95), "weight_decay": 0.1}

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 1.0
    assert p.item() < 1.0
