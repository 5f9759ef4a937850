"""reftx.core.processes in one process: the identity, and nothing started. Several real processes:
tests/integration/test_processes.py."""
from __future__ import annotations

import pytest
import torch

from reftx.core import processes
from reftx.core.errors import ReftError


def test_one_process_is_the_main_one_and_starts_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (processes.launched(), processes.world(), processes.rank(), processes.is_main()) == (False, 1, 0, True)
    assert processes.gather([3, 1]) == [3, 1]
    assert processes.main_decides(lambda: "runs/x") == "runs/x"
    assert not torch.distributed.is_initialized()


def test_the_main_process_error_is_raised_as_it_is_in_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def fail():
        raise ReftError("runs/x is being written by process 7")

    with pytest.raises(ReftError, match="^runs/x is being written by process 7$"):
        processes.main_decides(fail)
