"""A pytest plugin that runs the contract suites on the GPU: ``PYTHONPATH=benchmarks pytest -p cuda_tests ...``
(benchmarks/gpu.sh's equivalence section).

The suites build tiny random models and batches through reftx.testing.tiny; this plugin makes those
the same models and batches (built on the CPU from the same seeds) moved to ``cuda``, and makes
``cuda`` the default device, so every tensor a test creates lives there too. It patches at import,
before pytest imports tests/conftest.py, which re-exports the helpers to the test modules.
"""
from __future__ import annotations

import torch

import reftx.testing.tiny as tiny

DEVICE = "cuda"
_model, _batch = tiny.tiny_model, tiny.batch


def tiny_model(*args, **kwargs):
    with torch.device("cpu"):  # the CPU suites' weights, seed for seed
        return _model(*args, **kwargs).to(DEVICE)


def batch(*args, **kwargs):
    with torch.device("cpu"):
        return tuple(t.to(DEVICE) for t in _batch(*args, **kwargs))


def perturb(model, scale=0.5, seed=1):
    """reftx.testing.tiny.perturb with the noise drawn on the CPU (its generator) and moved to each parameter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.interventions.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, device="cpu").to(p))
    return model


tiny.tiny_model, tiny.batch, tiny.perturb = tiny_model, batch, perturb
torch.set_default_device(DEVICE)
