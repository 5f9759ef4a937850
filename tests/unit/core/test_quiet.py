"""reftx.core.quiet: the one bitsandbytes import-time line reftx drops, and nothing else of its logger."""
from __future__ import annotations

import logging
import subprocess
import sys

import reftx  # noqa: F401  (installs the filters)
from reftx.core import quiet


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord(quiet.BNB_CPU_LOGGER, logging.WARNING, "ops.py", 253, message, None, None)


def test_the_missing_kernels_line_is_dropped_and_other_lines_pass():
    logger = logging.getLogger(quiet.BNB_CPU_LOGGER)
    dropped = ("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. "
               "Please make sure you already `pip install kernels` and the kernels >= 0.11.1")
    assert not logger.filter(_record(dropped))
    assert logger.filter(_record("some other bitsandbytes warning"))
    quiet.install()  # idempotent
    assert sum(f is quiet._not_kernels_missing for f in logger.filters) == 1


def test_importing_reftx_then_peft_prints_no_bitsandbytes_kernel_warning():
    out = subprocess.run([sys.executable, "-c", "import reftx, peft"], capture_output=True, text=True, check=True)
    assert quiet.BNB_KERNELS_MISSING not in out.stderr + out.stdout
