"""AdamATan2 in plain torch: the optimizer the reference EqR code trains with (``pretrain.py: create_model``
imports ``AdamATan2`` from the ``adam-atan2`` package, a fused CUDA kernel), here for any device.

The package's update (``csrc/adam_atan2.cu``, after its 2025-04-02 revert; its test
``adam_atan2/adam_atan2_test.py`` checks the kernel against the same formula) is, at step ``t`` (from 1)::

    p <- p * (1 - lr * weight_decay)                      # decoupled weight decay, first
    m <- m + (1 - beta1) * (g - m)                         # lerp: beta1 m + (1 - beta1) g
    v <- beta2 * v + (1 - beta2) * g**2
    p <- p - lr / (1 - beta1**t) * atan2(m, sqrt(v) / sqrt(1 - beta2**t))

There is no epsilon and no scale constants (Everett et al. 2024's ``a``, ``b`` are 1 here); the first bias
correction sits outside the atan2, so ``|step| <= lr * pi / 2 / (1 - beta1**t)``. A zero gradient on a fresh
state gives ``atan2(0, 0) = 0``: no step, only the decay. State keys (``step``, ``exp_avg``, ``exp_avg_sq``) are
the package's; the moments stay float32 for low-precision parameters (the package keeps them in the
parameter's dtype and computes in float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from itertools import chain

import torch

from attractorlab.errors import InputError


def _moment_dtype(param: torch.Tensor) -> torch.dtype:
    return torch.float64 if param.dtype == torch.float64 else torch.float32


class AdamATan2(torch.optim.Optimizer):
    """Adam with ``atan2`` in place of ``m / (sqrt(v) + eps)`` and decoupled weight decay (see module doc).

    ``lr = 0`` is allowed (the reference builds the optimizer with ``lr=0`` and lets its schedule set it).
    """

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.1) -> None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0.0 <= lr < math.inf:
            raise InputError(f"AdamATan2 lr must be a finite number >= 0, got {lr!r}")
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas):
            raise InputError(f"AdamATan2 betas must be two numbers in [0, 1), got {betas!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not (
                0.0 <= weight_decay < math.inf):
            raise InputError(f"AdamATan2 weight_decay must be a finite number >= 0, got {weight_decay!r}")
        super().__init__(params, {"lr": float(lr), "betas": (float(betas[0]), float(betas[1])),
                                  "weight_decay": float(weight_decay)})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise InputError("AdamATan2 does not support sparse gradients")
                self._update(param, self._state(param), group["lr"], beta1, beta2, group["weight_decay"])
        return loss

    def _state(self, param: torch.Tensor) -> dict:
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(param, dtype=_moment_dtype(param), memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
        return state

    @staticmethod
    def _update(param: torch.Tensor, state: dict, lr: float, beta1: float, beta2: float, weight_decay: float) -> None:
        state["step"] = state["step"] + 1  # a new tensor: a loaded state dict may share the old one
        t = float(state["step"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        grad = param.grad.to(exp_avg.dtype)
        work = param if param.dtype == exp_avg.dtype else param.to(exp_avg.dtype)
        work.mul_(1.0 - lr * weight_decay)
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denom = exp_avg_sq.sqrt().div_(math.sqrt(1.0 - beta2**t))
        work.add_(torch.atan2(exp_avg, denom), alpha=-lr / (1.0 - beta1**t))
        if work is not param:
            param.copy_(work)

    def load_state_dict(self, state_dict: dict) -> None:
        """Standard loading, except that the moments keep their float32 precision for low-precision
        parameters (``torch.optim.Optimizer`` would cast them to the parameter's dtype)."""
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        by_id = dict(zip(saved_ids, params, strict=False))
        moments = {by_id[i]: {k: s[k] for k in ("exp_avg", "exp_avg_sq") if k in s}
                   for i, s in state_dict["state"].items() if i in by_id}
        super().load_state_dict(state_dict)
        for param, saved in moments.items():
            for key, value in saved.items():
                self.state[param][key] = value.to(device=param.device, dtype=_moment_dtype(param), copy=True)
