"""Test-wide settings: one torch thread (the tensors here are tiny; thread start-up and contention cost more)."""

import torch

torch.set_num_threads(1)
