"""Log lines of third-party packages that reftx silences, each for a stated reason.

- bitsandbytes >= 0.50 (imported by peft whenever it is installed, so on every reftx command of a
  ``reftx[quant]`` install) warns at import, on AVX512-BF16 CPUs, that it could not load its 4-bit
  CPU kernel from the ``kernels`` package (bitsandbytes/backends/cpu/ops.py). That package fetches
  kernels from the Hub at run time, which reftx never relies on; bitsandbytes' own fallback kernel
  is the one reftx runs and tests. The filter drops that one message; every other line of the
  logger still shows.
"""
from __future__ import annotations

import logging

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_MISSING = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _not_kernels_missing(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(BNB_KERNELS_MISSING)


def install() -> None:
    """Attach the filters (idempotent: a logger holds a given filter once)."""
    logging.getLogger(BNB_CPU_LOGGER).addFilter(_not_kernels_missing)


__all__ = ["install"]
