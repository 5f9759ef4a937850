"""Quantized frozen bases (QReFT): ``model.quantization`` loads the base through transformers'
``BitsAndBytesConfig``, so its linear layers hold 8-bit or 4-bit weights while the interventions keep
their own dtype (float32 by default) and train as on a float base.

Schemes (``QUANTIZATION_PACKAGES`` in reftx.config.schema names the package each needs):

- ``bnb-int8``: bitsandbytes LLM.int8 (``load_in_8bit=True``): int8 weights with a float scale per
  output row. On the CPU bitsandbytes casts the activations to float16 inside each int8 matmul.
- ``bnb-nf4``: bitsandbytes 4-bit NormalFloat (``load_in_4bit=True, bnb_4bit_quant_type="nf4"``):
  blocks of 64 weights sharing a scale, computed in ``model.dtype`` (QLoRA's base format).

Both run on CUDA and on the CPU (bitsandbytes 0.50.2's CPU backend). On an AVX512-BF16 CPU, bnb-nf4
needs layer widths in whole blocks (:func:`check_cpu_nf4`, run by ``load_model``).
transformers keeps the output head (``lm_head``, a classifier's ``score``) and the embeddings in
float; ``model.train_modules`` are kept in float too, so they stay trainable.

torchao's int8 weight-only scheme also ran here (torchao 0.18: it trained and passed the generation
suite), but peft imports torchao whenever it is installed, and on a CPU machine that import prints
failures to load its CUDA extensions and torch deprecation warnings on every reftx command; so
``reftx[quant]`` is bitsandbytes alone.
"""
from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable
from typing import Any

import torch

from reftx.config.schema import QUANTIZATION_PACKAGES
from reftx.core.errors import ConfigError, unknown

FIELD = "model.quantization"
INSTALL = "pip install 'reftx[quant]'"
# transformers' default skip (the output head), spelled out when it is handed a skip list of its own
HEADS = ("lm_head", "score", "classifier")


def check_scheme(scheme: str) -> None:
    """A ConfigError naming ``model.quantization`` for an unknown scheme or a missing backend package."""
    if scheme not in QUANTIZATION_PACKAGES:
        raise unknown(FIELD, scheme, QUANTIZATION_PACKAGES, "quantization scheme")
    package = QUANTIZATION_PACKAGES[scheme]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(FIELD, f"{scheme} needs the {package} package, which is not installed: {INSTALL}")


def _quiet_cast(record: logging.LogRecord) -> bool:
    """bitsandbytes logs its float16 cast (documented above) on every int8 matmul of a CPU forward."""
    return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def quantization_config(scheme: str, dtype: Any = torch.float32, keep: Iterable[str] = ()) -> Any:
    """The transformers quantization config of ``scheme``; ``dtype`` (the base's) is bnb-nf4's compute
    dtype; ``keep``: module names left in float (``model.train_modules``), beside the output head."""
    check_scheme(scheme)
    keep = list(keep)
    skip = list(dict.fromkeys([*HEADS, *keep])) if keep else None  # None: transformers' own default skips
    import transformers

    if scheme == "bnb-int8":
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_quiet_cast)  # idempotent
        return transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    compute = dtype if isinstance(dtype, torch.dtype) else torch.float32  # "auto": float32 compute
    return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=skip)


def check_cpu_nf4(model: torch.nn.Module) -> None:
    """Refuse, naming the layer, a bnb-nf4 base that bitsandbytes cannot run on this CPU.

    On an x86 CPU with AVX512-BF16, bitsandbytes 0.50 repacks each 4-bit weight for its own kernel
    at the layer's first no-grad eval forward (``_convert_weight_packed_for_cpu`` in
    bitsandbytes/functional.py). That repacking needs ``in_features`` a multiple of the 64-weight
    block and ``out_features`` a multiple of 32; any other shape fails there with a reshape error,
    mid-generation. Real checkpoints meet it (SmolLM2-135M: 576, 192, 1536); tiny test models may not.
    """
    from bitsandbytes import functional

    has = getattr(functional, "has_avx512bf16", None)
    if has is None or not has():
        return
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is None or weight.device.type != "cpu":
            continue
        block = getattr(state, "blocksize", 64)
        if module.in_features % block or module.out_features % 32:
            raise ConfigError(FIELD, f"bnb-nf4 on this CPU (AVX512-BF16) needs each linear layer's in_features "
                              f"a multiple of {block} and out_features a multiple of 32, but {name} maps "
                              f"{module.in_features} -> {module.out_features}: use bnb-int8, or run on a GPU")


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers as stored, quantized weights at their packed size,
    plus their scales, which transformers' ``get_memory_footprint`` leaves out: bitsandbytes' int8 row
    scales ``SCB`` (on the weight until the first forward, then on the layer's ``state``) and its
    4-bit ``quant_state`` (block scales, code book, nested state)."""
    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        weight = getattr(module, "weight", None)
        tensors += [getattr(h, "SCB", None) for h in (weight, getattr(module, "state", None))]
        state = getattr(weight, "quant_state", None)
        for part in (state, getattr(state, "state2", None)):
            tensors += list(vars(part).values()) if part is not None else []
    stored = {(t.data_ptr(), t.numel() * t.element_size()) for t in tensors if isinstance(t, torch.Tensor)}
    return sum(size for _, size in stored)  # a tensor held in two places counts once


__all__ = ["check_cpu_nf4", "check_scheme", "quantization_config", "weight_bytes"]
