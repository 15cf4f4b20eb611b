"""The Equilibrium Reasoner: one shared module iterated to a fixed point.

Read top to bottom: building blocks (RMS norm, SwiGLU, attention with RoPE), the shared block, the damped
noisy update, and the model with ``init_state`` / ``step`` / ``readout``. Numerically this is the reference
EqR model (locuslab/EqR); :func:`attractorlab.checkpoint.load_reference` maps its state dicts onto this one.

Shapes: ``B`` batch, ``L = seq_len`` cells (the task's board, e.g. 900 for 30 x 30 mazes), ``D = hidden_size``; latent
streams ``z_H, z_L: [B, L, D]``. The task (``ReasonerConfig.task``) fixes ``L``, the vocabulary and the board shape.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from attractorlab.errors import InputError
from attractorlab.tasks import get_task

POS_ENCODINGS = ("rope", "rope2d", "none")
ROW_CHUNK_BYTES = 4 << 20
"""On a CPU without autograd, :meth:`EquilibriumReasoner.module` runs the layers on chunks of boards whose widest
activation is about this size, when the batch is larger than 8 such chunks, so that a block's intermediates stay in
cache instead of streaming from memory (:meth:`EquilibriumReasoner.row_chunk`; the shipped Sudoku model: 16 boards a
chunk from 129 rows on)."""
INITIAL_STATES = ("random", "fixed")
FORWARD_DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class ReasonerConfig:
    """Hyper-parameters, named as in the reference configs. Defaults are the paper's Sudoku recipe.

    ``seq_len``, ``vocab_size``, ``board_height`` and ``board_width`` default to the task's (0 = take it from
    ``task``); the board shape is what 2-D RoPE rotates by.

    TRM (the paper's baseline) is a configuration of the same model: ``lambda_=1`` (no damping: the update is
    ``layers(z + injection)``), ``noise_scale=0`` and ``initial_state="fixed"`` (every row starts from two stored
    vectors ``H_init``, ``L_init`` broadcast over the cells; see :func:`trm_config`). ``hierarchical=False``
    (an ablation rung, not a reference model) keeps one latent stream: each cycle is ``L_cycles + 1`` updates of
    ``z_H`` with the input as injection, and ``z_L`` mirrors ``z_H``.
    """

    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    L_layers: int = 2
    H_cycles: int = 3
    L_cycles: int = 6
    mlp_t: bool = True
    pos_encodings: str = "rope"
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    lambda_: float = 0.95
    noise_scale: float = 0.01
    H_init_std: float = 1.0
    L_init_std: float = 1.0
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    seq_len: int = 0
    vocab_size: int = 0
    task: str = "sudoku"
    board_height: int = 0
    board_width: int = 0
    forward_dtype: str = "auto"  # the carried state and activations: auto = bfloat16 on CUDA, float32 elsewhere
    initial_state: str = "random"  # random (EqR: a fresh truncated normal per restart) | fixed (TRM: H_init, L_init)
    hierarchical: bool = True  # two streams z_H / z_L; False = one stream (the ablation's rung below the hierarchy)

    def __post_init__(self) -> None:
        if self.forward_dtype not in FORWARD_DTYPES:
            raise InputError(f"ReasonerConfig.forward_dtype must be one of {FORWARD_DTYPES}, "
                             f"got {self.forward_dtype!r}")
        task = get_task(self.task)
        self.seq_len = self.seq_len or task.seq_len
        self.vocab_size = self.vocab_size or task.vocab_size
        if not (self.board_height or self.board_width) and self.seq_len == task.seq_len:
            self.board_height, self.board_width = task.board_shape
        elif not (self.board_height and self.board_width):  # a square board when the length allows it
            side = math.isqrt(self.seq_len)
            self.board_height, self.board_width = (side, side) if side * side == self.seq_len else (1, self.seq_len)
        positive = ("hidden_size", "num_heads", "L_layers", "H_cycles", "L_cycles", "halt_max_steps", "seq_len",
                    "vocab_size", "board_height", "board_width")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"ReasonerConfig.{name} must be a positive integer, got {value!r}")
        if not 0 < self.expansion < math.inf:
            raise InputError(f"ReasonerConfig.expansion must be a finite number > 0, got {self.expansion!r}")
        if not 0.0 < self.lambda_ <= 1.0:
            raise InputError(f"ReasonerConfig.lambda_ (damping) must be in (0, 1], got {self.lambda_!r}")
        for name in ("noise_scale", "H_init_std", "L_init_std", "halt_exploration_prob"):
            if not 0 <= getattr(self, name) < math.inf:
                raise InputError(f"ReasonerConfig.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if self.halt_exploration_prob > 1:
            raise InputError(f"ReasonerConfig.halt_exploration_prob must be <= 1, got {self.halt_exploration_prob}")
        if self.initial_state not in INITIAL_STATES:
            raise InputError(f"ReasonerConfig.initial_state must be one of {INITIAL_STATES}, "
                             f"got {self.initial_state!r}")
        if self.pos_encodings not in POS_ENCODINGS:
            raise InputError(f"ReasonerConfig.pos_encodings must be one of {POS_ENCODINGS}, got {self.pos_encodings!r}")
        if not self.mlp_t:
            if self.hidden_size % self.num_heads:
                raise InputError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
            head_dim = self.hidden_size // self.num_heads
            board = self.board_height * self.board_width
            if self.pos_encodings == "rope2d" and (head_dim % 4 or board != self.seq_len):
                raise InputError(f"rope2d needs head_dim divisible by 4 and board_height x board_width = seq_len "
                                 f"(got head_dim {head_dim}, board {self.board_height} x {self.board_width}, "
                                 f"seq_len {self.seq_len})")
            if self.pos_encodings == "rope" and head_dim % 2:
                raise InputError(f"rope needs an even head_dim, got {head_dim}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ReasonerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown ReasonerConfig fields: {', '.join(unknown)}")
        return cls(**values)

    @property
    def family(self) -> str:
        """``"eqr"`` (random initial states, two streams), ``"trm"`` (:data:`TRM_SETTINGS`, two streams) or
        ``"variant"`` (anything else, e.g. an ablation rung)."""
        if not self.hierarchical:
            return "variant"
        if self.initial_state == "random":
            return "eqr"
        return "trm" if self.lambda_ == 1.0 and self.noise_scale == 0 else "variant"

    @property
    def layer_equivalents_per_step(self) -> int:
        """Layers applied in one outer step: H_cycles x (L_cycles + 1) module calls x L_layers."""
        return self.H_cycles * (self.L_cycles + 1) * self.L_layers


TRM_SETTINGS = {"lambda_": 1.0, "noise_scale": 0.0, "initial_state": "fixed"}
"""What makes a :class:`ReasonerConfig` the reference's TRM (``models/trm.py``)."""


def trm_config(**overrides) -> ReasonerConfig:
    """The TRM baseline: :class:`ReasonerConfig` with :data:`TRM_SETTINGS` (other fields as given)."""
    return ReasonerConfig(**{**TRM_SETTINGS, **overrides})


@dataclass
class LatentState:
    """The two latent streams, each ``[B, L, D]``."""

    z_H: torch.Tensor
    z_L: torch.Tensor

    def flatten(self) -> torch.Tensor:
        """``[B, 2 * L * D]``: z_H then z_L, the layout the dynamics tools work on."""
        return torch.cat([self.z_H.flatten(1), self.z_L.flatten(1)], dim=1)

    @classmethod
    def unflatten(cls, z: torch.Tensor, seq_len: int, hidden_size: int) -> LatentState:
        z_H, z_L = z.view(z.shape[0], 2, seq_len, hidden_size).unbind(1)
        return cls(z_H, z_L)

    def detach(self) -> LatentState:
        return LatentState(self.z_H.detach(), self.z_L.detach())


def trunc_normal_(tensor: torch.Tensor, std: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Truncated normal at +-2 std, rescaled so the result has standard deviation ``std`` (JAX style)."""
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        lo, hi = -2.0, 2.0
        a, b = math.erf(lo / math.sqrt(2)), math.erf(hi / math.sqrt(2))
        z = (b - a) / 2
        c = (2 * math.pi) ** -0.5
        pdf_u, pdf_l = c * math.exp(-0.5 * lo**2), c * math.exp(-0.5 * hi**2)
        comp_std = std / math.sqrt(1 - (hi * pdf_u - lo * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2)
        tensor.uniform_(a, b, generator=generator).erfinv_().mul_(math.sqrt(2) * comp_std)
        return tensor.clip_(lo * comp_std, hi * comp_std)


def rms_norm(x: torch.Tensor, eps: float, dim: int = -1) -> torch.Tensor:
    """RMS normalisation over axis ``dim``, computed in float32 (no learned scale)."""
    dtype = x.dtype
    x = x.float()
    if dim in (-1, x.ndim - 1):
        return F.rms_norm(x, x.shape[-1:], eps=eps).to(dtype)
    return (x * torch.rsqrt(x.square().mean(dim, keepdim=True) + eps)).to(dtype)


class Linear(nn.Module):
    """Bias-free (optionally biased) linear layer, truncated-normal init with std 1/sqrt(fan_in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


def swiglu_width(width: int, expansion: float) -> int:
    """Hidden width of a SwiGLU: round(expansion * width * 2/3) rounded up to a multiple of 256."""
    return -(round(expansion * width * 2 / 3) // -256) * 256


def add_projected(x: torch.Tensor, h: torch.Tensor, proj: Linear) -> torch.Tensor:
    """``x + proj(h)`` for ``x [..., D]``, ``h [..., K]`` (same leading shape) in one ``addmm``: the residual is
    added inside the projection's matmul (``proj`` without bias)."""
    out = torch.addmm(x.reshape(-1, x.shape[-1]), h.reshape(-1, h.shape[-1]), proj.weight.to(x.dtype).t())
    return out.view(x.shape)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``; without autograd, in eager mode, the silu is taken in place and the product written over
    it. Under ``torch.compile`` the out-of-place form is traced: Inductor fuses it into one pass, while the in-place
    one on a half of the projection becomes two masked passes over the whole of it."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad)):
        return F.silu(gate) * up
    return F.silu(gate, inplace=True).mul_(up)


class SwiGLU(nn.Module):
    def __init__(self, width: int, expansion: float) -> None:
        super().__init__()
        inner = swiglu_width(width, expansion)
        self.gate_up_proj = Linear(width, 2 * inner)
        self.down_proj = Linear(inner, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(silu_mul(gate, up))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x + forward(x)`` for ``x [..., D]``, the residual added inside the down projection."""
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return add_projected(x, silu_mul(gate, up), self.down_proj)

    def residual_along_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The same map applied along axis -2, with the residual: ``x [B, L, D] -> x + forward(x.mT).mT``,
        computed as ``x + W @ x`` per board (batched matmuls, the residual added inside the second), without the
        two transposes and their copies."""
        b = x.shape[0]
        gate, up = torch.bmm(self.gate_up_proj.weight.to(x.dtype).expand(b, -1, -1), x).chunk(2, dim=-2)
        return torch.baddbmm(x, self.down_proj.weight.to(x.dtype).expand(b, -1, -1), silu_mul(gate, up))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(head_dim: int, seq_len: int, theta: float,
                board: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables ``[L, head_dim]``. With ``board = (height, width)`` (2-D RoPE) the first half of each head
    is rotated by the row index and the second half by the column index of the board."""
    if board is None:
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()
    width, half = board[1], head_dim // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float32) / half)
    freqs = torch.outer(torch.arange(max(board), dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # [max side, half]
    rows = emb[torch.arange(seq_len) // width]
    cols = emb[torch.arange(seq_len) % width]
    angles = torch.cat((rows, cols), dim=-1)  # [L, head_dim]: first half by row, second half by column
    return angles.cos(), angles.sin()


def rope_pair_order(head_dim: int, parts: int) -> torch.Tensor:
    """The head dimensions in pair order: ``[head_dim]`` indices that put the two members of each RoPE pair side by
    side. Rotating half rotates dims ``i`` and ``i + half`` of each rotated part (the whole head, or each half of it
    for 2-D RoPE) together; in pair order they are dims ``2 j`` and ``2 j + 1``, so a rotation is a complex product."""
    half = head_dim // (2 * parts)
    order = [p * 2 * half + i + h * half for p in range(parts) for i in range(half) for h in (0, 1)]
    return torch.tensor(order)


class Attention(nn.Module):
    """Non-causal multi-head self-attention with (1-D or 2-D) rotary position embeddings.

    Queries and keys are computed in pair order (:func:`rope_pair_order`: the rows of ``qkv_proj`` for them gathered
    head by head at each call; the stored weights keep the reference layout). Attention scores are sums over a head's
    dimensions, so the order changes nothing but the order of that sum; it lets RoPE run as one complex product.
    """

    def __init__(self, config: ReasonerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.two_d = config.pos_encodings == "rope2d"
        self.qkv_proj = Linear(config.hidden_size, 3 * config.hidden_size)
        self.o_proj = Linear(config.hidden_size, config.hidden_size)
        if config.pos_encodings == "none":
            self.cos = self.sin_rot = self.qkv_order = None
        else:
            board = (config.board_height, config.board_width) if self.two_d else None
            cos, sin = rope_tables(self.head_dim, config.seq_len, config.rope_theta, board)
            order = rope_pair_order(self.head_dim, 2 if self.two_d else 1)
            # in pair order, rotate_half(p) of a pair (a, b) is (-b, a): its sign folded into the stored sin table
            sign = torch.tensor([-1.0, 1.0]).repeat(self.head_dim // 2)
            self.register_buffer("cos", cos[:, order], persistent=False)  # [L, head_dim], pair order
            self.register_buffer("sin_rot", sin[:, order] * sign, persistent=False)
            rows = torch.arange(3 * config.hidden_size).view(3, self.num_heads, self.head_dim)
            rows[:2] = rows[:2, :, order]
            self.register_buffer("qkv_order", rows.flatten(), persistent=False)

    def _rope(self, qk: torch.Tensor) -> torch.Tensor:
        """qk: ``[B, L, 2, H, head_dim]`` queries and keys in pair order -> ``x * cos + rotate_half(x) * sin`` for
        each of them, in pair order. In eager float32 (or float64) it is one complex product per pair; otherwise (bf16,
        or under ``torch.compile``, which does not generate complex kernels) the same products in float32 reals."""
        cos, sin_rot = self.cos[:, None, None], self.sin_rot[:, None, None]
        if qk.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling():
            rot = torch.complex(cos[..., 0::2].to(qk.dtype), sin_rot[..., 1::2].to(qk.dtype))
            return torch.view_as_real(torch.view_as_complex(qk.unflatten(-1, (-1, 2))) * rot).flatten(-2)
        x = qk.float()
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        return (x * cos + swapped * sin_rot).to(qk.dtype)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x + attention(x)`` for ``x [B, L, D]``. RoPE writes the rotated queries and keys cells first in one pass;
        the attention kernel takes heads-first views of them and of the values (no layout copies), and the residual is
        added inside the output projection."""
        b, n, d = x.shape
        w = self.qkv_proj.weight if self.qkv_order is None else self.qkv_proj.weight[self.qkv_order]
        qkv = F.linear(x, w.to(x.dtype)).view(b, n, 3, self.num_heads, self.head_dim)
        qk = qkv[:, :, :2] if self.cos is None else self._rope(qkv[:, :, :2])
        q, k, v = (t.transpose(1, 2) for t in (*qk.unbind(2), qkv[:, :, 2]))  # [B, H, L, head_dim]
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # [B, L, H, head_dim]
        return add_projected(x, y.reshape(b, n, d), self.o_proj)


class Block(nn.Module):
    """Post-norm block: token mixing (SwiGLU across cells, or attention) then a channel SwiGLU."""

    def __init__(self, config: ReasonerConfig) -> None:
        super().__init__()
        self.eps = config.rms_norm_eps
        if config.mlp_t:
            self.mlp_t = SwiGLU(config.seq_len, config.expansion)
        else:
            self.self_attn = Attention(config)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "mlp_t"):  # mixing across cells, normalised over cells (the reference's transposed block)
            x = rms_norm(self.mlp_t.residual_along_rows(x), self.eps, dim=-2)
        else:
            x = rms_norm(self.self_attn.residual(x), self.eps)
        return rms_norm(self.mlp.residual(x), self.eps)


class EquilibriumReasoner(nn.Module):
    """Weight-tied latent reasoner. ``step`` is one outer step; iterate it to a fixed point."""

    def __init__(self, config: ReasonerConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.embed_scale = math.sqrt(d)
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        trunc_normal_(self.embed_tokens.weight, std=1 / self.embed_scale)
        self.layers = nn.ModuleList([Block(config) for _ in range(config.L_layers)])
        self.row_chunk_bytes = ROW_CHUNK_BYTES
        self.lm_head = Linear(d, config.vocab_size)
        self.q_head = Linear(d, 2, bias=True)
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)
        if config.initial_state == "fixed":  # TRM: two stored (not trained) start vectors, saved with the weights
            self.register_buffer("H_init", trunc_normal_(torch.empty(d), std=1.0))
            self.register_buffer("L_init", trunc_normal_(torch.empty(d), std=1.0))

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def state_dtype(self) -> torch.dtype:
        """dtype of the latent streams and activations (``forward_dtype``; ``auto``: bfloat16 on CUDA, as the
        reference's ``forward_dtype="bfloat16"``, the weights' dtype elsewhere). Weights stay in their own dtype."""
        bf16 = self.config.forward_dtype == "bfloat16" or (
            self.config.forward_dtype == "auto" and self.device.type == "cuda")
        return torch.bfloat16 if bf16 else self.lm_head.weight.dtype

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [B, L] int -> input injection x: [B, L, D] in :attr:`state_dtype`."""
        if tokens.dim() != 2 or tokens.shape[1] != self.config.seq_len:
            raise InputError(f"tokens must have shape [B, {self.config.seq_len}], got {tuple(tokens.shape)}")
        return (self.embed_scale * self.embed_tokens(tokens.long())).to(self.state_dtype)

    def init_state(self, tokens: torch.Tensor, generator: torch.Generator | None = None,
                   restart_std: float | None = None) -> LatentState:
        """Initial state ``[B, L, D]`` per stream.

        ``initial_state="random"``: truncated normal (std ``H_init_std`` / ``L_init_std``, cut at 2 std).
        ``"fixed"`` (TRM): the stored ``H_init`` / ``L_init`` broadcast over rows and cells, or, with
        ``restart_std``, a zero-mean truncated normal of that std for both streams (how the reference evaluation
        draws restarts for a fixed-start model: ``different_init_reset_std``).
        """
        shape = (tokens.shape[0], self.config.seq_len, self.config.hidden_size)
        if self.config.initial_state == "fixed" and restart_std is None:
            z_H, z_L = self.H_init.expand(shape).clone(), self.L_init.expand(shape).clone()
        else:
            fixed = self.config.initial_state == "fixed"
            h_std, l_std = (restart_std, restart_std) if fixed else (self.config.H_init_std, self.config.L_init_std)
            z_H = trunc_normal_(torch.empty(shape, device=self.device), h_std, generator)
            z_L = trunc_normal_(torch.empty(shape, device=self.device), l_std, generator)
        z_H, z_L = z_H.to(self.state_dtype), z_L.to(self.state_dtype)
        return LatentState(z_H, z_L)

    def module(self, z: torch.Tensor, injection: torch.Tensor, noise: bool,
               generator: torch.Generator | None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """The damped, noisy update of one stream: (1 - lambda) z + lambda layers(z + injection) + noise (drawn
        from ``generator``, or ``eps`` when it was drawn beforehand)."""
        h = z + injection
        chunkable = h.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        chunk = self.row_chunk(h.shape[0]) if chunkable else h.shape[0]
        if chunk < h.shape[0]:  # the layers on chunks of boards, so that their activations stay in cache
            out = torch.empty_like(h)
            for part, dst in zip(h.split(chunk), out.split(chunk), strict=True):
                dst.copy_(self.layers_forward(part))
            h = out
        else:
            h = self.layers_forward(h)
        out = torch.lerp(z, h, self.config.lambda_)
        if noise and self.config.noise_scale > 0:
            if eps is None:
                eps = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
            out.add_(eps, alpha=self.config.noise_scale)
        return out

    def layers_forward(self, h: torch.Tensor) -> torch.Tensor:
        """The shared layers, ``[B, L, D] -> [B, L, D]``."""
        for layer in self.layers:
            h = layer(h)
        return h

    @property
    def chunk_boards(self) -> int:
        """Boards in a chunk of :meth:`row_chunk`: as many as keep the widest activation of a block (the gate-up
        projection of a SwiGLU, or attention's q, k, v) within ``row_chunk_bytes`` (:data:`ROW_CHUNK_BYTES`)."""
        c = self.config
        mixing = 2 * swiglu_width(c.seq_len, c.expansion) if c.mlp_t else 3 * c.seq_len
        widest = max(c.seq_len * 2 * swiglu_width(c.hidden_size, c.expansion), mixing * c.hidden_size)
        return max(1, self.row_chunk_bytes // (widest * self.state_dtype.itemsize))

    def row_chunk(self, rows: int) -> int:
        """Boards per chunk when :meth:`module` runs its layers on ``rows`` boards chunk by chunk (on a CPU, without
        autograd): :attr:`chunk_boards`, or all ``rows`` (one pass) while they fit in 8 chunks (they stay in a large
        last-level cache then; chunks measured no gain there) or when ``row_chunk_bytes`` is 0. Every operation acts
        on one board, so the chunks give the same numbers."""
        chunk = self.chunk_boards
        return chunk if self.row_chunk_bytes and rows > 8 * chunk else rows

    def draw_noise(self, state: LatentState, generator: torch.Generator | None) -> list[torch.Tensor]:
        """The path noise of one outer step drawn ahead, one tensor per module application in order: exactly the
        numbers :meth:`step` would draw from ``generator`` itself (so a compiled step needs no RNG call inside)."""
        z = state.z_H
        return [torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
                for _ in self.update_names()]

    def update_names(self) -> list[str]:
        """:func:`update_names` of this model's cycles."""
        return update_names(self.config.H_cycles, self.config.L_cycles)

    def _cycle(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor, noise: bool,
               generator: torch.Generator | None, on_update: Callable | None = None,
               h: int = 1, eps: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        def report(name: str) -> None:
            if on_update is not None:
                on_update(f"H{h}.{name}", LatentState(z_H, z_L))

        n_l = self.config.L_cycles
        drawn = [None] * (n_l + 1) if eps is None else eps[(h - 1) * (n_l + 1) : h * (n_l + 1)]
        single = not self.config.hierarchical  # one stream, the same number of module applications
        for l in range(1, n_l + 1):
            if single:
                z_H = z_L = self.module(z_H, x, noise, generator, drawn[l - 1])
            else:
                z_L = self.module(z_L, z_H + x, noise, generator, drawn[l - 1])
            report(f"L{l}")
        z_H = self.module(z_H, x if single else z_L, noise, generator, drawn[n_l])
        if single:
            z_L = z_H
        report("H")
        return z_H, z_L

    def step(self, state: LatentState, tokens: torch.Tensor, *, noise: bool = True,
             generator: torch.Generator | None = None, x: torch.Tensor | None = None,
             grad_last_only: bool | None = None, on_update: Callable | None = None,
             eps: list[torch.Tensor] | None = None) -> LatentState:
        """One outer step: H_cycles x (L_cycles updates of z_L, then one of z_H).

        In training mode the first ``H_cycles - 1`` cycles run without gradients (as in the reference), so
        gradients flow only through the last cycle. ``noise=False`` makes the step a deterministic map.
        ``x`` may pass a precomputed ``embed(tokens)`` to save work in long rollouts; ``grad_last_only``
        overrides the training-mode gradient truncation (``False`` always keeps the full graph).
        ``on_update(name, state)`` is called after every inner update with its name (:meth:`update_names`) and the
        LatentState at that moment (a ``run_with_cache``-style capture inside the outer step). ``eps``: the step's
        path noise drawn beforehand (:meth:`draw_noise`) instead of from ``generator``.
        """
        x = self.embed(tokens) if x is None else x
        z_H, z_L = state.z_H, state.z_L
        truncate = self.training if grad_last_only is None else grad_last_only
        with torch.set_grad_enabled(torch.is_grad_enabled() and not truncate):
            for h in range(1, self.config.H_cycles):
                z_H, z_L = self._cycle(z_H, z_L, x, noise, generator, on_update, h, eps)
        z_H, z_L = self._cycle(z_H, z_L, x, noise, generator, on_update, self.config.H_cycles, eps)
        return LatentState(z_H, z_L)

    def forward(self, state: LatentState, tokens: torch.Tensor, **kwargs) -> LatentState:
        """Same as :meth:`step` (so DDP and hooks can wrap the model)."""
        return self.step(state, tokens, **kwargs)

    def readout(self, state: LatentState) -> tuple[torch.Tensor, torch.Tensor]:
        """logits ``[B, L, vocab]`` from z_H, halting logit ``[B]`` from z_H of the first cell."""
        logits = self.lm_head(state.z_H)
        q = self.q_head(state.z_H[:, 0]).float()[..., 0]
        return logits, q

    def as_map(self, tokens: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The deterministic outer step as a flat map ``F: [N, 2 L D] -> [N, 2 L D]`` for the dynamics tools.

        tokens: ``[1, L]`` (one puzzle, broadcast over N) or ``[N, L]``. Noise is off and the full graph is kept
        (also in training mode), so F is a pure function whose Jacobian covers the whole outer step. Attention runs
        on the math kernel of ``scaled_dot_product_attention`` inside F: the fused kernels have no forward-mode or
        second derivatives (Jacobian-vector products and ``Linearization``), the math kernel is plain matmuls and a
        softmax.
        """
        x_fixed = self.embed(tokens.to(self.device)).detach()
        seq_len, hidden = self.config.seq_len, self.config.hidden_size
        # Detached views of the weights (same storage): F is a function of z alone, and its outputs carry no
        # autograd history back to the parameters.
        weights = {name: p.detach() for name, p in self.named_parameters()}

        def step_map(z: torch.Tensor) -> torch.Tensor:
            state = LatentState.unflatten(z, seq_len, hidden)
            x = x_fixed.expand(z.shape[0], -1, -1) if x_fixed.shape[0] == 1 else x_fixed
            kwargs = {"noise": False, "x": x.to(z.dtype), "grad_last_only": False}
            with sdpa_kernel(SDPBackend.MATH):
                return torch.func.functional_call(self, weights, (state, tokens), kwargs).flatten()

        return step_map

    def compiled_step(self) -> Callable[..., LatentState]:
        """:meth:`step` under ``torch.compile`` (dynamic shapes, so the rows that halt can leave the batch without a
        recompile), built once per model. Inductor fuses the norms, SwiGLU and damping around the matmuls; on one CPU
        thread it measured 1.16x-1.17x the eager forward at the shipped sizes and 0.93x-1.16x at the paper's
        (``benchmarks/bench_throughput.py --compile``), so measure it where it runs; results agree with :meth:`step`
        to float32 rounding, not bit for bit."""
        if getattr(self, "_compiled_step", None) is None:
            require_compiler(self.device)
            inner = torch.compile(self.step, dynamic=True)

            def step(state: LatentState, tokens: torch.Tensor, *, noise: bool = True,
                     generator: torch.Generator | None = None, **kwargs) -> LatentState:
                eps = self.draw_noise(state, generator) if noise and self.config.noise_scale > 0 else None
                return inner(state, tokens, noise=noise, eps=eps, **kwargs)  # no RNG call (graph break) inside

            self._compiled_step = step
        return self._compiled_step

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def update_names(H_cycles: int, L_cycles: int) -> list[str]:
    """Names of the inner updates of one outer step, in order: ``H{h}.L{l}`` (the l-th update of z_L in H-cycle h)
    and ``H{h}.H`` (the update of z_H closing it), 1-based. A single-stream model applies its module under the same
    names (z_L is z_H there)."""
    cycle = [*(f"L{l}" for l in range(1, L_cycles + 1)), "H"]
    return [f"H{h}.{u}" for h in range(1, H_cycles + 1) for u in cycle]


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; otherwise any torch device string."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def require_compiler(device: torch.device) -> None:
    """``torch.compile`` on a CPU builds C++ kernels: an :class:`InputError` up front when no compiler is on PATH
    (``$CXX``, ``g++``, ``clang++``), instead of a deep error at the first compiled call."""
    if device.type == "cpu" and not any(shutil.which(cxx) for cxx in (os.environ.get("CXX"), "g++", "clang++") if cxx):
        raise InputError("--compile on a CPU needs a C++ compiler for torch.compile's kernels (g++, clang++ or the "
                         "one $CXX names), and none is on PATH; install one or run without --compile")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op context elsewhere (CPU runs in float32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        device.type, enabled=False)
