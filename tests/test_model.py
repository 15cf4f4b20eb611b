"""The model: shapes, determinism, gradient path, and equality with the reference layout and numerics."""

import math

import pytest
import torch
import torch.nn.functional as F

from attractorlab.checkpoint import CheckpointError, load_reference
from attractorlab.model import EquilibriumReasoner, LatentState, ReasonerConfig, swiglu_width


def tiny_config(**kw) -> ReasonerConfig:
    base = dict(hidden_size=32, num_heads=4, expansion=2.0, L_layers=2, H_cycles=2, L_cycles=2, noise_scale=0.01)
    return ReasonerConfig(**{**base, **kw})


def tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 11, (n, 81), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mlp_t,pos", [(True, "rope"), (False, "rope"), (False, "rope2d"), (False, "none")])
def test_shapes_and_readout(mlp_t, pos):
    model = EquilibriumReasoner(tiny_config(mlp_t=mlp_t, pos_encodings=pos)).eval()
    tok = tokens(3)
    state = model.init_state(tok, generator=torch.Generator().manual_seed(0))
    assert state.z_H.shape == state.z_L.shape == (3, 81, 32)
    new = model.step(state, tok)
    logits, q = model.readout(new)
    assert logits.shape == (3, 81, 11) and q.shape == (3,)
    assert torch.isfinite(logits).all()
    # q_head starts at zero weight and bias -5
    assert torch.allclose(q, torch.full((3,), -5.0))


def test_noise_off_is_a_deterministic_map_and_noise_on_is_seeded():
    model = EquilibriumReasoner(tiny_config()).eval()
    tok = tokens(2)
    s0 = model.init_state(tok, generator=torch.Generator().manual_seed(1))
    a = model.step(s0, tok, noise=False)
    b = model.step(s0, tok, noise=False)
    assert torch.equal(a.z_H, b.z_H) and torch.equal(a.z_L, b.z_L)
    n1 = model.step(s0, tok, generator=torch.Generator().manual_seed(5))
    n2 = model.step(s0, tok, generator=torch.Generator().manual_seed(5))
    n3 = model.step(s0, tok, generator=torch.Generator().manual_seed(6))
    assert torch.equal(n1.z_H, n2.z_H)
    assert not torch.equal(n1.z_H, n3.z_H)
    assert not torch.equal(n1.z_H, a.z_H)


def test_init_state_is_truncated_normal():
    model = EquilibriumReasoner(tiny_config(hidden_size=64)).eval()
    s = model.init_state(tokens(64), generator=torch.Generator().manual_seed(0))
    z = s.z_H.flatten()
    assert abs(z.std().item() - 1.0) < 0.02
    assert z.abs().max().item() <= 2.0 * 1.14  # cut at 2 std of the underlying normal (compensated)


def test_gradient_flows_only_through_last_h_cycle():
    model = EquilibriumReasoner(tiny_config(H_cycles=2, noise_scale=0.0))
    tok = tokens(2)
    z_H = torch.randn(2, 81, 32, requires_grad=True)
    z_L = torch.randn(2, 81, 32, requires_grad=True)
    model.train()
    out = model.step(LatentState(z_H, z_L), tok)
    out.z_H.sum().backward()
    assert z_H.grad is None and z_L.grad is None  # the first cycle ran without gradients
    assert model.layers[0].mlp.down_proj.weight.grad is not None
    model.eval()
    out = model.step(LatentState(z_H, z_L), tok)
    out.z_H.sum().backward()
    assert z_H.grad is not None and z_H.grad.abs().sum() > 0  # eval: full graph, needed for Jacobians


def test_as_map_is_the_flat_step():
    model = EquilibriumReasoner(tiny_config()).eval()
    tok = tokens(1)
    f = model.as_map(tok)
    s = model.init_state(tokens(3), generator=torch.Generator().manual_seed(2))
    z = s.flatten()
    expected = model.step(s, tok.expand(3, -1), noise=False).flatten()
    assert z.shape == (3, 2 * 81 * 32)
    assert torch.allclose(f(z), expected, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(hidden_size=0), "hidden_size"), (dict(lambda_=0.0), "lambda_"), (dict(lambda_=1.5), "lambda_"),
    (dict(noise_scale=-1.0), "noise_scale"), (dict(pos_encodings="alibi"), "pos_encodings"),
    (dict(mlp_t=False, hidden_size=30, num_heads=4), "divisible"), (dict(H_cycles=2.5), "H_cycles"),
])
def test_bad_config_values(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kw)


def test_swiglu_width_matches_reference_rule():
    assert swiglu_width(512, 4) == 1536  # round(4 * 512 * 2/3) = 1365 -> 1536
    assert swiglu_width(81, 4) == 256


# --- an independent, functional oracle of the reference forward pass -------------------------------------------

def _rms(x, eps=1e-5):
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


def _swiglu(sd, prefix, x):
    gate, up = F.linear(x, sd[prefix + "gate_up_proj.weight"]).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, sd[prefix + "down_proj.weight"])


def _attention(sd, prefix, x, heads):
    b, n, d = x.shape
    hd = d // heads
    qkv = F.linear(x, sd[prefix + "qkv_proj.weight"]).view(b, n, 3 * heads, hd)
    q, k, v = qkv[:, :, :heads], qkv[:, :, heads:2 * heads], qkv[:, :, 2 * heads:]
    inv = 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    ang = torch.outer(torch.arange(n).float(), inv)
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]

    def rot(t):
        return t * cos + torch.cat([-t[..., hd // 2:], t[..., :hd // 2]], -1) * sin

    q, k = rot(q), rot(k)
    att = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd), -1)
    y = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, n, d)
    return F.linear(y, sd[prefix + "o_proj.weight"])


def _reference_step(sd, z_H, z_L, inputs, *, mlp_t, heads, H, L, lam, n_layers):
    p = "model.inner."
    x = math.sqrt(z_H.shape[-1]) * sd[p + "embed_tokens.embedding_weight"][inputs]

    def module(z, inj):
        h = z + inj
        for i in range(n_layers):
            lp = f"{p}L_level.layers.{i}."
            if mlp_t:
                ht = h.transpose(1, 2)
                h = _rms(ht + _swiglu(sd, lp + "mlp_t.", ht)).transpose(1, 2)
            else:
                h = _rms(h + _attention(sd, lp + "self_attn.", h, heads))
            h = _rms(h + _swiglu(sd, lp + "mlp.", h))
        return (1 - lam) * z + lam * h

    for _ in range(H):
        for _ in range(L):
            z_L = module(z_L, z_H + x)
        z_H = module(z_H, z_L)
    logits = F.linear(z_H, sd[p + "lm_head.weight"])
    q = F.linear(z_H[:, 0], sd[p + "q_head.weight"], sd[p + "q_head.bias"])[..., 0]
    return z_H, z_L, logits, q


def _reference_state_dict(d, mlp_t, n_layers, gen):
    inner = swiglu_width(d, 4.0)
    sd = {"model.inner.embed_tokens.embedding_weight": torch.randn(11, d, generator=gen) / math.sqrt(d),
          "model.inner.lm_head.weight": torch.randn(11, d, generator=gen) / math.sqrt(d),
          "model.inner.q_head.weight": torch.randn(2, d, generator=gen) / math.sqrt(d),
          "model.inner.q_head.bias": torch.randn(2, generator=gen)}
    for i in range(n_layers):
        lp = f"model.inner.L_level.layers.{i}."
        if mlp_t:
            t_inner = swiglu_width(81, 4.0)
            sd[lp + "mlp_t.gate_up_proj.weight"] = torch.randn(2 * t_inner, 81, generator=gen) / 9
            sd[lp + "mlp_t.down_proj.weight"] = torch.randn(81, t_inner, generator=gen) / math.sqrt(t_inner)
        else:
            sd[lp + "self_attn.qkv_proj.weight"] = torch.randn(3 * d, d, generator=gen) / math.sqrt(d)
            sd[lp + "self_attn.o_proj.weight"] = torch.randn(d, d, generator=gen) / math.sqrt(d)
        sd[lp + "mlp.gate_up_proj.weight"] = torch.randn(2 * inner, d, generator=gen) / math.sqrt(d)
        sd[lp + "mlp.down_proj.weight"] = torch.randn(d, inner, generator=gen) / math.sqrt(inner)
    return {("_orig_mod." + k if i % 2 else k): v for i, (k, v) in enumerate(sd.items())}


@pytest.mark.parametrize("mlp_t", [True, False])
def test_load_reference_reproduces_reference_outputs(mlp_t):
    gen = torch.Generator().manual_seed(0)
    d, heads, n_layers = 32, 4, 2
    sd = _reference_state_dict(d, mlp_t, n_layers, gen)
    model = load_reference(sd, num_heads=heads, H_cycles=2, L_cycles=3, lambda_=0.9, noise_scale=0.0, expansion=4.0)
    assert model.config.hidden_size == d and model.config.L_layers == n_layers and model.config.mlp_t == mlp_t
    inputs = torch.randint(1, 11, (3, 81), generator=gen)
    z_H, z_L = torch.randn(3, 81, d, generator=gen), torch.randn(3, 81, d, generator=gen)
    clean = {k.replace("_orig_mod.", ""): v for k, v in sd.items()}
    ref = _reference_step(clean, z_H, z_L, inputs, mlp_t=mlp_t, heads=heads, H=2, L=3, lam=0.9, n_layers=n_layers)
    with torch.no_grad():
        out = model.step(LatentState(z_H, z_L), inputs)
        logits, q = model.readout(out)
    for got, want in zip((out.z_H, out.z_L, logits, q), ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # float32 rounding


def test_load_reference_errors():
    with pytest.raises(CheckpointError, match="no reference EqR weights"):
        load_reference({"foo": torch.zeros(1)})
    sd = _reference_state_dict(32, True, 1, torch.Generator().manual_seed(0))
    with pytest.raises(CheckpointError, match="expansion"):
        load_reference(sd, expansion=8.0)
    with pytest.raises(CheckpointError, match="hidden_size"):
        load_reference(sd, hidden_size=64)
    with pytest.raises(CheckpointError, match="not found"):
        load_reference("/nonexistent/ref.pt")


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated:DeprecationWarning")  # torch's own jvp
def test_as_map_keeps_the_full_jacobian_in_training_mode():
    model = EquilibriumReasoner(tiny_config(H_cycles=2)).train()
    f = model.as_map(tokens(1))
    z = model.init_state(tokens(1), generator=torch.Generator().manual_seed(0)).flatten()
    v = torch.randn_like(z)
    _, jv_train = torch.func.jvp(f, (z,), (v,))
    model.eval()
    _, jv_eval = torch.func.jvp(f, (z,), (v,))
    torch.testing.assert_close(jv_train, jv_eval)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated:DeprecationWarning")  # torch's own jvp
def test_jacobian_products_of_an_attention_model_match_finite_differences():
    from attractorlab.dynamics import Linearization

    torch.manual_seed(0)  # the fused CPU attention kernel has neither forward-mode nor second derivatives
    model = EquilibriumReasoner(tiny_config(mlp_t=False, pos_encodings="rope2d", H_cycles=1, L_cycles=1)).double()
    f = model.as_map(tokens(1))
    z = model.init_state(tokens(2), generator=torch.Generator().manual_seed(0)).flatten()
    v, u = torch.randn_like(z), torch.randn_like(z)
    _, jv = torch.func.jvp(f, (z,), (v,))
    lin = Linearization(f, z, double_backward=True)
    torch.testing.assert_close(lin.matvec(v), jv, rtol=1e-7, atol=1e-9)  # two exact derivatives, rounding apart
    torch.testing.assert_close((lin.rmatvec(u) * v).sum(), (u * jv).sum())
    h = 1e-3  # the norms run in float32 (as in the reference), so differences need a wide step
    numeric = (f(z + h * v) - f(z - h * v)) / (2 * h)
    assert (jv - numeric).norm() < 1e-3 * numeric.norm()


def test_bfloat16_forward_carries_the_state_in_bf16_and_stays_close_to_float32():
    torch.manual_seed(0)
    cfg = tiny_config(H_cycles=2)
    f32 = EquilibriumReasoner(cfg).eval()
    bf16 = EquilibriumReasoner(ReasonerConfig.from_dict({**cfg.to_dict(), "forward_dtype": "bfloat16"})).eval()
    bf16.load_state_dict(f32.state_dict())
    assert f32.state_dtype == torch.float32 and bf16.state_dtype == torch.bfloat16  # auto is float32 on a CPU
    tok = tokens(2)
    gen = torch.Generator().manual_seed(1)
    z32 = f32.init_state(tok, generator=gen)
    z16 = bf16.init_state(tok, generator=torch.Generator().manual_seed(1))
    assert z16.z_H.dtype == torch.bfloat16 and bf16.embed(tok).dtype == torch.bfloat16
    torch.testing.assert_close(z16.z_H.float(), z32.z_H, atol=2e-2, rtol=1e-2)
    with torch.no_grad():
        s32, s16 = f32.step(z32, tok, noise=False), bf16.step(z16, tok, noise=False)
        l32, l16 = f32.readout(s32)[0], bf16.readout(s16)[0]
    assert s16.z_H.dtype == torch.bfloat16 and l16.dtype == torch.bfloat16
    assert (l16.float() - l32).abs().max() < 0.1 * l32.abs().max()
    with pytest.raises(ValueError, match="forward_dtype"):
        ReasonerConfig(forward_dtype="float16")


def test_a_bf16_training_step_runs_on_cpu():
    from attractorlab.train import TrainConfig, Trainer, load_data

    cfg = TrainConfig.from_preset("tiny", hidden_size=16, expansion=1.0, L_layers=1, H_cycles=1, L_cycles=1,
                                  forward_dtype="bfloat16", batch_size=4, n_train=8, n_eval=2)
    pool, _ = load_data(cfg)
    trainer = Trainer(cfg, torch.device("cpu"), pool=pool)
    metrics = trainer.train_step()
    assert trainer.carry.z_H.dtype == torch.bfloat16 and math.isfinite(metrics["lm_loss"])


@pytest.mark.parametrize("hierarchical", [True, False])
def test_noise_drawn_ahead_is_the_noise_the_step_draws(hierarchical):
    torch.manual_seed(0)
    model = EquilibriumReasoner(ReasonerConfig(hidden_size=16, expansion=1.0, H_cycles=2, L_cycles=2, L_layers=1,
                                               hierarchical=hierarchical)).eval()
    tokens = torch.randint(1, 11, (3, 81))
    state = model.init_state(tokens)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with torch.no_grad():
        own = model.step(state, tokens, generator=g1)
        eps = model.draw_noise(state, g2)
        ahead = model.step(state, tokens, eps=eps)
        quiet = model.step(state, tokens, noise=False)
    assert len(eps) == 2 * 3 and torch.equal(g1.get_state(), g2.get_state())
    assert torch.equal(own.z_H, ahead.z_H) and torch.equal(own.z_L, ahead.z_L)
    assert not torch.equal(own.z_H, quiet.z_H)


@pytest.mark.parametrize("pos", ["rope", "rope2d"])
@pytest.mark.parametrize("path", ["complex", "reals"])
def test_rope_in_pair_order_equals_explicit_rotate_half_bit_for_bit(pos, path, monkeypatch):
    from attractorlab.model import Attention, rope_pair_order, rope_tables, rotate_half

    c = ReasonerConfig(task="maze11", mlp_t=False, pos_encodings=pos, hidden_size=64, num_heads=4)
    x = torch.randn(2, 3, 4, c.seq_len, 16, generator=torch.Generator().manual_seed(0))  # [q/k, B, H, L, head_dim]
    board = (c.board_height, c.board_width) if pos == "rope2d" else None
    cos, sin = rope_tables(16, c.seq_len, c.rope_theta, board)
    parts = (slice(0, 8), slice(8, 16)) if pos == "rope2d" else (slice(0, 16),)
    want = torch.cat([x[..., p] * cos[..., p] + rotate_half(x[..., p]) * sin[..., p] for p in parts], -1)
    order = rope_pair_order(16, len(parts))
    assert sorted(order.tolist()) == list(range(16)) and not torch.equal(order, torch.arange(16))
    if path == "reals":  # the branch bf16 and torch.compile take
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    got = Attention(c)._rope(x[..., order].permute(1, 3, 0, 2, 4)).permute(2, 0, 3, 1, 4)  # via [B, L, 2, H, hd]
    assert torch.equal(got[..., order.argsort()], want)


def test_attention_in_pair_order_keeps_the_reference_weights_and_scores():
    from attractorlab.model import Attention, rope_tables, rotate_half

    c = ReasonerConfig(task="maze11", mlp_t=False, pos_encodings="rope2d", hidden_size=64, num_heads=4)
    attn = Attention(c)
    x = torch.randn(3, c.seq_len, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = attn.residual(x)
        attn.qkv_order = torch.arange(3 * 64)  # the stored (reference) row order: RoPE on it would pair wrong dims
        wrong = attn.residual(x)
    b, n, h, hd = 3, c.seq_len, 4, 16
    qkv = F.linear(x, attn.qkv_proj.weight).view(b, n, 3, h, hd).permute(2, 0, 3, 1, 4)  # [3, B, H, L, hd]
    cos, sin = rope_tables(hd, n, c.rope_theta, (c.board_height, c.board_width))
    halves = (slice(0, 8), slice(8, 16))
    q, k = (torch.cat([t[..., p] * cos[..., p] + rotate_half(t[..., p]) * sin[..., p] for p in halves], -1)
            for t in qkv[:2])
    y = torch.softmax(q @ k.mT / math.sqrt(hd), -1) @ qkv[2]
    want = x + F.linear(y.transpose(1, 2).reshape(b, n, 64), attn.o_proj.weight)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(wrong, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("mlp_t,pos", [(True, "rope"), (False, "rope2d")])
def test_layers_on_chunks_of_boards_give_the_one_pass_numbers(mlp_t, pos):
    model = EquilibriumReasoner(tiny_config(mlp_t=mlp_t, pos_encodings=pos)).eval()
    c = model.config
    widest = max(c.seq_len * 2 * swiglu_width(c.hidden_size, c.expansion),
                 (2 * swiglu_width(c.seq_len, c.expansion) if mlp_t else 3 * c.seq_len) * c.hidden_size)
    model.row_chunk_bytes = 2 * widest * 4  # 2 boards a chunk: 17 rows (more than 8 chunks) run as 8 x 2 + 1
    assert model.row_chunk(17) == 2 and model.row_chunk(16) == 16  # 8 chunks' worth or less: one pass
    tok = tokens(17, seed=1)
    state = model.init_state(tok, generator=torch.Generator().manual_seed(2))
    steps = {}
    for chunk_bytes in (model.row_chunk_bytes, 0):
        model.row_chunk_bytes = chunk_bytes
        with torch.inference_mode():
            steps[chunk_bytes] = model.step(state, tok, generator=torch.Generator().manual_seed(3))
    chunked, one_pass = steps.values()
    torch.testing.assert_close(chunked.z_H, one_pass.z_H, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked.z_L, one_pass.z_L, rtol=1e-6, atol=1e-6)


def test_row_chunks_keep_a_block_within_the_budget():
    shipped = EquilibriumReasoner(ReasonerConfig(hidden_size=128, expansion=2.0, L_layers=2, H_cycles=2, L_cycles=3))
    assert shipped.row_chunk(1024) == (4 << 20) // (2 * 256 * 128 * 4)  # 16 boards of the [512, 128] gate-up rows
    assert shipped.row_chunk(128) == 128 and shipped.row_chunk(129) == 16
    maze = EquilibriumReasoner(ReasonerConfig(task="maze", mlp_t=False, hidden_size=128, num_heads=8, L_layers=1))
    assert maze.row_chunk(64) == 1  # 900 cells: one board at a time
    shipped.row_chunk_bytes = 0
    assert shipped.row_chunk(1024) == 1024
