"""The outer step replayed from CUDA graphs, on fixed-shape buckets of rows.

One outer step of a small reasoner is a few hundred short kernels (42 block applications at the shipped sizes), so
on a GPU its time can go to launching them rather than to running them. A CUDA graph records the step's kernels on
fixed buffers once and replays them with one launch. A rollout's batch shrinks as rows halt, and a graph has one
shape, so :class:`BucketedStep` keeps one graph per bucket of rows (powers of two up to the batch, see
:func:`bucket_sizes`): the active rows are copied into the smallest bucket that holds them, the bucket's step runs,
and the first rows of its output are the new state. Every operation of the model acts on one board, so the padding
rows never touch the real ones. The path noise is drawn eagerly from the rollout's generator, in the shapes the
eager step draws it (:meth:`EquilibriumReasoner.draw_noise`), so the noise is the same numbers as eager's.

Without ``capture`` (on a CPU) the same buckets and buffers run the step directly: the padding and noise logic is
the same code, checked on the CPU by the tests; the captured replay is checked on CUDA (``tests/test_gpu.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from attractorlab.errors import InputError
from attractorlab.model import EquilibriumReasoner, LatentState


def require_cuda_graphs(device: torch.device, states: str = "none") -> None:
    """An :class:`InputError` unless a rollout on ``device`` keeping ``states`` can replay CUDA graphs: they need a CUDA
    device, and they replay whole outer steps, so the states inside them (``states="cycles"``) cannot be kept."""
    if device.type != "cuda":
        raise InputError(f"CUDA graphs need a CUDA device; the model is on {device}")
    if states == "cycles":
        raise InputError("CUDA graphs replay whole outer steps: they cannot keep the states inside them "
                         "(states='cycles')")


def bucket_sizes(rows: int, smallest: int = 8) -> list[int]:
    """Bucket sizes for a batch of ``rows``: powers of two from ``smallest`` below ``rows``, then ``rows`` itself,
    ascending (so the padding is less than half of any bucket above the smallest)."""
    if rows < 1:
        raise InputError(f"a bucketed step needs at least one row, got {rows}")
    sizes, size = [], smallest
    while size < rows:
        sizes.append(size)
        size *= 2
    return [*sizes, rows]


class _Bucket:
    """The outer step on ``rows`` rows of static buffers: inputs are copied in, the step runs (or its CUDA graph is
    replayed) and the first rows of the outputs are copied out."""

    def __init__(self, model: EquilibriumReasoner, step_fn: Callable[..., LatentState], rows: int, noisy: bool,
                 capture: bool, pool: tuple | None) -> None:
        c = model.config
        shape = (rows, c.seq_len, c.hidden_size)
        options = {"device": model.device, "dtype": model.state_dtype}
        self.z_H, self.z_L, self.x = (torch.zeros(shape, **options) for _ in range(3))
        self.eps = [torch.zeros(shape, **options) for _ in model.update_names()] if noisy else None
        self.step_fn, self.graph = step_fn, None
        if capture:  # warm up on a side stream (allocator, lazy inits, compiled kernels), then record
            device = model.device
            # autocast as the caller set it, without its cache of cast weights (a cached cast would be freed when the
            # caller's autocast region ends while the graph still reads it)
            casts = torch.autocast(device.type, dtype=torch.get_autocast_dtype(device.type),
                                   enabled=torch.is_autocast_enabled(device.type), cache_enabled=False)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with casts, torch.cuda.stream(side):
                for _ in range(2):
                    self._run()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with casts, torch.cuda.graph(self.graph, pool=pool):
                self.out = self._run()

    def _run(self) -> LatentState:
        return self.step_fn(LatentState(self.z_H, self.z_L), None, noise=self.eps is not None, x=self.x,
                            eps=self.eps)

    def __call__(self, state: LatentState, x: torch.Tensor, eps: list[torch.Tensor] | None) -> LatentState:
        r = state.z_H.shape[0]
        self.z_H[:r].copy_(state.z_H)
        self.z_L[:r].copy_(state.z_L)
        self.x[:r].copy_(x)
        for static, drawn in zip(self.eps or (), eps or (), strict=True):
            static[:r].copy_(drawn)
        if self.graph is None:
            out = self._run()
        else:
            self.graph.replay()
            out = self.out
        return LatentState(out.z_H[:r].clone(), out.z_L[:r].clone())


class BucketedStep:
    """:meth:`EquilibriumReasoner.step` for rollouts of at most ``rows`` rows, run on fixed-shape buckets (CUDA
    graphs with ``capture``, built the first time a bucket is needed). Called like the step:
    ``step(state, tokens, noise=..., generator=..., x=...)``, with ``x`` (the embedded input of the active rows)
    required; ``tokens`` is not read. ``compile`` runs :func:`torch.compile` of the step inside the buckets."""

    def __init__(self, model: EquilibriumReasoner, rows: int, *, capture: bool = True, compile: bool = False) -> None:
        if capture:
            require_cuda_graphs(model.device)
        self.model, self.sizes, self.capture = model, bucket_sizes(rows), capture
        self.step_fn = torch.compile(model.step, dynamic=True) if compile else model.step
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.buckets: dict[tuple[int, bool], _Bucket] = {}

    def bucket(self, rows: int) -> int:
        """The smallest bucket size holding ``rows`` rows."""
        for size in self.sizes:
            if rows <= size:
                return size
        raise InputError(f"{rows} rows exceed this step's largest bucket of {self.sizes[-1]}")

    def __call__(self, state: LatentState, tokens: torch.Tensor | None = None, *, noise: bool = True,
                 generator: torch.Generator | None = None, x: torch.Tensor | None = None,
                 on_update: Callable | None = None) -> LatentState:
        if x is None or on_update is not None:
            raise InputError("a bucketed step needs the embedded input x and takes no on_update capture")
        noisy = noise and self.model.config.noise_scale > 0
        key = (self.bucket(state.z_H.shape[0]), noisy)
        if key not in self.buckets:
            self.buckets[key] = _Bucket(self.model, self.step_fn, key[0], noisy, self.capture, self.pool)
        eps = self.model.draw_noise(state, generator) if noisy else None
        return self.buckets[key](state, x, eps)


def graphed_step(model: EquilibriumReasoner, rows: int, compile: bool = False) -> BucketedStep:
    """The captured :class:`BucketedStep` of ``model`` for up to ``rows`` rows, kept on the model, so that later
    rollouts of the same batch replay the graphs recorded by the first (as :meth:`EquilibriumReasoner.compiled_step`
    keeps its compiled step); one kept for more rows serves fewer."""
    steps = model.__dict__.setdefault("_graphed_steps", {})
    for (largest, compiled), step in steps.items():
        if compiled == compile and largest >= rows:
            return step
    steps[rows, compile] = BucketedStep(model, rows, capture=True, compile=compile)
    return steps[rows, compile]
