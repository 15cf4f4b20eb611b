"""Weight tying vs a feedforward stack of the same layer-equivalents, trained with the same budget.

The Equilibrium Reasoner applies one shared module ``H_cycles x (L_cycles + 1)`` times per outer step and is
trained segment by segment; the baseline is a stack of as many *distinct* blocks, applied once per puzzle
and trained on the same data, steps and batch size. Both are evaluated on the same held-out puzzles; the
reasoner also at depths beyond one outer step (same weights, more test-time compute).

    .venv/bin/python benchmarks/bench_weight_tying.py --steps 600
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from attractorlab import seeds, sudoku
from attractorlab.model import Block, Linear, ReasonerConfig
from attractorlab.rollout import RolloutConfig, rollout
from attractorlab.train import PuzzleStream, TrainConfig, Trainer, lr_at, stablemax_cross_entropy


class FeedforwardStack(nn.Module):
    """``n_blocks`` untied blocks over the embedded puzzle, then the same readout as the reasoner."""

    def __init__(self, config: ReasonerConfig, n_blocks: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList([Block(config) for _ in range(n_blocks)])
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.scale = config.hidden_size**0.5

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.scale * self.embed(tokens.long())
        for block in self.blocks:
            h = block(h)
        return self.lm_head(h)


def train_feedforward(cfg: TrainConfig, pool: sudoku.PuzzleSet) -> nn.Module:
    torch.manual_seed(cfg.seed)
    model = FeedforwardStack(cfg.model, cfg.model.layer_equivalents_per_step)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(
        cfg.ema_decay))  # evaluated with EMA weights, like the reasoner
    stream = PuzzleStream(pool, seeds.stream(cfg.seed, "train.data"), cfg.augment, cfg.model.task)
    for step in range(cfg.steps):
        tokens, labels = stream.draw(cfg.batch_size)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = stablemax_cross_entropy(model(torch.as_tensor(tokens)), torch.as_tensor(labels)).mean()
        opt.zero_grad()
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update_parameters(model)
    return ema.module.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="model/optimizer preset for both models")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps for each model")
    parser.add_argument("--n-eval", type=int, default=200, help="held-out puzzles")
    parser.add_argument("--depths", default="1,4,16,64", help="reasoner evaluation depths")
    parser.add_argument("--eval-difficulty", help="difficulty of the held-out puzzles (default: the training mix)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    cfg = TrainConfig.from_preset(args.preset, steps=args.steps, seed=args.seed)
    pool = sudoku.generate(cfg.n_train, seed=cfg.seed, difficulty=cfg.difficulty)
    held = sudoku.generate(args.n_eval, seed=cfg.seed + 1_000_003, difficulty=args.eval_difficulty or cfg.difficulty)
    tok, sol = torch.as_tensor(held.tokens, dtype=torch.long), torch.as_tensor(held.solution)

    t0 = time.time()
    trainer = Trainer(cfg, torch.device("cpu"), pool=pool)
    for _ in range(cfg.steps):
        trainer.train_step()
    t_tied = time.time() - t0
    depths = [int(d) for d in args.depths.split(",")]
    res = rollout(trainer.ema_model(), tok, sol, RolloutConfig(depth=max(depths), seed=args.seed))
    blank = held.tokens == sudoku.BLANK  # [n, 81]: cells the model has to fill in

    t0 = time.time()
    ff = train_feedforward(cfg, pool)
    t_ff = time.time() - t0
    with torch.no_grad():
        pred = sudoku.TASK.answer(ff(tok)).numpy()
    ff_acc = float((pred == held.solution).all(-1).mean())

    n_layers = cfg.model.layer_equivalents_per_step
    print(f"preset {args.preset}, {cfg.steps} steps x batch {cfg.batch_size}, {args.n_eval} held-out "
          f"{args.eval_difficulty or cfg.difficulty} puzzles; exact accuracy and accuracy on the blank cells")
    print(f"  feedforward stack, {n_layers} untied blocks{'':<10} exact {ff_acc:.3f}  blank cells "
          f"{(pred == held.solution)[blank].mean():.3f}  (train {t_ff:.0f} s)")
    for d in depths:
        p = res.pred[:, 0, d - 1]
        print(f"  weight-tied reasoner, depth {d:>4} ({d * n_layers:>4} layer-eq.) exact "
              f"{(p == held.solution).all(-1).mean():.3f}  blank cells {(p == held.solution)[blank].mean():.3f}"
              f"  (train {t_tied:.0f} s)")


if __name__ == "__main__":
    main()
