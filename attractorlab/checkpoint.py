"""Checkpoints: save / load attractorlab models safely, and import reference EqR state dicts.

A checkpoint is a ``torch.save`` dict of plain types and tensors, loaded with ``weights_only=True`` so a file
can never execute code:

``{"format": "attractorlab.checkpoint", "version": 1, "config": {...}, "model": state_dict,
"meta": {...}, "train_state": {...} (optional)}``
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path

import torch

from attractorlab.model import EquilibriumReasoner, ReasonerConfig, swiglu_width

FORMAT = "attractorlab.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the model."""


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({first[:160]})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an attractorlab checkpoint (for reference EqR weights use `attractorlab import-eqr`)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload['version']}; this attractorlab reads "
                              f"up to {VERSION}: upgrade attractorlab")
    return payload


def model_from_payload(payload: dict, path: str | os.PathLike = "checkpoint") -> EquilibriumReasoner:
    try:
        config = ReasonerConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid model config ({err})") from err
    model = EquilibriumReasoner(config)
    _load_state(model, payload["model"], path)
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


def _load_state(model: EquilibriumReasoner, state: dict, path: str | os.PathLike) -> None:
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


def load_reference(state_dict_or_path: dict | str | os.PathLike, **config) -> EquilibriumReasoner:
    """Build an :class:`EquilibriumReasoner` from a reference EqR state dict (or a file holding one).

    Keys look like ``inner.L_level.layers.0.mlp.gate_up_proj.weight``, optionally prefixed by ``model.``
    and/or ``_orig_mod.``. ``hidden_size``, ``vocab_size``, ``L_layers``, ``mlp_t`` and ``seq_len`` are read off
    the tensor shapes; everything else comes from ``config`` (reference names, paper defaults).
    """
    source = "state dict"
    if not isinstance(state_dict_or_path, dict):
        source = str(state_dict_or_path)
        if not Path(source).is_file():
            raise CheckpointError(f"reference checkpoint not found: {source}")
        try:
            loaded = torch.load(source, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
            raise CheckpointError(f"{source} is not a readable PyTorch file ({type(err).__name__})") from err
        state_dict_or_path = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
        if not isinstance(state_dict_or_path, dict):
            raise CheckpointError(f"{source} does not hold a state dict")
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict_or_path.items():
        if not isinstance(value, torch.Tensor):
            continue
        new = _reference_key(key)
        if new is not None:
            mapped[new] = value.detach().float().cpu()
    if "embed_tokens.weight" not in mapped:
        raise CheckpointError(f"{source}: no reference EqR weights found (expected keys like "
                              "'inner.embed_tokens.embedding_weight')")
    vocab, hidden = mapped["embed_tokens.weight"].shape
    layer_ids = {int(k.split(".")[1]) for k in mapped if k.startswith("layers.")}
    inferred = {"hidden_size": hidden, "vocab_size": vocab, "L_layers": len(layer_ids),
                "mlp_t": "layers.0.mlp_t.gate_up_proj.weight" in mapped}
    if inferred["mlp_t"]:
        inferred["seq_len"] = mapped["layers.0.mlp_t.gate_up_proj.weight"].shape[1]
    for name, value in inferred.items():
        if name in config and config[name] != value:
            raise CheckpointError(f"{source}: {name}={config[name]} given but the weights have {name}={value}")
    settings = {**config, **inferred}
    expansion = settings.get("expansion", ReasonerConfig.expansion)
    for key, weight in mapped.items():
        if key.endswith("gate_up_proj.weight") and swiglu_width(weight.shape[1], expansion) != weight.shape[0] // 2:
            raise CheckpointError(f"{source}: {key} has width {weight.shape[0] // 2}, which does not match "
                                  f"expansion={expansion}; pass the expansion the model was trained with")
    try:
        model_config = ReasonerConfig.from_dict(settings)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: {err}") from err
    model = EquilibriumReasoner(model_config)
    _load_state(model, mapped, source)
    return model.eval()
