"""Throughput of the outer step against the hardware's matmul rate and a reference-style forward, in one process.

    .venv/bin/python benchmarks/bench_throughput.py                      # shipped sizes, CPU
    .venv/bin/python benchmarks/bench_throughput.py --sizes shipped,paper --device cuda

Prints, side by side: the dense matmul rate (fp32 on CPU, bf16 on CUDA), then for each model size and token-mixing
variant the rollout forward (one outer step, inference, path noise on) and the training step (forward with the
gradient through the last H-cycle, stable-max loss, backward, AdamW, EMA), in puzzle-steps/s and in GFLOP/s (matmul
FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``, with the attention kernel's ``Q K^T`` and ``P V``,
which torch counts on CUDA only, counted on the CPU too) with their fraction of the matmul rate, and the same forward
written in the reference's block order (``reference_step``: the ``mlp_t`` block on transposed ``[B, D, L]`` boards,
weights cast at every call) on the same weights, as a ratio. With ``--compile`` the forward and the training step are
also timed under ``torch.compile`` (rows ``forward+c``, ``train+c``; the training step as ``train --compile`` runs
it: on a CPU, each block compiled), each in turn with its eager row. On CUDA, row ``forward+g`` replays the step from
a CUDA graph (``rollout(cuda_graphs=True)``; ``forward+gc`` the compiled step's graph). For attention, row ``attn-core``
times the attention kernel alone (as often as a step calls it, same shapes) and ``fwd-bound`` is the forward's
ceiling if everything but that kernel ran at the matmul rate. Timings alternate between the forwards and a dense
matmul and report medians, so background load and clock changes hit them alike and each fraction compares the step
with the matmul rate of the same minutes (this VM's rate moves by 2x between runs).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from attractorlab.graphed import BucketedStep
from attractorlab.model import EquilibriumReasoner, LatentState, ReasonerConfig, pick_device, rope_tables, rotate_half
from attractorlab.runtime import HUGE_PAGES, tune_cpu_memory
from attractorlab.tasks import get_task
from attractorlab.train import TrainConfig, Trainer

SIZES = {
    "shipped": {
        "mlp_t": dict(task="sudoku", mlp_t=True, hidden_size=128, expansion=2.0, L_layers=2, H_cycles=2, L_cycles=3),
        "attention": dict(task="maze11", mlp_t=False, pos_encodings="rope2d", hidden_size=128, num_heads=8,
                          expansion=2.0, L_layers=2, H_cycles=2, L_cycles=3),
    },
    "paper": {
        "mlp_t": dict(task="sudoku", mlp_t=True, hidden_size=512, expansion=4.0, L_layers=2, H_cycles=3, L_cycles=6),
        "attention": dict(task="maze", mlp_t=False, pos_encodings="rope", hidden_size=128, num_heads=8,
                          expansion=4.0, L_layers=1, H_cycles=3, L_cycles=4),
    },
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_op(device: torch.device, n: int) -> Callable[[], torch.Tensor]:
    """A dense ``n^3`` matmul (fp32 on CPU, bf16 on CUDA) as a callable, warmed up; ``2 n^3`` FLOPs a call."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return lambda: a @ b


# --- the reference's block order, restated on attractorlab's weights -------------------------------------------

def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))  # CastedLinear


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    return (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)).to(dtype)


def _swiglu(x: torch.Tensor, mlp) -> torch.Tensor:
    gate, up = _linear(x, mlp.gate_up_proj.weight).chunk(2, dim=-1)
    return _linear(F.silu(gate) * up, mlp.down_proj.weight)


@functools.lru_cache(maxsize=8)
def _rope_tables(head_dim: int, n: int, theta: float, board: tuple[int, int] | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's cos / sin tables ``[L, 1, head_dim]``, built once (as its model builds them at start-up)."""
    return tuple(t.to(device)[:, None, :] for t in rope_tables(head_dim, n, theta, board))


def _attention(x: torch.Tensor, attn, c: ReasonerConfig) -> torch.Tensor:
    b, n, _ = x.shape
    qkv = _linear(x, attn.qkv_proj.weight).view(b, n, 3 * attn.num_heads, attn.head_dim)
    q, k, v = qkv.split(attn.num_heads, dim=2)
    if attn.cos is not None:
        board = (c.board_height, c.board_width) if attn.two_d else None
        cos, sin = _rope_tables(attn.head_dim, n, c.rope_theta, board, x.device)
        if attn.two_d:  # each half of a head is rotated by its own axis
            half = attn.head_dim // 2
            q, k = (torch.cat([p[..., :half] * cos[..., :half] + rotate_half(p[..., :half]) * sin[..., :half],
                               p[..., half:] * cos[..., half:] + rotate_half(p[..., half:]) * sin[..., half:]], -1)
                    for p in (q.float(), k.float()))
        else:
            q, k = (p.float() * cos + rotate_half(p.float()) * sin for p in (q, k))
        q, k = q.to(v.dtype), k.to(v.dtype)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return _linear(y.transpose(1, 2).reshape(b, n, -1), attn.o_proj.weight)


def _attention_core(model: EquilibriumReasoner, batch: int, x: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
    """The attention kernel alone, as often as one outer step calls it, on random heads-first queries, keys and
    values of the step's shapes."""
    c, attn = model.config, model.layers[0].self_attn
    q, k, v = torch.randn(3, batch, attn.num_heads, c.seq_len, attn.head_dim, device=x.device, dtype=x.dtype)
    return lambda: [F.scaled_dot_product_attention(q, k, v) for _ in range(c.layer_equivalents_per_step)]


def reference_step(model: EquilibriumReasoner, state: LatentState, x: torch.Tensor) -> LatentState:
    """One outer step in the reference's order (``Blocks``/``Block`` of models/eqr.py), noise off."""
    c = model.config

    def module(z: torch.Tensor, injection: torch.Tensor) -> torch.Tensor:
        h = z + injection
        for layer in model.layers:
            if c.mlp_t:
                h = h.transpose(1, 2)
                h = _rms(h + _swiglu(h, layer.mlp_t), c.rms_norm_eps).transpose(1, 2)
            else:
                h = _rms(h + _attention(h, layer.self_attn, c), c.rms_norm_eps)
            h = _rms(h + _swiglu(h, layer.mlp), c.rms_norm_eps)
        return (1 - c.lambda_) * z + c.lambda_ * h

    z_H, z_L = state.z_H, state.z_L
    for _ in range(c.H_cycles):
        for _ in range(c.L_cycles):
            z_L = module(z_L, z_H + x)
        z_H = module(z_H, z_L)
    return LatentState(z_H, z_L)


# --- measurements ----------------------------------------------------------------------------------------------

CPU_ATTENTION_FLOPS = {  # torch's own attention formulas, registered by it for the CUDA kernels only
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_backward_flop_count(grad, q, k, v),
}


def _flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        fn()
    return counter.get_total_flops()


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _row(name: str, variant: str, step: str, batch: int, seconds: float, flops: float, peak: float,
         ratio: str = "") -> str:
    rate = batch / seconds
    return (f"{name:<8} {variant:<10} {step:<9} {batch:>5} {rate:>10.1f} {flops / 1e9:>8.3f} "
            f"{rate * flops / 1e9:>9.1f} {peak:>8.1f} {rate * flops / 1e9 / peak:>6.2f} {ratio:>10}")


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each callable over ``repeats`` rounds that call them in turn, so that background load and
    clock changes hit every one alike (the matmul among them gives the rate of the same window)."""
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(_timed(fn, device))
    return {key: statistics.median(v) for key, v in times.items()}


def measure(name: str, variant: str, settings: dict, args: argparse.Namespace, device: torch.device,
            matmul: Callable[[], torch.Tensor], matmul_flops: float) -> list[str]:
    torch.manual_seed(args.seed)
    task = get_task(settings["task"])
    batch = args.batch if name == "shipped" else args.paper_batch
    cfg = ReasonerConfig(**settings)
    model = EquilibriumReasoner(cfg).to(device).eval()
    pool = task.generate(batch, seed=args.seed)
    tokens = torch.as_tensor(pool.tokens, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    lines = []
    with torch.inference_mode():
        state = model.init_state(tokens, generator=gen)
        x = model.embed(tokens)
        if x.dtype == torch.float32:  # the two orders compute the same step up to float32 summation order
            torch.testing.assert_close(reference_step(model, state, x).z_H,
                                       model.step(state, tokens, noise=False, x=x).z_H, rtol=1e-4, atol=1e-4)
        forwards = {"forward": lambda: model.step(state, tokens, generator=gen, x=x),
                    "ref": lambda: reference_step(model, state, x)}
        if args.compile:
            compiled = model.compiled_step()
            forwards["forward+c"] = lambda: compiled(state, tokens, generator=gen, x=x)
        if device.type == "cuda":  # the step replayed from a CUDA graph, as rollout(cuda_graphs=True) runs it
            graphed = {"forward+g": BucketedStep(model, batch)}
            if args.compile:
                graphed["forward+gc"] = BucketedStep(model, batch, compile=True)
            for key, step in graphed.items():
                forwards[key] = functools.partial(step, state, tokens, generator=gen, x=x)
        parts = {} if cfg.mlp_t else {"attn-core": _attention_core(model, batch, x)}
        flops = _flops(forwards["forward"]) / batch
        for fn in (forwards | parts).values():
            fn()
        t = _interleaved(forwards | parts | {"matmul": matmul}, args.repeats, device)
    peak = matmul_flops / t["matmul"] / 1e9
    for key in forwards.keys() - {"ref"}:
        lines.append(_row(name, variant, key, batch, t[key], flops, peak, f"{t['ref'] / t[key]:.2f}x"))
    if parts:  # the forward's ceiling if all but the attention kernel ran at the matmul rate
        core_flops = _flops(parts["attn-core"]) / batch
        lines.append(_row(name, variant, "attn-core", batch, t["attn-core"], core_flops, peak))
        bound = t["attn-core"] + (flops - core_flops) * batch / (peak * 1e9)
        lines.append(_row(name, variant, "fwd-bound", batch, bound, flops, peak))
    train_cfg = TrainConfig(model=cfg, batch_size=batch, n_train=batch, augment=False, warmup_steps=0)
    steps = {label: Trainer(train_cfg, device, pool=pool, compile_model=compiled).train_step
             for label, compiled in (("train", False), ("train+c", True))[:1 + args.compile]}
    for step in steps.values():
        step()
    step_flops = _flops(steps["train"]) / batch  # counted on the eager step (the compiled one does the same matmuls)
    t = _interleaved(steps | {"matmul": matmul}, args.repeats, device)
    for label in steps:
        lines.append(_row(name, variant, label, batch, t[label], step_flops, matmul_flops / t["matmul"] / 1e9))
    return sorted(lines, key=lambda line: line.split()[2])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="shipped", help="comma-separated: shipped (the CPU models), paper")
    p.add_argument("--variants", default="mlp_t,attention", help="comma-separated token-mixing variants")
    p.add_argument("--batch", type=int, default=64, help="puzzles per step at the shipped sizes")
    p.add_argument("--paper-batch", type=int, default=8, help="puzzles per step at the paper's sizes")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (medians are reported)")
    p.add_argument("--matmul-n", type=int, help="size of the dense matmul (default: 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto, ...")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    p.add_argument("--malloc", choices=("retain", "system"), default="retain",
                   help="retain: keep freed memory for reuse and back big tensors by huge pages (attractorlab.runtime, "
                        "what the CLI does); system: glibc's and torch's defaults (the baseline of those settings)")
    p.add_argument("--compile", action="store_true",
                   help="also time the torch.compile'd forward (forward+c) and training step (train+c)")
    args = p.parse_args(argv)
    if args.malloc == "retain" and not tune_cpu_memory(rerun=argv is None):  # a script starts again for huge pages
        p.error("--malloc retain needs glibc's malloc (Linux); use --malloc system")
    if args.malloc == "system" and os.environ.get(HUGE_PAGES):
        p.error(f"--malloc system: unset {HUGE_PAGES} first")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    n = args.matmul_n or (8192 if device.type == "cuda" else 2048)
    matmul, matmul_flops = matmul_op(device, n), 2 * n**3
    dtype = "bf16" if device.type == "cuda" else "fp32"
    start = matmul_flops / min(_timed(matmul, device) for _ in range(5)) / 1e9
    huge = f", {HUGE_PAGES}={os.environ.get(HUGE_PAGES, '')}"
    print(f"{device}, {torch.get_num_threads()} threads, malloc {args.malloc}{huge}: dense {n}^3 {dtype} matmul "
          f"{start:.1f} GFLOP/s at the start (best of 5); each row's fraction uses the median matmul rate timed in "
          "turn with that row's repeats (mm)")
    print(f"{'size':<8} {'variant':<10} {'step':<9} {'batch':>5} {'puzzle-st/s':>10} {'GFLOP/pz':>8} "
          f"{'GFLOP/s':>9} {'mm':>8} {'/mm':>6} {'vs ref':>10}")
    for name in args.sizes.split(","):
        for variant in args.variants.split(","):
            for line in measure(name, variant, SIZES[name][variant], args, device, matmul, matmul_flops):
                print(line, flush=True)

if __name__ == "__main__":
    main()
