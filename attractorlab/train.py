"""Segmented online training of the Equilibrium Reasoner (CPU, CUDA, and multi-GPU through torchrun / DDP).

Every optimizer step runs one outer step for each row of a persistent carry, computes stable-max
cross-entropy on every cell + 0.5 x BCE(halting logit, puzzle solved), steps the optimizer and detaches the
carry. A row is replaced by a fresh (augmented) puzzle when it halts (``q > 0`` with exploration) or reaches
``halt_max_steps``. Random draws that decide the data (which puzzles, their augmentation, initial states,
exploration) come from generators shared by all ranks, so a DDP run sees exactly the batches of a
single-process run with the same global batch; only the in-module path noise is per rank.

Two switches exist for the paper's ablation ladder: ``act=False`` drops the halting loss and runs every row for
``halt_max_steps`` segments; ``full_backprop=True`` back-propagates through every H-cycle of the outer step
(with ``halt_max_steps=1``: a weight-tied model trained without segments).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from attractorlab import checkpoint, seeds
from attractorlab.errors import AttractorlabError, InputError, make_parent_dirs
from attractorlab.model import EquilibriumReasoner, LatentState, ReasonerConfig, autocast, pick_device, require_compiler
from attractorlab.optim import AdamATan2
from attractorlab.rollout import accuracy_at_depths
from attractorlab.tasks import PuzzleSet, Task, get_task

PRESETS: dict[str, dict] = {
    "tiny": dict(model=dict(hidden_size=64, expansion=2.0, L_layers=2, H_cycles=2, L_cycles=2, halt_max_steps=8),
                 batch_size=64, lr=2e-3, warmup_steps=100, weight_decay=0.1, ema_decay=0.99, steps=1500,
                 n_train=2000, eval_every=250, checkpoint_every=250, eval_depths=(1, 4, 16)),
    "small": dict(model=dict(hidden_size=128, expansion=2.0, L_layers=2, H_cycles=2, L_cycles=3, halt_max_steps=8),
                  batch_size=64, lr=1.5e-3, warmup_steps=100, weight_decay=0.1, ema_decay=0.995, steps=4000,
                  n_train=20000, eval_every=500, checkpoint_every=100, eval_depths=(1, 4, 16, 64)),
    "paper": dict(model=dict(hidden_size=512, expansion=4.0, L_layers=2, H_cycles=3, L_cycles=6, halt_max_steps=16),
                  batch_size=768, lr=1e-4, warmup_steps=2000, weight_decay=1.0, ema_decay=0.999, steps=50000,
                  n_train=1000, augmentations=1000, eval_every=5000, checkpoint_every=1000, eval_depths=(1, 16, 64),
                  optimizer="adam-atan2", grad_clip=0.0),
    # Maze-Unique. maze-paper is the reference's eqr_maze_unique recipe (attention, 1-D RoPE, no augmentation).
    # The CPU presets mix cells with mlp_t as the Sudoku recipe does: an attention model with 2-D RoPE (hidden 64,
    # one layer) stayed at the all-open-cells-are-path plateau (cell loss 0.257 flat over 1,575 steps, 5 min),
    # while this mlp_t model passed it in 500 steps and reached 9% exact in 4 minutes on one core.
    "maze-tiny": dict(model=dict(task="maze11", mlp_t=True, pos_encodings="none", hidden_size=64, expansion=2.0,
                                 L_layers=1, H_cycles=2, L_cycles=2, halt_max_steps=8),
                      batch_size=32, lr=1e-3, warmup_steps=100, weight_decay=0.1, ema_decay=0.99, steps=1000,
                      n_train=4000, eval_every=250, checkpoint_every=250, eval_depths=(1, 4, 16), augment=False,
                      difficulty="reference"),
    "maze-small": dict(model=dict(task="maze11", mlp_t=True, pos_encodings="none", hidden_size=96, expansion=2.0,
                                  L_layers=1, H_cycles=2, L_cycles=3, halt_max_steps=8),
                       batch_size=32, lr=2e-3, warmup_steps=100, weight_decay=0.1, ema_decay=0.995, steps=24000,
                       lr_min_ratio=0.1, n_train=20000, eval_every=2000, checkpoint_every=500,
                       eval_depths=(1, 4, 16, 64), augment=False, difficulty="mixed"),
    "maze-paper": dict(model=dict(task="maze", mlp_t=False, pos_encodings="rope", hidden_size=128, num_heads=8,
                                  expansion=4.0, L_layers=1, H_cycles=3, L_cycles=4, halt_max_steps=16),
                       batch_size=768, lr=1e-4, warmup_steps=2000, weight_decay=1.0, ema_decay=0.999, steps=100000,
                       n_train=1000, eval_every=5000, checkpoint_every=1000, eval_depths=(1, 16, 64), augment=False,
                       difficulty="reference", optimizer="adam-atan2", grad_clip=0.0),
}


@dataclass
class TrainConfig:
    """Everything a training run needs; ``from_preset`` fills it, flags override fields."""

    model: ReasonerConfig = field(default_factory=ReasonerConfig)
    batch_size: int = 64  # global batch (split over DDP ranks)
    lr: float = 1e-4
    warmup_steps: int = 2000
    lr_min_ratio: float = 1.0  # cosine decay to lr * lr_min_ratio at the last step; 1.0 = constant (the reference)
    decay_start: int | None = None  # step where the decay begins (default: the end of warm-up)
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    steps: int = 1000
    seed: int = 0
    data: str | None = None  # a file the task loads (Sudoku: a Sudoku-Extreme CSV); None = the built-in generator
    difficulty: str = "mixed"  # generator difficulty for the training pool
    n_train: int = 1000  # puzzles in the training pool (each seen under random symmetry augmentation)
    n_eval: int = 200  # held-out puzzles
    augment: bool = True
    augmentations: int = 0  # K > 0: a fixed set of K augmented copies per puzzle + the original, drawn epoch by epoch
    eval_data: str | None = None  # the held-out set's file (e.g. the test split); None = carved from data / generated
    eval_every: int = 1000
    eval_depths: tuple[int, ...] = (1, 16, 64)
    checkpoint_every: int = 1000
    optimizer: str = "adamw"
    act: bool = True  # the halting head learns when to stop (ACT); False: every row runs halt_max_steps segments
    full_backprop: bool = False  # gradients through every H-cycle of the step (default: only the last, as reference)
    snapshot_every: int = 0  # keep the EMA weights every N steps as OUT.stepNNNNNNN.pt (0 = off)
    init: str | None = None  # warm start: weights (and EMA) from this checkpoint; optimizer and schedule start fresh

    def __post_init__(self) -> None:
        for name in ("batch_size", "steps", "n_train", "n_eval", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        inf = float("inf")
        if not (0 < self.lr < inf and self.warmup_steps >= 0 and 0 <= self.weight_decay < inf
                and 0 <= self.ema_decay < 1 and 0 <= self.grad_clip < inf):
            raise InputError("need a finite lr > 0, warmup_steps >= 0, a finite weight_decay >= 0, 0 <= ema_decay < 1 "
                             "and a finite grad_clip >= 0 (0: no clipping)")
        if not self.eval_depths or min(self.eval_depths) < 1:
            raise InputError(f"eval_depths must be positive integers, got {self.eval_depths!r}")
        if self.snapshot_every < 0:
            raise InputError(f"snapshot_every must be >= 0, got {self.snapshot_every}")
        if not 0 < self.lr_min_ratio <= 1:
            raise InputError(f"lr_min_ratio must be in (0, 1], got {self.lr_min_ratio!r}")
        if self.decay_start is not None and self.decay_start < 0:
            raise InputError(f"decay_start must be >= 0, got {self.decay_start!r}")
        if self.augmentations < 0 or (self.augmentations and not self.augment):
            raise InputError(f"augmentations must be >= 0 and needs augmentation on, got {self.augmentations} "
                             f"(augment={self.augment})")
        seeds.check_seed(self.seed)
        if self.optimizer not in ("adamw", "adam-atan2"):
            raise InputError(f"unknown optimizer {self.optimizer!r} (adamw or adam-atan2)")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TrainConfig:
        if name not in PRESETS:
            raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        preset = {k: v for k, v in PRESETS[name].items() if k != "model"}
        model_fields = {f.name for f in dataclasses.fields(ReasonerConfig)}
        model_over = {k: v for k, v in overrides.items() if k in model_fields}
        train_over = {k: v for k, v in overrides.items() if k not in model_fields}
        model = ReasonerConfig(**{**PRESETS[name]["model"], **model_over})
        return cls(model=model, **{**preset, **train_over})

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        out["betas"] = list(self.betas)
        out["eval_depths"] = list(self.eval_depths)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        values["model"] = ReasonerConfig.from_dict(values["model"])
        values["betas"] = tuple(values["betas"])
        values["eval_depths"] = tuple(values["eval_depths"])
        return cls(**values)


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on request (Ctrl-C, SIGTERM) at a step boundary, after checkpointing that step."""


class TrainingError(AttractorlabError):
    """Training stopped (e.g. a non-finite loss); the last good checkpoint is kept."""


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token stable-max cross-entropy in float64: s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0).

    logits: [..., V]; labels: [...] int -> loss [...]."""
    x = logits.double()
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    logp = torch.log(s / s.sum(-1, keepdim=True))
    return -logp.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, constant, then (if ``lr_min_ratio < 1``) a cosine decay from ``decay_start`` to
    ``lr * lr_min_ratio`` at the last step. The reference recipe is constant (``lr_min_ratio`` 1.0)."""
    lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    start = cfg.warmup_steps if cfg.decay_start is None else cfg.decay_start
    if cfg.lr_min_ratio >= 1.0 or step < start:
        return lr
    progress = min(1.0, (step - start) / max(1, cfg.steps - start))
    return lr * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


SCHEDULE_FIELDS = ("steps", "lr_min_ratio", "decay_start")
"""Fields a resumed run may change: they only shape the learning rate from the resume point on."""


# --- data -----------------------------------------------------------------------------------------------------

def load_data(cfg: TrainConfig, progress: bool = False) -> tuple[PuzzleSet, PuzzleSet]:
    """Training pool and held-out set (disjoint): the held-out set is ``eval_data`` when given (never carved from
    the training file then), otherwise generated or carved from ``data``; the pool is a seeded subsample of
    ``n_train`` puzzles of ``data`` (or generated)."""
    task = get_task(cfg.model.task)
    held = None
    if cfg.eval_data is not None:
        held = _labelled(task, cfg.eval_data)
        held = held[np.random.default_rng(seeds.stream(cfg.seed, "train.held_out")).permutation(len(held))[:cfg.n_eval]]
    if cfg.data is None:
        train = task.generate(cfg.n_train, seed=cfg.seed, difficulty=cfg.difficulty, progress=progress)
        if held is None:
            held = task.generate(cfg.n_eval, seed=seeds.stream(cfg.seed, "train.held_out"), difficulty=cfg.difficulty)
        return train, held
    puzzles = _labelled(task, cfg.data)
    group = puzzles.groups()  # [N]: copies of one puzzle (a reference split's augmentations) go together
    order = np.random.default_rng(cfg.seed).permutation(int(group.max()) + 1)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    rank = rank[group]  # [N]: the place of each row's puzzle in the seeded order
    skip = 0 if held is not None else cfg.n_eval
    if held is None:
        if len(order) < cfg.n_eval + 1:
            raise InputError(f"{cfg.data} has {len(order)} puzzles; need more than n_eval={cfg.n_eval}")
        first = np.unique(group, return_index=True)[1]  # one row (the first copy) of each held-out puzzle
        held_rows = first[rank[first] < cfg.n_eval]
        held = puzzles[held_rows[np.argsort(rank[held_rows])]]
    pool_rows = np.flatnonzero((rank >= skip) & (rank < skip + cfg.n_train))
    return puzzles[pool_rows[np.argsort(rank[pool_rows], kind="stable")]], held


def _labelled(task: Task, path: str) -> PuzzleSet:
    puzzles = task.check(task.load(path))
    if not len(puzzles) or not puzzles.known.all():
        raise InputError(f"{path}: training and evaluation need instances with solutions for every one")
    return puzzles


class PuzzleStream:
    """Endless stream of training puzzles: uniform draws from the pool, each under a fresh random symmetry."""

    def __init__(self, pool: PuzzleSet, seed: int, augment: bool, task: Task | str) -> None:
        self.pool, self.augment, self.task = pool, augment, get_task(task)
        self.rng = np.random.default_rng(seed)

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """-> tokens [n, L] uint8, targets [n, L] (the labels in the token encoding)."""
        idx = self.rng.integers(0, len(self.pool), size=n)
        tokens, solution = self.pool.tokens[idx], self.pool.solution[idx]
        if self.augment and n:
            tokens, solution = self.task.augment(tokens, solution, self.rng)
        return tokens, self.task.targets(solution)

    def state_dict(self) -> dict:
        return _np_state(self.rng)

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = _np_state_from(state)


class EpochStream:
    """The reference's data pipeline: every pool puzzle and ``copies`` fixed augmentations of it (made once, from
    ``seed``) form the examples ``[P * (copies + 1), L]``; they are drawn epoch by epoch without replacement, each
    epoch in its own seeded order, and a draw that crosses an epoch's end continues in the next epoch."""

    _CHUNK = 65536

    def __init__(self, pool: PuzzleSet, seed: int, copies: int, task: Task | str) -> None:
        self.task, self.seed = get_task(task), seed
        tokens = np.repeat(pool.tokens, copies + 1, axis=0)  # [P * (copies + 1), L]: puzzle p's rows together
        solution = np.repeat(pool.solution, copies + 1, axis=0)
        copy = np.flatnonzero(np.arange(len(tokens)) % (copies + 1))  # rows 1..copies of each puzzle
        rng = np.random.default_rng(seeds.stream(seed, "train.augmentations"))
        for lo in range(0, len(copy), self._CHUNK):
            rows = copy[lo:lo + self._CHUNK]
            tokens[rows], solution[rows] = self.task.augment(tokens[rows], solution[rows], rng)
        self.tokens, self.targets = tokens, self.task.targets(solution)
        self.epoch, self.pos = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(seeds.stream(self.seed, "train.epoch", epoch)).permutation(len(self.tokens))

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """-> tokens [n, L] uint8, targets [n, L]: the next ``n`` examples of the epoch order."""
        parts = []
        while n > 0:
            take = self._order[self.pos:self.pos + n]
            parts.append(take)
            self.pos += len(take)
            n -= len(take)
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
        idx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return self.tokens[idx], self.targets[idx]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._epoch_order(self.epoch)


# --- distributed helpers --------------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Read torchrun's environment; initialise NCCL (CUDA) or gloo (CPU) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), pick_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def _gather(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(d.world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


# --- the trainer ----------------------------------------------------------------------------------------------

def compile_blocks(model: EquilibriumReasoner) -> None:
    """Run each block of ``model`` under ``torch.compile`` (static shapes; one graph with gradients, one without),
    while the outer step around the blocks (damping, path noise, the H-/L-cycles) stays eager: ``train --compile`` on
    a CPU. Compiling the whole outer step made the training step slower than eager there, and the path noise would
    come from Inductor's generator instead of torch's (``benchmarks/bench_throughput.py --compile``, row
    ``train+c``). Weights, names and checkpoints are unchanged."""
    for block in model.layers:
        block.forward = functools.partial(_quiet_trace, torch.compile(block.forward, dynamic=False))


def _quiet_trace(compiled: Callable, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # Dynamo reads .grad of the (non-leaf) input while it traces
        warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf", UserWarning)
        return compiled(x)


class Trainer:
    """Holds model, optimizer, EMA, carry and RNG; ``train_step`` is one segmented step."""

    def __init__(self, cfg: TrainConfig, device: torch.device, dist_info: Dist | None = None,
                 pool: PuzzleSet | None = None, compile_model: bool = False) -> None:
        self.cfg, self.device, self.dist = cfg, device, dist_info or Dist()
        if cfg.batch_size % self.dist.world:
            raise InputError(f"batch_size {cfg.batch_size} is not divisible by the {self.dist.world} ranks")
        torch.manual_seed(cfg.seed)
        self.model = EquilibriumReasoner(cfg.model).to(device).train()
        torch.manual_seed(seeds.stream(cfg.seed, "train.noise", self.dist.rank))  # in-module path noise: per rank
        self.ddp = None
        if self.dist.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.net = self.ddp or self.model  # forward = one outer step
        if compile_model:
            require_compiler(device)
            if device.type == "cpu":
                compile_blocks(self.model)
            else:
                self.net = torch.compile(self.net)
        self.optimizer = self._make_optimizer()
        self.ema = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.step_count = 0
        self.pool = pool
        task = get_task(cfg.model.task)
        data_seed = seeds.stream(cfg.seed, "train.data")
        self.stream: PuzzleStream | EpochStream | None = None
        if pool is not None and cfg.augmentations:
            self.stream = EpochStream(pool, data_seed, cfg.augmentations, task)
        elif pool is not None:
            self.stream = PuzzleStream(pool, data_seed, cfg.augment, task)
        # shared by all ranks: initial states of refilled rows, halting exploration
        self.gen = torch.Generator(device=device).manual_seed(seeds.stream(cfg.seed, "train.carry"))
        b = cfg.batch_size // self.dist.world
        shape = (b, cfg.model.seq_len, cfg.model.hidden_size)
        dtype = self.model.state_dtype
        self.carry = LatentState(torch.zeros(shape, device=device, dtype=dtype),
                                 torch.zeros(shape, device=device, dtype=dtype))
        self.tokens = torch.ones(shape[:2], dtype=torch.long, device=device)
        self.labels = torch.ones(shape[:2], dtype=torch.long, device=device)
        self.steps = torch.zeros(b, dtype=torch.int32, device=device)
        self.halted = torch.ones(b, dtype=torch.bool, device=device)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        params, cfg = self.model.parameters(), self.cfg
        if cfg.optimizer == "adam-atan2":
            return AdamATan2(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    def _refill(self) -> None:
        """Replace halted rows (decided globally, identically on every rank) by fresh puzzles and states."""
        halted_all = _gather(self.halted, self.dist)
        n_new = int(halted_all.sum())
        if n_new == 0:
            return
        tokens, labels = self.stream.draw(n_new)
        with torch.no_grad():
            fresh = self.model.init_state(torch.as_tensor(tokens), generator=self.gen)
        z_H, z_L = fresh.z_H, fresh.z_L
        b = self.halted.numel()
        lo = self.dist.rank * b
        slot = torch.cumsum(halted_all.long(), 0) - 1  # which new puzzle each halted global row takes
        mine = self.halted.nonzero().flatten()
        take = slot[lo + mine].cpu()
        self.tokens[mine] = torch.as_tensor(tokens[take.numpy()], dtype=torch.long, device=self.device)
        self.labels[mine] = torch.as_tensor(labels[take.numpy()], dtype=torch.long, device=self.device)
        self.carry.z_H[mine] = z_H[take.to(self.device)]
        self.carry.z_L[mine] = z_L[take.to(self.device)]
        self.steps[mine] = 0

    def train_step(self) -> dict[str, float]:
        """One segmented step; returns metrics averaged over the global batch."""
        cfg, mc = self.cfg, self.cfg.model
        self._refill()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step_count, cfg)
        with autocast(self.device):
            state = self.net(self.carry, self.tokens, grad_last_only=not cfg.full_backprop)
            logits, q = self.model.readout(state)
        right = logits.argmax(-1) == self.labels  # [b, L]
        solved = right.all(-1)
        lm_sum = stablemax_cross_entropy(logits, self.labels).mean(-1).sum()  # float64
        q_sum = F.binary_cross_entropy_with_logits(q, solved.float(), reduction="sum").double()
        loss = (lm_sum + 0.5 * q_sum * cfg.act) / self.halted.numel()
        stats = torch.stack([lm_sum.detach(), q_sum.detach(), solved.sum().double(),
                             right.double().mean(-1).sum()])
        stats = _reduce_sum(stats, self.dist) / self.cfg.batch_size
        if not torch.isfinite(stats[:2]).all():
            raise TrainingError(f"non-finite loss at step {self.step_count} (lm {stats[0].item():.4g}, "
                                f"halt {stats[1].item():.4g}); training stopped, a checkpoint written before is kept")
        self.optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                self.ema[name].lerp_(p.detach(), 1 - cfg.ema_decay)
            self.carry = state.detach()
            self.steps += 1
            halted = self.steps >= mc.halt_max_steps
            if mc.halt_max_steps > 1 and cfg.act:
                b_all = self.cfg.batch_size
                explore = torch.rand(b_all, generator=self.gen, device=self.device) < mc.halt_exploration_prob
                min_steps = explore * torch.randint(2, mc.halt_max_steps + 1, (b_all,), generator=self.gen,
                                                    device=self.device)
                lo = self.dist.rank * self.halted.numel()
                min_steps = min_steps[lo:lo + self.halted.numel()]
                halted = (halted | (q.detach() > 0)) & (self.steps >= min_steps)
            self.halted = halted
        self.step_count += 1
        return {"lm_loss": stats[0].item(), "halt_loss": stats[1].item(), "exact": stats[2].item(),
                "cell_acc": stats[3].item()}

    def warm_start(self, path: str | os.PathLike) -> None:
        """Start from the weights of checkpoint ``path`` (its EMA weights, for the model and its EMA alike)."""
        payload = checkpoint.read(path)
        task = checkpoint.model_config(payload, path).task
        if task != self.cfg.model.task:
            raise InputError(f"{path} solves task {task!r}, this run trains {self.cfg.model.task!r}")
        checkpoint.load_weights(self.model, payload["model"], path)
        self.ema = {k: v.detach().clone() for k, v in self.model.named_parameters()}

    def ema_model(self) -> EquilibriumReasoner:
        """The EMA parameters with the trained model's buffers (TRM's start vectors)."""
        model = EquilibriumReasoner(self.cfg.model).to(self.device)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(self.ema[name])
            for name, buf in self.model.named_buffers():
                model.get_buffer(name).copy_(buf)
        return model.eval()

    # --- checkpoints ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue bit-for-bit (global carry gathered from all ranks)."""
        return {
            "config": self.cfg.to_dict(),
            "step": self.step_count,
            "params": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "ema": {k: v.cpu() for k, v in self.ema.items()},
            "stream_rng": self.stream.state_dict() if self.stream is not None else {},
            "gen": self.gen.get_state(),
            "torch_rng": _gather(torch.get_rng_state()[None], self.dist).cpu() if self.device.type == "cpu"
            else torch.get_rng_state()[None],
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.zeros(0),
            "carry": {"z_H": _gather(self.carry.z_H, self.dist).cpu(), "z_L": _gather(self.carry.z_L, self.dist).cpu(),
                      "tokens": _gather(self.tokens, self.dist).cpu(), "labels": _gather(self.labels, self.dist).cpu(),
                      "steps": _gather(self.steps, self.dist).cpu(), "halted": _gather(self.halted, self.dist).cpu()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["params"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.step_count = int(state["step"])
        if self.stream is not None:
            self.stream.load_state_dict(state["stream_rng"])
        self.gen.set_state(state["gen"])
        rng = state["torch_rng"]
        torch.set_rng_state(rng[self.dist.rank] if rng.shape[0] > self.dist.rank else rng[0])
        if self.device.type == "cuda" and state["cuda_rng"].numel():
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        b = self.halted.numel()
        sl = slice(self.dist.rank * b, (self.dist.rank + 1) * b)
        c = state["carry"]
        self.carry = LatentState(c["z_H"][sl].to(self.device), c["z_L"][sl].to(self.device))
        self.tokens, self.labels = c["tokens"][sl].to(self.device), c["labels"][sl].to(self.device)
        self.steps, self.halted = c["steps"][sl].to(self.device), c["halted"][sl].to(self.device)

    def save(self, path: str | os.PathLike, meta: dict | None = None) -> None:
        """Atomic checkpoint: EMA weights as the model (what users load) + the full training state."""
        train_state = self.state_dict()
        if self.dist.main:
            checkpoint.save(self.ema_model(), path, meta=meta, train_state=train_state)
        if self.dist.world > 1:
            dist.barrier()


def _any_rank(flag: bool, device: torch.device, d: Dist) -> bool:
    """``flag`` or'ed over the ranks, so that every rank stops at the same step."""
    if d.world == 1:
        return bool(flag)
    return bool(_reduce_sum(torch.tensor([float(flag)], device=device), d).item() > 0)


def _reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t)
    return t


def _np_state(rng: np.random.Generator) -> dict:
    st = rng.bit_generator.state
    return {"bit_generator": st["bit_generator"], "state": str(st["state"]["state"]), "inc": str(st["state"]["inc"]),
            "has_uint32": st["has_uint32"], "uinteger": st["uinteger"]}


def _np_state_from(d: dict) -> dict:
    return {"bit_generator": d["bit_generator"], "state": {"state": int(d["state"]), "inc": int(d["inc"])},
            "has_uint32": d["has_uint32"], "uinteger": d["uinteger"]}


def snapshot_path(out: str | os.PathLike, step: int) -> Path:
    """Where ``--snapshot-every`` keeps the EMA weights of step ``step``: ``OUT.stepNNNNNNN.pt`` beside ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.step{step:07d}{out.suffix or '.pt'}")


def train(cfg: TrainConfig, out: str | os.PathLike, *, device: str = "auto", resume: bool = False,
          steps: int | None = None, progress: bool = True, compile_model: bool = False,
          schedule: dict | None = None, stop: Callable[[], bool] | None = None) -> dict:
    """Run (or resume) training, checkpointing atomically to ``out``; returns the final metrics.

    On resume the configuration stored in ``out`` is used; ``steps`` may extend the run and ``schedule`` (keys in
    :data:`SCHEDULE_FIELDS`) may change the learning-rate schedule from the resume point on, e.g. start a decay.
    ``stop`` is asked after every step (the CLI's answer: was Ctrl-C or SIGTERM received?); once it says yes on any
    rank, that step is checkpointed and :class:`TrainingStopped` raised, so ``resume=True`` continues from it.
    """
    from tqdm import tqdm

    dist_info, dev = init_distributed(device)
    out = Path(out)
    payload = None
    if resume:
        payload = checkpoint.read(out)
        if "train_state" not in payload:
            raise InputError(f"{out} holds no training state to resume from")
        cfg = TrainConfig.from_dict(payload["train_state"]["config"])
    schedule = {k: v for k, v in (schedule or {}).items() if v is not None}
    if steps is not None:
        schedule["steps"] = steps
    unknown = set(schedule) - set(SCHEDULE_FIELDS)
    if unknown:
        raise InputError(f"only {', '.join(SCHEDULE_FIELDS)} may change on resume, not {', '.join(sorted(unknown))}")
    cfg = dataclasses.replace(cfg, **schedule)
    if payload is not None and cfg.steps < int(payload["train_state"]["step"]):
        raise InputError(f"{out} is already at step {payload['train_state']['step']}, past --steps {cfg.steps}")
    make_parent_dirs(out)  # before any training: a checkpoint that cannot be written would lose it
    if compile_model:
        require_compiler(dev)
    pool, held = load_data(cfg, progress and dist_info.main)
    trainer = Trainer(cfg, dev, dist_info, pool, compile_model=compile_model)
    if payload is not None:
        trainer.load_state_dict(payload["train_state"])
    elif cfg.init:
        trainer.warm_start(cfg.init)
    held_tok = torch.as_tensor(held.tokens, dtype=torch.long)
    held_sol = torch.as_tensor(held.solution)
    meta = {"train_command": os.environ.get("ATTRACTORLAB_COMMAND", ""),
            "data": cfg.data or f"generated:{cfg.difficulty}", "n_train": cfg.n_train,
            "eval_data": cfg.eval_data or ("carved from the training data" if cfg.data else "generated"),
            "init": cfg.init or ""}
    bar = tqdm(total=cfg.steps, initial=trainer.step_count, disable=not (progress and dist_info.main),
               dynamic_ncols=True, unit="step")
    metrics: dict = {}
    evals: dict = dict(payload["meta"].get("evals", {})) if payload else {}
    t0, start_step = time.time(), trainer.step_count
    while trainer.step_count < cfg.steps:
        metrics = trainer.train_step()
        step = trainer.step_count
        rate = (step - start_step) * cfg.batch_size / max(time.time() - t0, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['lm_loss']:.3f}", cell=f"{metrics['cell_acc']:.3f}",
                        exact=f"{metrics['exact']:.3f}", pz_s=f"{rate:.0f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc = accuracy_at_depths(trainer.ema_model(), held_tok, held_sol, list(cfg.eval_depths), seed=cfg.seed)
            evals[str(step)] = {str(k): v for k, v in acc.items()}
            if dist_info.main:
                bar.write(f"step {step}: held-out exact accuracy " +
                          ", ".join(f"D{k}={v:.3f}" for k, v in acc.items()))
        stopping = stop is not None and _any_rank(stop(), dev, dist_info)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping:
            elapsed = float(payload["meta"].get("train_seconds", 0.0)) if payload else 0.0
            trainer.save(out, meta={**meta, "evals": evals, "step": step,
                                    "train_seconds": elapsed + time.time() - t0})
        if cfg.snapshot_every and step % cfg.snapshot_every == 0 and dist_info.main:
            checkpoint.save(trainer.ema_model(), snapshot_path(out, step),
                            meta={**meta, "step": step, "evals": dict(evals)})
        if stopping:
            bar.close()
            raise TrainingStopped(f"stopped at step {step} of {cfg.steps}; {out} holds that step (continue it with "
                                  "--resume)")
    bar.close()
    return {"metrics": metrics, "evals": evals, "step": trainer.step_count}
