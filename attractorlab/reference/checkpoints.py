"""Reference checkpoint files (``utils/checkpoint.py: save_checkpoint``), read without executing code: a
``torch.save`` dict with ``step``, ``model`` (the state dict of the compiled loss head, keys like
``_orig_mod.model.inner.L_level.layers.0.mlp.gate_up_proj.weight``), ``optimizers``, ``carry`` (a pickled
``models.eqr.ModelCarry``), ``rng``, ``numpy``, ``python``, ``config`` (``PretrainConfig.model_dump()``;
``config["arch"]`` is the architecture) and ``ema = {"mu", "shadow"}`` (EMA parameters, what ``evaluate.py``
evaluates). :func:`read_checkpoint` uses a restricted unpickler: tensors and plain containers are rebuilt, every
other global becomes an inert :class:`Placeholder`.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import os
import pickle
import types
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from attractorlab.reference.errors import ReferenceFormatError, first_line

EMBED_KEY = "inner.embed_tokens.embedding_weight"
ARCH_FIELDS = ("hidden_size", "num_heads", "expansion", "L_layers", "H_cycles", "L_cycles", "mlp_t", "pos_encodings",
               "board_height", "board_width", "halt_max_steps", "halt_exploration_prob", "lambda_", "noise_scale",
               "H_init_std", "L_init_std", "rms_norm_eps", "rope_theta", "seq_len", "vocab_size", "forward_dtype")
"""Reference ``config["arch"]`` keys that carry over, unrenamed, to attractorlab's ``ReasonerConfig``."""


class Placeholder:
    """Stands in for a global named in a pickle that was neither imported nor called.

    ``target`` is the dotted name asked for; ``args``/``kwargs``/``state`` keep what the pickle passed (for
    inspection only). Calling a placeholder returns another placeholder; nothing it holds is ever executed.
    """

    target = "?"

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.entries = args, kwargs, None, {}
        return obj

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs) -> Placeholder:
        return type(self)(*args, **kwargs)

    def __setstate__(self, state) -> None:
        self.state = state

    def __setitem__(self, key, value) -> None:
        self.entries[key] = value

    def append(self, value) -> None:
        self.entries[len(self.entries)] = value

    def extend(self, values) -> None:
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<not loaded: {self.target}>"


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict())


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    return torch._utils._rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict(), dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    return torch.nn.Parameter(data, requires_grad) if isinstance(data, torch.Tensor) else data


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)  # keep the plain tensor: drop the subclass and any Python attributes


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch.storage", "UntypedStorage"): torch.UntypedStorage,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): codecs.encode,
    **{("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)},
}
"""What the restricted unpickler builds (torch turns ``*Storage`` names into storage types before asking)."""


def _restricted_pickle(seen: set[str]) -> types.ModuleType:
    """A module-like object for ``torch.load(pickle_module=...)`` whose unpickler imports nothing."""
    placeholders: dict[tuple[str, str], type[Placeholder]] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2 writes Python 2 names
                module, name = _compat_pickle.NAME_MAPPING[module, name]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            allowed = _ALLOWED_GLOBALS.get((module, name))
            if allowed is not None:
                return allowed
            seen.add(f"{module}.{name}")
            if (module, name) not in placeholders:
                placeholders[module, name] = type("Placeholder", (Placeholder,), {"target": f"{module}.{name}"})
            return placeholders[module, name]

    module = types.ModuleType("attractorlab_restricted_pickle")
    module.Unpickler = Unpickler
    module.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()
    return module


@dataclass
class ReferenceCheckpoint:
    """A reference EqR file as read: raw keys (``_orig_mod.model.inner.*``), CPU tensors, plain config."""

    weights: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    config: dict
    step: int | None
    kind: str
    path: str
    ema_mu: float | None = None
    placeholders: tuple[str, ...] = ()
    """Globals the file named that were replaced by inert placeholders (e.g. ``models.eqr.ModelCarry``)."""

    def state_dict(self, ema: bool = True) -> dict[str, torch.Tensor]:
        """Weights under canonical keys (``inner.*``), EMA parameters over the raw ones when ``ema`` (as
        ``evaluate.py`` does: ``load_model_state_dict`` then ``load_ema``); buffers always come from ``weights``."""
        state = {canonical_key(k): v for k, v in self.weights.items()}
        if ema and self.ema:
            state.update({canonical_key(k): v for k, v in self.ema.items() if canonical_key(k) in state})
        return state


def canonical_key(key: str) -> str:
    """``_orig_mod.model.inner.x`` -> ``inner.x``: drop torch.compile's ``_orig_mod`` and the loss head's ``model``."""
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    while parts and parts[0] == "model":
        parts = parts[1:]
    return ".".join(parts)


_LOAD_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, AttributeError, TypeError,
                ValueError, KeyError, IndexError, OSError)


def read_checkpoint(path: str | os.PathLike) -> ReferenceCheckpoint:
    """Read a reference training checkpoint, a dict with just ``model``, or a plain state-dict file, without
    executing code from it. Raises :class:`ReferenceFormatError` with a one-line reason for anything else."""
    path = Path(path)
    check_torch_file(path)
    seen: set[str] = set()
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle(seen))
    except _LOAD_ERRORS as err:
        raise ReferenceFormatError(f"{path} is truncated or corrupt ({first_line(err)})") from err
    if isinstance(payload, Mapping) and isinstance(payload.get("model"), Mapping):
        kind, raw = "training-checkpoint", payload["model"]
    elif isinstance(payload, Mapping):
        kind, raw, payload = "state-dict", payload, {}
    else:
        raise ReferenceFormatError(f"{path} holds no EqR weights (expected a dict of tensors; found {_kind(payload)})")
    weights = _tensors(raw)
    if not any(canonical_key(k) == EMBED_KEY for k in weights):
        keys = [str(k) for k in raw]
        found = ", ".join(repr(k) for k in keys[:3]) + (f", ... ({len(keys)} keys)" if len(keys) > 3 else "")
        hint = "; it is an attractorlab checkpoint: use attractorlab.checkpoint.load" if (
            payload.get("format") == "attractorlab.checkpoint") else ""
        raise ReferenceFormatError(f"{path} holds no EqR weights (expected keys like {EMBED_KEY!r}; "
                                   f"found {found or 'no keys'}){hint}")
    ema, mu = _ema(payload.get("ema"))
    step = payload.get("step")
    config = _plain(payload.get("config"))
    return ReferenceCheckpoint(weights=weights, ema=ema, config=config if isinstance(config, dict) else {},
                               step=step if isinstance(step, int) and not isinstance(step, bool) else None,
                               kind=kind, path=str(path), ema_mu=mu, placeholders=tuple(sorted(seen)))


def check_torch_file(path: str | os.PathLike) -> None:
    """Raise :class:`ReferenceFormatError` with a one-line reason unless ``path`` looks like a ``torch.save`` file
    (a zip archive holding ``data.pkl``, or a legacy pickle); reads only its head and zip directory."""
    path = Path(path)
    if not path.exists():
        raise ReferenceFormatError(f"{path}: not found")
    if path.is_dir():
        raise ReferenceFormatError(f"{path} is a directory, not a checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise ReferenceFormatError(f"{path} is empty (0 bytes), not a PyTorch file")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise ReferenceFormatError(f"{path} is truncated or corrupt ({first_line(err)})") from err
        if any(name.endswith("constants.pkl") for name in names):
            raise ReferenceFormatError(f"{path} is a TorchScript archive (torch.jit.save), not a checkpoint")
        if not any(name.endswith("data.pkl") for name in names):
            raise ReferenceFormatError(f"{path} is a zip archive but not a PyTorch file (it holds "
                                       f"{', '.join(names[:3]) or 'nothing'})")
    elif head[0] != 0x80:  # not a pickle either (the legacy torch.save format)
        raise ReferenceFormatError(f"{path} is not a PyTorch file (it starts with {head[:12]!r})")


def _kind(obj: object) -> str:
    return obj.target if isinstance(obj, Placeholder) else type(obj).__name__


def _tensors(mapping: Mapping) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in mapping.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _ema(ema: object) -> tuple[dict[str, torch.Tensor] | None, float | None]:
    """The reference's ``load_ema``: ``ema["shadow"]``, else the tensors of ``ema`` itself; ``ema["mu"]``."""
    if not isinstance(ema, Mapping):
        return None, None
    shadow = ema.get("shadow")
    tensors = _tensors(shadow if isinstance(shadow, Mapping) else ema)
    mu = ema.get("mu")
    return tensors or None, float(mu) if isinstance(mu, (int, float)) and not isinstance(mu, bool) else None


_DROP = object()


def _plain(value: object) -> object:
    """Plain containers and scalars, recursively; config objects that became placeholders are unwrapped from
    their pickled state where it has a known shape (pydantic ``__dict__`` + extras, OmegaConf ``_content`` /
    ``_val``); anything else is dropped."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        items = ((str(k), _plain(v)) for k, v in value.items())
        return {k: v for k, v in items if v is not _DROP}
    if isinstance(value, (list, tuple)):
        return [v for v in map(_plain, value) if v is not _DROP]
    if isinstance(value, Placeholder) and isinstance(value.state, Mapping):
        state = value.state
        if "_content" in state:
            return _plain(state["_content"])
        if "_val" in state:
            return _plain(state["_val"])
        if isinstance(state.get("__dict__"), Mapping):
            return _plain({**state["__dict__"], **(state.get("__pydantic_extra__") or {})})
    return _DROP


def _arch_items(config: Mapping) -> tuple[dict, list[str]]:
    arch = config.get("arch") if isinstance(config.get("arch"), Mapping) else config
    settings, ignored = {}, []
    for key, value in arch.items():
        if key not in ARCH_FIELDS or not (value is None or isinstance(value, (bool, int, float, str))):
            ignored.append(str(key))
        elif key == "pos_encodings":
            settings[key] = "none" if value is None else value
        elif value is not None:  # board_height/width None: the reference derives them from seq_len
            settings[key] = value
    return settings, ignored


def arch_settings(config: Mapping) -> dict:
    """Reference config (``config["arch"]`` or a flat arch dict) -> ``ReasonerConfig`` keyword arguments.

    The names are the same on both sides (:data:`ARCH_FIELDS`); other keys (``name``, ``loss``, ``H_layers``,
    ...) and non-plain values are dropped, ``pos_encodings: None`` becomes ``"none"``. ``seq_len`` and
    ``vocab_size`` are not in the reference arch (it takes them from the dataset): read them off the weights.
    """
    return _arch_items(config)[0]


def ignored_arch_keys(config: Mapping) -> list[str]:
    """The arch keys :func:`arch_settings` drops."""
    return _arch_items(config)[1]


def arch_family(config: Mapping) -> str | None:
    """``"eqr"`` or ``"trm"`` from ``config["arch"]["name"]`` (``eqr@EqRModel`` / ``trm@TRMModel``), else None."""
    arch = config.get("arch") if isinstance(config.get("arch"), Mapping) else config
    name = arch.get("name")
    family = name.split("@")[0].lower() if isinstance(name, str) else None
    return family if family in ("eqr", "trm") else None


def summary(ckpt: ReferenceCheckpoint) -> str:
    """A one-screen description of a reference checkpoint."""
    params = sum(t.numel() for t in ckpt.weights.values())
    ema = f"yes (mu {ckpt.ema_mu}, {len(ckpt.ema)} tensors)" if ckpt.ema else "no"
    settings = arch_settings(ckpt.config)
    lines = [f"reference {ckpt.kind}: {ckpt.path}",
             f"  step          {ckpt.step if ckpt.step is not None else '-'}",
             f"  weights       {len(ckpt.weights)} tensors, {params:,} numbers",
             f"  EMA           {ema}",
             f"  family        {arch_family(ckpt.config) or '-'}",
             f"  architecture  {' '.join(f'{k}={v}' for k, v in settings.items()) or '- (no config stored)'}"]
    if ckpt.config and ignored_arch_keys(ckpt.config):
        lines.append(f"  ignored       {', '.join(ignored_arch_keys(ckpt.config))}")
    if ckpt.placeholders:
        lines.append(f"  not loaded    {', '.join(ckpt.placeholders)}")
    return "\n".join(lines)
