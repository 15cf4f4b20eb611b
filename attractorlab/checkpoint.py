"""Checkpoints: save / load attractorlab models safely, and import reference EqR state dicts.

A checkpoint is a ``torch.save`` dict of plain types and tensors, loaded with ``weights_only=True`` so a file
can never execute code:

``{"format": "attractorlab.checkpoint", "version": 1, "config": {...}, "model": state_dict,
"meta": {...}, "train_state": {...} (optional)}``
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from attractorlab import reference
from attractorlab.errors import AttractorlabError, OutputError, make_parent_dirs
from attractorlab.model import TRM_SETTINGS, EquilibriumReasoner, ReasonerConfig, swiglu_width
from attractorlab.tasks import get_task, names

FORMAT = "attractorlab.checkpoint"
VERSION = 1


class CheckpointError(AttractorlabError, ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the model."""


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    make_parent_dirs(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(f"cannot write the checkpoint {path} ({err.strerror or err})") from None
        raise


def save(model: EquilibriumReasoner, path: str | os.PathLike, *, meta: dict | None = None,
         train_state: dict | None = None) -> None:
    """Save config + weights (+ optional training state) atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(), "model": state,
               "meta": dict(meta or {})}
    if train_state is not None:
        payload["train_state"] = train_state
    atomic_torch_save(payload, path)


def read(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict (CPU tensors) without executing code; clear errors for bad files."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        reference.check_torch_file(path)
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except reference.ReferenceFormatError as err:  # "<path> is not a PyTorch file (...)", "<path> is empty ..."
        detail = str(err).removeprefix(str(path)).strip()
        raise CheckpointError(f"{path} is not a readable checkpoint: it {detail}") from err
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {first[:160]})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an attractorlab checkpoint (for reference EqR weights use `attractorlab import-eqr`)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload['version']}; this attractorlab reads "
                              f"up to {VERSION}: upgrade attractorlab")
    return payload


def model_config(payload: dict, path: str | os.PathLike = "checkpoint") -> ReasonerConfig:
    """The model configuration a checkpoint dict stores (older files get today's defaults for new fields)."""
    try:
        return ReasonerConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid model config ({err})") from err


def model_from_payload(payload: dict, path: str | os.PathLike = "checkpoint") -> EquilibriumReasoner:
    model = EquilibriumReasoner(model_config(payload, path))
    load_weights(model, payload["model"], path)
    return model


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> EquilibriumReasoner:
    """Load a saved model in eval mode on ``device``."""
    return model_from_payload(read(path), path).to(device).eval()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(model: EquilibriumReasoner, state: dict, path: str | os.PathLike) -> None:
    """Copy ``state`` into ``model``; a clear error names the first key that is missing or has another shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        raise CheckpointError(f"{path}: weights do not fit the model ({'; '.join(parts)})")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{path}: {key} has shape {tuple(tensor.shape)}, the model expects "
                                  f"{tuple(own[key].shape)}")
    model.load_state_dict(state)


# --- reference EqR state dicts -------------------------------------------------------------------------------

_REFERENCE_KEYS = [
    (r"embed_tokens\.embedding_weight", "embed_tokens.weight"),
    (r"L_level\.layers\.(\d+)\.(.+)", r"layers.\1.\2"),
    (r"(lm_head|q_head)\.(weight|bias)", r"\1.\2"),
    (r"(H_init|L_init)", r"\1"),  # TRM's stored start vectors (buffers)
]


def _reference_key(key: str) -> str | None:
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    while parts and parts[0] in ("model", "inner"):
        parts = parts[1:]
    stripped = ".".join(parts)
    for pattern, repl in _REFERENCE_KEYS:
        if re.fullmatch(pattern, stripped):
            return re.sub(pattern, repl, stripped)
    return None


@dataclass
class ImportedReference:
    """What :func:`import_reference` built: the model and where each setting came from."""

    model: EquilibriumReasoner
    weights: str  # "ema" or "raw"
    step: int | None
    kind: str  # "training-checkpoint" | "state-dict"
    from_file: dict  # settings read from the file's stored config
    inferred: dict  # settings read off the tensor shapes

    def summary(self) -> str:
        c = self.model.config
        mixing = "mlp_t (SwiGLU across cells)" if c.mlp_t else f"attention, {c.num_heads} heads, {c.pos_encodings}"
        return "\n".join([
            f"imported a reference {c.family.upper()} {self.kind} "
            f"(step {self.step if self.step is not None else '-'}), {self.weights.upper()} weights",
            f"  task {c.task}: {c.seq_len} cells, vocab {c.vocab_size}; hidden {c.hidden_size}, {c.L_layers} layers, "
            f"{mixing}, expansion {c.expansion}",
            f"  cycles H {c.H_cycles} x L {c.L_cycles} ({c.layer_equivalents_per_step} layer-equivalents per outer "
            f"step); damping lambda {c.lambda_}, path noise {c.noise_scale}; halt_max_steps {c.halt_max_steps}",
            f"  initial state: {_initial_state_words(c)}",
            f"  {self.model.num_parameters():,} parameters; from the file's config: "
            f"{', '.join(sorted(self.from_file)) or 'nothing (defaults and flags)'}"])


def _initial_state_words(c: ReasonerConfig) -> str:
    if c.initial_state == "fixed":
        return "fixed (the stored H_init, L_init; restarts of breadth > 1 draw a truncated normal, --restart-std)"
    return f"random (truncated normal, std H {c.H_init_std}, L {c.L_init_std})"


def _task_for(vocab: int, seq_len: int | None, board: tuple[int, int] | None, source: str) -> str:
    """The first registered task with this vocabulary and length (Sudoku 11 tokens, Maze-Unique 6)."""
    for name in names():
        task = get_task(name)
        if task.vocab_size == vocab and (seq_len or task.seq_len) == task.seq_len and (
                board is None or tuple(board) == tuple(task.board_shape)):
            return name
    raise CheckpointError(f"{source}: no registered task has a vocabulary of {vocab} tokens"
                          f"{f' and {seq_len} cells' if seq_len else ''}; pass --task")


def import_reference(state_dict_or_path: dict | str | os.PathLike, *, weights: str = "ema",
                     **config) -> ImportedReference:
    """Build an :class:`EquilibriumReasoner` from a reference EqR file or state dict, and say what was used.

    Files may be reference training checkpoints (``step``, ``model``, ``ema``, ``config``, a pickled carry, RNG
    states: read without executing code) or plain state dicts. ``weights="ema"`` takes the EMA parameters when the
    file has them (what the paper evaluates), ``"raw"`` the trained ones. The architecture comes from the file's
    stored ``config["arch"]``; ``hidden_size``, ``vocab_size``, ``L_layers``, ``mlp_t`` (and ``seq_len`` for
    ``mlp_t``) are read off the tensor shapes; keyword arguments override the file and may not contradict the
    weights. The task is inferred from the vocabulary and length unless ``task`` is given. A reference TRM file
    (``inner.H_init`` / ``inner.L_init`` buffers, ``arch.name`` ``trm@TRMModel``) becomes the TRM configuration
    (:data:`~attractorlab.model.TRM_SETTINGS`) with its start vectors.
    """
    if weights not in ("ema", "raw"):
        raise CheckpointError(f"weights must be 'ema' or 'raw', got {weights!r}")
    if isinstance(state_dict_or_path, dict):
        source, raw, stored, step, kind, has_ema = "state dict", state_dict_or_path, {}, None, "state-dict", False
        family = None
    else:
        source = str(state_dict_or_path)
        try:
            ck = reference.read_checkpoint(source)
        except reference.ReferenceFormatError as err:
            raise CheckpointError(str(err)) from err
        has_ema = ck.ema is not None
        raw, stored = ck.state_dict(ema=weights == "ema"), reference.arch_settings(ck.config)
        step, kind, family = ck.step, ck.kind, reference.arch_family(ck.config)
    mapped = {new: v.detach().float().cpu() for k, v in raw.items()
              if isinstance(v, torch.Tensor) and (new := _reference_key(k)) is not None}
    if "embed_tokens.weight" not in mapped:
        raise CheckpointError(f"{source}: no reference EqR weights found (expected keys like "
                              "'inner.embed_tokens.embedding_weight')")
    vocab, hidden = mapped["embed_tokens.weight"].shape
    inferred = {"hidden_size": hidden, "vocab_size": vocab,
                "L_layers": len({int(k.split(".")[1]) for k in mapped if k.startswith("layers.")}),
                "mlp_t": "layers.0.mlp_t.gate_up_proj.weight" in mapped}
    if inferred["mlp_t"]:
        inferred["seq_len"] = mapped["layers.0.mlp_t.gate_up_proj.weight"].shape[1]
    trm = "H_init" in mapped or family == "trm"
    if trm and "H_init" not in mapped:
        raise CheckpointError(f"{source}: a TRM checkpoint without its start vectors (inner.H_init, inner.L_init)")
    inferred["initial_state"] = "fixed" if trm else "random"
    for name, value in inferred.items():
        if name in config and config[name] != value:
            raise CheckpointError(f"{source}: {name}={config[name]} given but the weights have {name}={value}")
    fields = {f.name for f in dataclasses.fields(ReasonerConfig)}
    from_file = {k: v for k, v in stored.items() if k in fields and k not in inferred}
    if from_file.get("forward_dtype") == "bfloat16":  # the reference's CUDA setting: bf16 on CUDA, float32 on CPU
        from_file["forward_dtype"] = "auto"
    # the reference TRM has no damping and no path noise (its arch names neither)
    family_defaults = {k: v for k, v in TRM_SETTINGS.items() if k not in inferred} if trm else {}
    settings = {**family_defaults, **from_file, **config, **inferred}
    if "task" not in settings:
        board = (settings["board_height"], settings["board_width"]) if settings.get("board_height") else None
        settings["task"] = _task_for(vocab, settings.get("seq_len"), board, source)
    elif "task" in config:  # a task given by hand must fit the weights
        task = get_task(config["task"])
        for name, value in (("vocab_size", vocab), ("seq_len", inferred.get("seq_len"))):
            if value is not None and value != getattr(task, name):
                raise CheckpointError(f"{source}: the weights have {name}={value}, but task {task.name} has "
                                      f"{name}={getattr(task, name)}")
    _check_expansion(mapped, settings.get("expansion", ReasonerConfig.expansion), source)
    try:
        model_config = ReasonerConfig.from_dict(settings)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: {err}") from err
    model = EquilibriumReasoner(model_config)
    load_weights(model, mapped, source)
    used = "ema" if weights == "ema" and has_ema else "raw"
    return ImportedReference(model.eval(), used, step, kind, from_file, inferred)


def _check_expansion(mapped: dict, expansion: float, source: str) -> None:
    for key, weight in mapped.items():
        if key.endswith("gate_up_proj.weight") and swiglu_width(weight.shape[1], expansion) != weight.shape[0] // 2:
            raise CheckpointError(f"{source}: {key} has width {weight.shape[0] // 2}, which does not match "
                                  f"expansion={expansion}; pass the expansion the model was trained with")


def load_reference(state_dict_or_path: dict | str | os.PathLike, *, weights: str = "ema",
                   **config) -> EquilibriumReasoner:
    """:func:`import_reference`'s model (eval mode): a reference EqR state dict or file as an attractorlab model."""
    return import_reference(state_dict_or_path, weights=weights, **config).model
