"""The ``attractorlab`` command line: one sub-command per job, a clear one-line error on bad input."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Sequence

from attractorlab import __version__
from attractorlab.errors import InputError, check_output_file, make_dirs
from attractorlab.seeds import check_seed


def _int_list(text: str) -> tuple[int, ...]:
    """argparse type of a comma-separated list of integers (``1,16,64``)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,16,64, got {text!r}") from None


def _check_out(args: argparse.Namespace, what: str) -> None:
    """``--out`` of a command with ``--resume`` and ``--overwrite``: writable, and an existing file never replaced
    by accident."""
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite exclude each other")
    check_output_file(args.out, what)
    if os.path.exists(args.out) and not (args.resume or args.overwrite):
        raise InputError(f"{args.out} exists: pass --resume to continue it or --overwrite to replace it")


def _model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (override the preset)")
    g.add_argument("--hidden-size", type=int, dest="hidden_size", help="latent width D")
    g.add_argument("--num-heads", type=int, dest="num_heads", help="attention heads (attention variant only)")
    g.add_argument("--expansion", type=float, help="SwiGLU expansion factor")
    g.add_argument("--L-layers", type=int, dest="L_layers", help="blocks in the shared module")
    g.add_argument("--H-cycles", type=int, dest="H_cycles", help="H-cycles per outer step")
    g.add_argument("--L-cycles", type=int, dest="L_cycles", help="z_L updates per H-cycle")
    g.add_argument("--attention", dest="mlp_t", action="store_false", default=None,
                   help="mix tokens with self-attention + RoPE instead of the MLP across cells (mlp_t)")
    g.add_argument("--pos-encodings", dest="pos_encodings", choices=["rope", "rope2d", "none"],
                   help="position encoding of the attention variant")
    g.add_argument("--halt-max-steps", type=int, dest="halt_max_steps", help="outer steps before a forced halt")
    g.add_argument("--halt-exploration-prob", type=float, dest="halt_exploration_prob",
                   help="probability of a random minimum number of steps before halting")
    g.add_argument("--lambda", type=float, dest="lambda_", help="damping lambda of the update (paper: 0.95)")
    g.add_argument("--noise-scale", type=float, dest="noise_scale", help="path-noise std per update (paper: 0.01)")
    g.add_argument("--initial-state", dest="initial_state", choices=["random", "fixed"],
                   help="random: a fresh truncated normal per row (EqR); fixed: two stored vectors H_init, L_init "
                   "(TRM)")
    g.add_argument("--trm", action="store_true", default=None,
                   help="the TRM baseline: --lambda 1 --noise-scale 0 --initial-state fixed (other flags override)")
    g.add_argument("--single-stream", dest="hierarchical", action="store_false", default=None,
                   help="one latent stream instead of z_H / z_L (an ablation rung)")


def _task_names() -> list[str]:
    from attractorlab.tasks import names

    return names()


def add_train(p: argparse.ArgumentParser) -> None:
    from attractorlab.train import PRESETS

    p.add_argument("--preset", default="tiny", choices=list(PRESETS),
                   help="Sudoku: tiny (~10 min on 2 CPU cores), small (the shipped CPU model), paper (the EqR GPU "
                   "recipe); Maze-Unique: maze-tiny (11 x 11, a few minutes), maze-small (11 x 11, the shipped CPU "
                   "model), maze-paper (30 x 30, the reference recipe, GPU)")
    p.add_argument("--out", default="checkpoints/run.pt", help="checkpoint file (written atomically)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out exactly where it stopped (only --steps, --lr-min-ratio and "
                   "--decay-start may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run even though --out exists (its checkpoint is replaced at the first save)")
    p.add_argument("--steps", type=int, help="optimizer steps in total")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="global batch size (split over DDP ranks)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, dest="warmup_steps", help="linear warm-up steps")
    p.add_argument("--lr-min-ratio", type=float, dest="lr_min_ratio",
                   help="cosine-decay the learning rate to lr x this at the last step (default 1.0: constant)")
    p.add_argument("--decay-start", type=int, dest="decay_start",
                   help="step where the decay begins (default: end of warm-up); with --resume it may start a decay "
                   "from the current step on")
    p.add_argument("--weight-decay", type=float, dest="weight_decay", help="AdamW weight decay")
    p.add_argument("--ema-decay", type=float, dest="ema_decay", help="EMA decay of the shipped weights")
    p.add_argument("--grad-clip", type=float, dest="grad_clip", help="gradient-norm clip (0 = off)")
    p.add_argument("--optimizer", choices=["adamw", "adam-atan2"],
                   help="adam-atan2: the reference's optimizer (bounded atan2 steps, decoupled weight decay; plain "
                   "torch, the default of the paper preset); adamw: the default of tiny and small")
    p.add_argument("--task", choices=_task_names(), help="what to train on (default: sudoku)")
    p.add_argument("--data", help="training data the task reads (Sudoku: a Sudoku-Extreme-layout CSV, .csv or "
                   ".csv.gz, or a reference dataset split directory); default: the task's built-in generator")
    p.add_argument("--difficulty", help="difficulty of generated training instances (Sudoku: mixed, singles, search; "
                   "maze: reference, short, long, mixed)")
    p.add_argument("--eval-data", dest="eval_data",
                   help="held-out instances (e.g. the reference's test split); default: generated, or carved from "
                   "--data")
    p.add_argument("--n-train", type=int, dest="n_train", help="puzzles in the training pool")
    p.add_argument("--augmentations", type=int,
                   help="K > 0: a fixed set of K augmented copies per pool puzzle plus the original, drawn epoch by "
                   "epoch without replacement (the reference pipeline; paper: 1000); 0: a fresh random symmetry "
                   "per draw")
    p.add_argument("--n-eval", type=int, dest="n_eval", help="held-out puzzles evaluated periodically")
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                     help="train with the task's symmetry augmentation, a fresh random symmetry per draw (on in "
                     "the Sudoku presets; off in the maze presets, as the reference trains mazes)")
    aug.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                     help="train without symmetry augmentation")
    p.add_argument("--eval-every", type=int, dest="eval_every", help="steps between held-out evaluations")
    p.add_argument("--eval-depths", type=_int_list, dest="eval_depths",
                   help="comma-separated depths for held-out accuracy, e.g. 1,16,64")
    p.add_argument("--checkpoint-every", type=int, dest="checkpoint_every", help="steps between checkpoints")
    p.add_argument("--snapshot-every", type=int, dest="snapshot_every",
                   help="also keep the EMA weights every N steps as OUT.stepNNNNNNN.pt (for the attractor landscape "
                   "across training; default 0: off)")
    p.add_argument("--init", help="warm start: begin from this checkpoint's weights (same task and architecture; "
                   "optimizer, schedule and step count start fresh), e.g. to fine-tune a shipped model")
    p.add_argument("--seed", type=int, help="random seed (data, init, noise)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--compile", dest="compile_model", action="store_true",
                   help="torch.compile: on CUDA the outer step; on a CPU each block (the cycles around them "
                        "stay eager), after a compile of some seconds; needs a C++ compiler")
    p.add_argument("--no-act", dest="act", action="store_false", default=None,
                   help="no halting loss: every row runs --halt-max-steps segments (an ablation rung)")
    p.add_argument("--full-backprop", dest="full_backprop", action="store_true", default=None,
                   help="back-propagate through every H-cycle of the outer step (default: the last, as the reference)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    _model_flags(p)


def add_import_eqr(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", help="reference EqR file: a training checkpoint written by locuslab/EqR (read without "
                   "running any code from it) or a state dict")
    p.add_argument("--out", required=True, help="attractorlab checkpoint to write")
    p.add_argument("--weights", default="ema", choices=["ema", "raw"],
                   help="the EMA weights (what the paper evaluates; the default when the file has them) or the raw "
                   "trained weights")
    p.add_argument("--task", choices=_task_names(),
                   help="task the model solves (default: inferred from the vocabulary and length)")
    g = p.add_argument_group("architecture: read from the file's stored config; these flags only override it "
                             "(a plain state dict without a config gets the paper's defaults)")
    g.add_argument("--num-heads", type=int, dest="num_heads", help="attention heads")
    g.add_argument("--expansion", type=float, help="SwiGLU expansion")
    g.add_argument("--H-cycles", type=int, dest="H_cycles", help="H-cycles per outer step")
    g.add_argument("--L-cycles", type=int, dest="L_cycles", help="z_L updates per H-cycle")
    g.add_argument("--pos-encodings", dest="pos_encodings", choices=["rope", "rope2d", "none"],
                   help="position encoding (attention variant)")
    g.add_argument("--seq-len", type=int, dest="seq_len", help="cells per instance (attention models)")
    g.add_argument("--halt-max-steps", type=int, dest="halt_max_steps", help="training halt limit")
    g.add_argument("--lambda", type=float, dest="lambda_", help="damping lambda")
    g.add_argument("--noise-scale", type=float, dest="noise_scale", help="path-noise std")


def run_train(args: argparse.Namespace) -> int:
    from attractorlab.model import TRM_SETTINGS
    from attractorlab.train import SCHEDULE_FIELDS, TrainConfig, train

    not_fields = ("command", "preset", "out", "resume", "overwrite", "device", "progress", "func", "threads",
                  "compile_model", "trm")
    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in not_fields}
    if args.trm:
        overrides = {**TRM_SETTINGS, **overrides}
    schedule = {k: overrides.pop(k) for k in SCHEDULE_FIELDS if k in overrides}
    _check_out(args, "checkpoint")
    if args.resume and not os.path.exists(args.out):
        raise InputError(f"cannot resume: checkpoint not found: {args.out} (train without --resume to start it)")
    if args.resume and overrides:
        flags = ", ".join("--" + k.rstrip("_").replace("_", "-") for k in sorted(overrides))
        raise InputError(f"{flags} cannot change on --resume (the run keeps its stored configuration)")
    cfg = TrainConfig.from_preset(args.preset, **overrides, **schedule)
    os.environ.setdefault("ATTRACTORLAB_COMMAND", "attractorlab " + shlex.join(sys.argv[1:]))
    with _stop_after_the_step() as stop:
        result = train(cfg, args.out, device=args.device, resume=args.resume, progress=args.progress,
                       compile_model=args.compile_model, schedule=schedule if args.resume else None, stop=stop)
    evals = result["evals"]
    last = evals[max(evals, key=int)] if evals else {}
    print(f"saved {args.out} after {result['step']} steps; held-out exact accuracy "
          + ", ".join(f"D{k}={v:.3f}" for k, v in last.items()))
    return 0


def run_import_eqr(args: argparse.Namespace) -> int:
    from attractorlab import checkpoint

    flags = ("task", "num_heads", "expansion", "H_cycles", "L_cycles", "pos_encodings", "seq_len", "halt_max_steps",
             "lambda_", "noise_scale")
    settings = {k: getattr(args, k) for k in flags if getattr(args, k) is not None}
    imported = checkpoint.import_reference(args.reference, weights=args.weights, **settings)
    checkpoint.save(imported.model, args.out, meta={"imported_from": args.reference, "weights": imported.weights,
                                                     "reference_step": imported.step})
    print(imported.summary())
    print(f"wrote {args.out}")
    return 0


_SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints")
SHIPPED = {"sudoku": os.path.join(_SHIPPED_DIR, "sudoku-small.pt"), "maze": os.path.join(_SHIPPED_DIR, "maze-small.pt")}
"""The models that ship with the package, by task family: Sudoku (9 x 9) and mazes (11 x 11)."""
DEMO_PRESETS = {"sudoku": "tiny", "maze": "maze-tiny"}
"""What ``demo --train`` trains for each task family."""
DEFAULT_CHECKPOINT = SHIPPED["sudoku"]


def add_solve(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", default=DEFAULT_CHECKPOINT,
                   help="model checkpoint (default: the shipped attractorlab/checkpoints/sudoku-small.pt)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="instances of the checkpoint's task (Sudoku: a Sudoku-Extreme CSV, .csv/.csv.gz, "
                     "or one puzzle per line; maze: a text file of boards; either: a reference split directory)")
    src.add_argument("--generate", type=int, metavar="N", help="generate N instances with the task's built-in "
                     "generator (default: 200 of mixed difficulty)")
    p.add_argument("--difficulty", default="mixed",
                   help="difficulty of generated instances (Sudoku: mixed, singles, search; maze: mixed, "
                   "reference, short, long)")
    p.add_argument("--limit", type=int, help="use only the first N puzzles of --data")
    from attractorlab.rollout import HALT_RULES, SELECT_RULES, RolloutConfig

    d = RolloutConfig()
    p.add_argument("--depth", type=int, default=d.depth,
                   help="maximum outer steps per restart (x42 layers in the paper)")
    p.add_argument("--breadth", type=int, default=d.breadth, help="independent random restarts per puzzle")
    p.add_argument("--restart-std", type=float, default=d.restart_std, dest="restart_std",
                   help="models with a fixed initial state (TRM): with --breadth > 1 every restart starts from a "
                   "zero-mean truncated normal of this std, as the reference evaluation (different_init_reset_std)")
    p.add_argument("--halt", default=d.halt, choices=HALT_RULES,
                   help="stop a restart by the learned halting logit (q > 0), by latent convergence (residual below "
                   "--tol), once its answer is stable (unchanged for --patience steps; works with path noise), or "
                   "never")
    p.add_argument("--tol", type=float, default=d.tol,
                   help="relative residual below which a step counts as converged (path noise keeps the residual "
                   "near 1.5 x noise_scale: use --no-noise with --halt converge, or a tol above that floor)")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="consecutive converged (or unchanged-answer) steps before halting")
    p.add_argument("--select", default=d.select, choices=SELECT_RULES,
                   help="how to choose among restarts without a verifier: convergence (lowest change of all logits "
                   "over the last --window steps), reference (the reference evaluation's score: per-cell logit "
                   "change averaged over cells and the last --window steps), majority (most common final answer) or "
                   "attractor (each restart's end polished noise-free to its fixed point; the attractor most restarts "
                   "reached; a fixed-point solve per puzzle whose restarts disagree, seconds each on a CPU)")
    p.add_argument("--window", type=int, default=d.window, help="steps averaged by the convergence scores")
    p.add_argument("--full-vocab", action="store_true",
                   help="read answers out by an argmax over the full vocabulary, as the reference evaluation does "
                   "(a predicted pad or blank then counts as wrong)")
    p.add_argument("--no-noise", dest="noise", action="store_false", help="turn the path noise off at test time")
    p.add_argument("--protocol", choices=["reference"],
                   help="reference: exactly the reference evaluation (path noise on, no early halting, fixed --depth, "
                   "--breadth restarts from the init distribution, the reference convergence score for selection, "
                   "argmax over the full vocabulary); overrides --halt, --select, --no-noise and --full-vocab")
    p.add_argument("--batch-size", type=int, default=64, help="puzzles per batch (rows = batch x breadth)")
    p.add_argument("--seed", type=int, default=0, help="random seed (initial states, noise, generated puzzles)")
    p.add_argument("--out", default="trajectories/run.h5", help="run file to write (HDF5, schema 2)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run file")
    p.add_argument("--states", default="none", choices=["none", "final", "all", "cycles"],
                   help="latent states to record: none, final (at halting), all (every --state-stride-th outer "
                   "step) or cycles (inside those steps, the state after every inner update kept by --capture)")
    p.add_argument("--state-stride", type=int, default=1,
                   help="with --states all|cycles: keep every K-th outer step")
    p.add_argument("--capture", type=lambda v: [x for x in v.split(",") if x], metavar="PATTERNS",
                   help="with --states cycles: comma-separated names or shell patterns of the inner updates to keep "
                   "(H1.L1 ... H{H_cycles}.H; e.g. 'H*.L*' for z_L only; default all)")
    p.add_argument("--state-dtype", default="float16", choices=["float16", "float32"], help="stored state precision")
    p.add_argument("--project", type=int, default=0, metavar="K",
                   help="store each cell's [z_H, z_L] projected on a fixed random orthonormal basis of K dims "
                   "(states [L, K] per snapshot; 0 = full states [2, L, D])")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the outer step after a compile of up to a minute (1.16x-1.17x the eager "
                   "speed of the shipped sizes on one CPU thread; needs a C++ compiler; results agree to float32 "
                   "rounding; not with --states cycles)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay the outer step from CUDA graphs recorded on buckets of rows, so that its many small "
                   "kernels launch at once (CUDA only; with --compile the compiled step is recorded; not with "
                   "--states cycles)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def load_puzzles(args: argparse.Namespace, task):
    """The instances ``solve`` runs: ``--data`` (first ``--limit``) or ``--generate N`` of ``--difficulty``."""
    if args.data:
        puzzles = task.check(task.load(args.data))
        if len(puzzles) == 0:
            raise InputError(f"{args.data} holds no puzzles")
        if args.limit is not None:
            if args.limit < 1:
                raise InputError(f"--limit must be >= 1, got {args.limit}")
            puzzles = puzzles[:args.limit]
        return puzzles
    n = 200 if args.generate is None else args.generate
    if n < 1:
        raise InputError(f"--generate must be >= 1, got {n}")
    if args.difficulty not in task.difficulties:
        raise InputError(f"--difficulty {args.difficulty!r} is not one of the {task.name} generator's: "
                         f"{', '.join(task.difficulties)}")
    return task.generate(n, seed=args.seed, difficulty=args.difficulty, progress=args.progress)


def _starts(model_config, cfg) -> str:
    if model_config.initial_state == "random":
        return "random (each restart a fresh truncated normal)"
    if cfg.breadth == 1:
        return "fixed (the stored H_init, L_init)"
    return f"fixed; the {cfg.breadth} restarts start from a truncated normal of std {cfg.restart_std} (--restart-std)"


def run_solve(args: argparse.Namespace) -> int:
    from attractorlab import checkpoint, recording, rollout, solve
    from attractorlab.tasks import get_task
    from attractorlab.train import init_distributed

    if args.protocol == "reference":
        args.halt, args.select, args.noise, args.full_vocab = "never", "reference", True, True
    cfg = rollout.RolloutConfig(depth=args.depth, breadth=args.breadth, halt=args.halt, tol=args.tol,
                                patience=args.patience, select=args.select, window=args.window, noise=args.noise,
                                seed=args.seed, full_vocab=args.full_vocab, restart_std=args.restart_std)
    if args.state_stride < 1 or args.project < 0:
        raise InputError("--state-stride must be >= 1 and --project >= 0")
    if args.capture is not None and args.states != "cycles":
        raise InputError("--capture needs --states cycles")
    _check_out(args, "run file")
    dist_info, device = init_distributed(args.device)
    model = checkpoint.load(args.checkpoint, device)
    puzzles = load_puzzles(args, get_task(model.config.task))
    d = model.config
    if args.project > 2 * d.hidden_size:
        raise InputError(f"--project must be at most 2 x hidden_size = {2 * d.hidden_size}")
    shape = (d.seq_len, args.project) if args.project else (2, d.seq_len, d.hidden_size)
    updates = rollout.inner_updates(model, args.capture) if args.states == "cycles" else ()
    spec = recording.StateSpec(mode=args.states, stride=args.state_stride, dtype=args.state_dtype,
                               shape=shape if args.states != "none" else (), updates=updates)
    size = recording.estimate_size(len(puzzles), args.breadth, args.depth, spec, seq_len=d.seq_len)
    recording.check_disk_space(args.out, size)
    if dist_info.main:
        print(f"{len(puzzles)} puzzles x {args.breadth} restarts x {args.depth} steps -> {args.out} "
              f"(at most {size / 2**20:.1f} MiB)")
        print(f"{d.family.upper()} model, initial state {_starts(d, cfg)}")
    config = {"model": d.to_dict(), "rollout": dataclasses.asdict(cfg),
              "states": {"mode": args.states, "stride": args.state_stride, "dtype": args.state_dtype,
                         "project": args.project, "updates": list(updates)},
              "data": args.data or f"generated:{args.difficulty}:{len(puzzles)}:seed{args.seed}",
              "protocol": args.protocol or "attractorlab", "compile": args.compile,
              **({"cuda_graphs": True} if args.cuda_graphs else {})}  # runs recorded before the flag still resume
    attrs = {"config_json": json.dumps(config, sort_keys=True), "checkpoint_path": os.path.abspath(args.checkpoint),
             "checkpoint_sha256": checkpoint.file_sha256(args.checkpoint)}
    out = args.out if dist_info.world == 1 else recording.shard_path(args.out, dist_info.rank, dist_info.world)
    existed = os.path.exists(out)
    try:
        summary = solve.solve_puzzles(model, puzzles, cfg, out, batch_size=args.batch_size, states=args.states,
                                state_stride=args.state_stride, state_dtype=args.state_dtype, project=args.project,
                                updates=updates, compile=args.compile, cuda_graphs=args.cuda_graphs,
                                resume=args.resume,
                                overwrite=args.overwrite, attrs=attrs,
                                progress=args.progress and dist_info.main, rank=dist_info.rank,
                                world=dist_info.world)
    except BaseException:
        _remove_if_empty(out, existed)
        raise
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
        if dist_info.main:
            shards = [recording.shard_path(args.out, r, dist_info.world) for r in range(dist_info.world)]
            recording.merge_shards(shards, args.out, virtual=True)
            with recording.open_run(args.out) as run:
                summary = solve.summarize_run(run)
        dist.barrier()
    if dist_info.main:
        print(summary.table())
        print(f"wrote {args.out}")
    return 0


def _remove_if_empty(path: str, existed: bool) -> None:
    """After a failed start, remove a run file this call created that holds no finished batch."""
    from attractorlab import recording

    if existed or not os.path.exists(path):
        return
    try:
        with recording.open_run(path) as run:
            empty = run.n == 0
    except ValueError:
        empty = True
    if empty:
        os.remove(path)


def add_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run file written by `attractorlab solve`")
    p.add_argument("--checkpoint", help="model checkpoint (default: the one recorded in the run; sha256 must match)")
    p.add_argument("--out", help="HTML report to write (default: RUN_report.html beside the run)")
    p.add_argument("--only", help="comma-separated analyses to run: summary, scaling, convergence, embedding, "
                   "probes, inner (needs --states cycles), end_states, lyapunov, selection, fixed_points, basins")
    p.add_argument("--force", action="store_true", help="recompute analyses already stored in the run file")
    p.add_argument("--no-report", dest="report", action="store_false", help="store the results, write no HTML")
    p.add_argument("--n-puzzles", type=int, default=3, help="puzzles for fixed points and basins")
    p.add_argument("--n-polish", type=int, default=20,
                   help="puzzles whose recorded end states are polished noise-free to their fixed points (needs "
                   "--states final|all without --project)")
    p.add_argument("--n-lyapunov", type=int, default=8, dest="n_lyapunov",
                   help="puzzles whose recorded end states get their largest Lyapunov exponent (same needs)")
    p.add_argument("--lyapunov-steps", type=int, default=100, dest="lyapunov_steps",
                   help="noise-free outer steps averaged per Lyapunov exponent")
    p.add_argument("--n-selection", type=int, default=10, dest="n_selection",
                   help="puzzles whose restarts are chosen by their attractors at each recorded depth (needs "
                   "--states all without --project)")
    p.add_argument("--restarts", type=int, default=8, help="trajectory ends used as fixed-point starts per puzzle")
    p.add_argument("--basin-samples", type=int, default=64, help="initial states per puzzle for basin stability")
    p.add_argument("--grid", type=int, help="basin map resolution (GRID x GRID initial states; default 48 on a GPU, "
                   "12 on a CPU)")
    p.add_argument("--max-steps", type=int, default=48, help="outer steps allowed to reach an attractor")
    p.add_argument("--embed", default="pca", choices=["pca", "umap"], help="embedding of the trajectories")
    p.add_argument("--max-embed", type=int, default=100, help="puzzles drawn in the embedding")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--restart-std", type=float, dest="restart_std",
                   help="fixed-start models (TRM): std of the truncated normal that restarts and basin samples start "
                   "from (default: the run's --restart-std)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run_analyze(args: argparse.Namespace) -> int:
    from attractorlab import analyze
    from attractorlab.model import pick_device

    opts = analyze.AnalyzeOptions(n_puzzles=args.n_puzzles, n_polish=args.n_polish, n_lyapunov=args.n_lyapunov,
                                  lyapunov_steps=args.lyapunov_steps, n_selection=args.n_selection,
                                  restarts=args.restarts,
                                  basin_samples=args.basin_samples, grid=args.grid, max_steps=args.max_steps,
                                  embed_method=args.embed, max_embed=args.max_embed, seed=args.seed,
                                  restart_std=args.restart_std)
    only = None if args.only is None else [x.strip() for x in args.only.split(",") if x.strip()]
    if only == []:
        raise InputError("--only needs at least one analysis name")
    if args.report and args.out:
        check_output_file(args.out, "report")  # before the analyses, not after them
    print(f"analyzing {args.run}")
    analyze.analyze(args.run, checkpoint=args.checkpoint, only=only, force=args.force, options=opts,
                    device=pick_device(args.device), progress=args.progress)
    if args.report:
        from attractorlab import report

        out = args.out or os.path.splitext(args.run)[0] + "_report.html"
        report.write_report(args.run, out)
        print(f"wrote {out}")
    return 0


def add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=list(SHIPPED), default="sudoku",
                   help="task family of the demo: sudoku (9 x 9) or maze (11 x 11); picks the shipped model")
    p.add_argument("--checkpoint", help="model to run (default: the shipped model of --task)")
    p.add_argument("--train", action="store_true",
                   help="train the task's tiny preset first (tiny / maze-tiny; a few minutes on 2 CPU cores)")
    p.add_argument("--n", type=int, default=200, help="generated puzzles of mixed difficulty")
    p.add_argument("--depth", type=int, default=32, help="maximum outer steps")
    p.add_argument("--breadth", type=int, default=4, help="random restarts per puzzle")
    p.add_argument("--n-dynamics", type=int, default=2, help="puzzles for fixed points and basin maps")
    p.add_argument("--grid", type=int, default=12, help="basin map resolution")
    p.add_argument("--basin-samples", type=int, default=48, help="initial states per puzzle for basin stability")
    p.add_argument("--out-dir", default="trajectories", help="where demo.h5 and demo_report.html go")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run_demo(args: argparse.Namespace) -> int:
    from attractorlab import analyze, checkpoint, report, rollout, solve
    from attractorlab.seeds import stream
    from attractorlab.tasks import get_task
    from attractorlab.train import TrainConfig, train

    for flag, value in (("--n-dynamics", args.n_dynamics), ("--grid", args.grid)):
        if value < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    opts = analyze.AnalyzeOptions(n_puzzles=args.n_dynamics, grid=args.grid, basin_samples=args.basin_samples,
                                  max_steps=max(args.depth, 8), restarts=min(8, 2 * max(args.breadth, 1)),
                                  seed=args.seed)  # checked before the run, not after it
    # Noise off: the trajectories are those of the deterministic map whose fixed points and basins are analysed,
    # and convergence halting can fire (path noise keeps the residual above its tolerance).
    cfg = rollout.RolloutConfig(depth=args.depth, breadth=args.breadth, halt="converge", noise=False, seed=args.seed)
    make_dirs(args.out_dir)
    ckpt = args.checkpoint or SHIPPED[args.task]
    if args.checkpoint and not os.path.exists(ckpt):
        raise InputError(f"--checkpoint {ckpt} does not exist")
    if args.train or not os.path.exists(ckpt):
        preset = DEMO_PRESETS[args.task]
        ckpt = os.path.join(args.out_dir, f"demo_{preset}.pt")
        print(f"[1/4] training the {preset} preset -> {ckpt}")
        train(TrainConfig.from_preset(preset, seed=args.seed), ckpt, device="cpu", progress=args.progress)
    else:
        print(f"[1/4] using {ckpt}")
    model = checkpoint.load(ckpt)
    print(f"[2/4] generating {args.n} puzzles of mixed difficulty")
    puzzles = get_task(model.config.task).generate(args.n, seed=stream(args.seed, "demo.puzzles"), difficulty="mixed",
                                                   progress=args.progress)
    run = os.path.join(args.out_dir, "demo.h5")
    print(f"[3/4] solving: depth {args.depth}, breadth {args.breadth}, halting by convergence (no path noise) "
          f"-> {run}")
    attrs = {"config_json": json.dumps({"model": model.config.to_dict(), "rollout": dataclasses.asdict(cfg),
                                        "data": f"generated:mixed:{args.n}"}, sort_keys=True),
             "checkpoint_path": os.path.abspath(ckpt), "checkpoint_sha256": checkpoint.file_sha256(ckpt)}
    summary = solve.solve_puzzles(model, puzzles, cfg, run, states="all", state_stride=2, project=16, overwrite=True,
                                  attrs=attrs, progress=args.progress)
    print(f"[4/4] analyzing (fixed points, spectra, basins for {args.n_dynamics} puzzles)")
    analyze.analyze(run, checkpoint=ckpt, force=True, options=opts, progress=args.progress)
    html = os.path.join(args.out_dir, "demo_report.html")
    report.write_report(run, html)
    print(summary.table())
    print(f"run file: {run}\nreport:   {html}")
    return 0


def add_export_dataset(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", help="instances to export (a file the task reads; omit with --generate)")
    p.add_argument("--out", required=True, help="split directory to write (e.g. data/my-sudoku/test)")
    p.add_argument("--task", default="sudoku", choices=_task_names(), help="task of the instances")
    p.add_argument("--generate", type=int, metavar="N", help="export N instances of the task's built-in generator")
    p.add_argument("--difficulty", default="mixed", help="difficulty of generated instances")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing split directory")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run_export_dataset(args: argparse.Namespace) -> int:
    from attractorlab.tasks import get_task

    task = get_task(args.task)
    if (args.data is None) == (args.generate is None):
        raise InputError("give either a data file or --generate N")
    args.limit = None
    puzzles = load_puzzles(args, task)
    out = task.export(puzzles, args.out, overwrite=args.overwrite)
    print(f"wrote {len(puzzles)} {task.name} instances to {out} (the reference's dataset layout)")
    return 0


def add_landscape(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", help="checkpoints of one run, e.g. the OUT.step*.pt that "
                   "`train --snapshot-every N` keeps (ordered by their recorded step)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="instances of the checkpoints' task")
    src.add_argument("--generate", type=int, metavar="N", help="generate N instances (default: 8)")
    p.add_argument("--difficulty", default="mixed", help="difficulty of generated instances")
    p.add_argument("--limit", type=int, help="use only the first N instances of --data")
    p.add_argument("--restarts", type=int, default=8, help="noise-free restarts per puzzle whose ends seed the "
                   "fixed-point search")
    p.add_argument("--samples", type=int, default=32, help="initial states per puzzle for basin stability")
    p.add_argument("--max-steps", type=int, default=48, dest="max_steps", help="outer steps to reach an attractor")
    p.add_argument("--depth", type=int, default=16, help="depth of the accuracy column")
    p.add_argument("--no-noise", dest="noise", action="store_false", help="the accuracy column without path noise")
    p.add_argument("--seed", type=int, default=0, help="seed of the instances, restarts and samples")
    p.add_argument("--out", help="HTML figure to write (default: landscape.html beside the first checkpoint)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run_landscape(args: argparse.Namespace) -> int:
    from attractorlab import checkpoint, landscape
    from attractorlab.model import pick_device
    from attractorlab.report import write_html
    from attractorlab.tasks import get_task

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoints[0])), "landscape.html")
    task = get_task(checkpoint.load(args.checkpoints[0]).config.task)
    check_output_file(out, "figure")
    if args.generate is None and args.data is None:
        args.generate = 8
    puzzles = load_puzzles(args, task)
    result = landscape.track(args.checkpoints, puzzles, restarts=args.restarts, samples=args.samples,
                             max_steps=args.max_steps, depth=args.depth, seed=args.seed, noise=args.noise,
                             device=str(pick_device(args.device)))
    print(f"{len(puzzles)} {task.name} instances, {len(result.steps)} checkpoints")
    print(result.table())
    born = result.correct_birth[result.correct_birth >= 0]
    print(f"correct attractor first found at step: {', '.join(map(str, born)) or 'never'} "
          f"({len(born)} of {len(puzzles)} puzzles)")
    write_html(landscape.figure(result), out, "figure")
    print(f"figure: {out}")
    return 0


COMMANDS = {
    "train": ("train a reasoner (segmented online training; CPU, CUDA, torchrun for many GPUs)", add_train,
              run_train),
    "solve": ("roll out a checkpoint on puzzles with test-time scaling and record the run to HDF5", add_solve,
              run_solve),
    "analyze": ("analyse a run file (convergence, scaling, embeddings, probes, fixed points, spectra, basins) "
                "and write an interactive HTML report", add_analyze, run_analyze),
    "demo": ("the whole pipeline on the embedded default: generate, solve with breadth and adaptive halting while "
             "recording, analyze, report", add_demo, run_demo),
    "import-eqr": ("convert a reference EqR checkpoint (training checkpoint or state dict) into an attractorlab "
                   "checkpoint", add_import_eqr, run_import_eqr),
    "export-dataset": ("write instances (a file or generated) as a reference dataset split directory",
                       add_export_dataset, run_export_dataset),
    "landscape": ("the attractors of the same puzzles in every checkpoint of a training run: births, deaths, "
                  "stability and basins against the step", add_landscape, run_landscape),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attractorlab",
        description="Train, run and dissect Equilibrium Reasoners: trajectories, fixed points, spectra, basins.")
    parser.add_argument("--version", action="version", version=f"attractorlab {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, runner) in COMMANDS.items():
        p = subs.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(func=runner)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from attractorlab.runtime import tune_cpu_memory

    tune_cpu_memory()  # before build_parser imports torch
    parser = build_parser()
    args = parser.parse_args(argv)
    from attractorlab.errors import USER_ERRORS

    try:
        if getattr(args, "seed", None) is not None:
            check_seed(args.seed, "--seed")
        threads = getattr(args, "threads", None)
        if threads is not None:
            if threads < 1:
                raise InputError(f"--threads must be >= 1, got {threads}")
            import torch

            torch.set_num_threads(threads)
        with _handling((signal.SIGTERM,), _terminate):
            return args.func(args)
    except USER_ERRORS as err:
        message = " ".join(str(err).split())  # one line, whatever a library put in the message
        print(f"attractorlab {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"attractorlab {args.command}: interrupted{f': {err}' if str(err) else ''}", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"attractorlab {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM


@contextlib.contextmanager
def _stop_after_the_step() -> Iterator[Callable[[], bool] | None]:
    """Ctrl-C or SIGTERM asks training to stop after the current step, with a checkpoint of it; a second one stops at
    once (losing the steps since the last checkpoint). Yields the question :func:`~attractorlab.train.train` asks."""
    asked: list[int] = []

    def ask(signum: int, frame: object) -> None:
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)
        print("attractorlab train: stopping after this step with a checkpoint (again to stop at once)",
              file=sys.stderr)

    with _handling((signal.SIGINT, signal.SIGTERM), ask) as installed:
        yield (lambda: bool(asked)) if installed else None


class _Terminated(BaseException):
    """SIGTERM (a scheduler's or torchrun's stop) unwinds like Ctrl-C, so open files are closed and committed."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


@contextlib.contextmanager
def _handling(signals: tuple[int, ...], handler: Callable[[int, object], None]) -> Iterator[bool]:
    """``handler`` for ``signals`` inside the block, the previous handlers after it; yields whether it was installed
    (signals can be handled in the main thread only)."""
    try:
        previous = {sig: signal.signal(sig, handler) for sig in signals}
    except ValueError:
        yield False
        return
    try:
        yield True
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


if __name__ == "__main__":
    sys.exit(main())
