"""The edit as one opaque custom op, so a compiled vLLM forward keeps calling it.

Under ``torch.compile`` Dynamo traces a module's forward hooks into the graph with the Python state
of the forward it traced (vLLM traces once, on a dummy batch with no adapter request, and drops the
guards): a plain hook that looks at the current batch would be frozen as "no edit" and every later
forward would silently skip it. Compiled, reftx's hook therefore does one thing only, whatever the
batch: it calls ``torch.ops.reftx.vllm_edit(hidden, residual, site)``. Dynamo cannot see inside a
custom op (``torch.library.custom_op``, the mechanism vLLM uses for its own attention op), so the
compiled graph calls it on every forward, and the op's Python body reads the forward's placement
and edits the site's rows in place, exactly as the eager hook does. The op declares that it mutates
``hidden`` and ``residual``, so functionalization and inductor keep the write (they may copy).

``site`` is an integer key into :data:`SITES`, filled by :class:`reftx.integrations.vllm.worker.Serving`;
the fake (meta) implementation does nothing, since the op returns nothing and changes no shape.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

SITES: dict[int, Callable[[Tensor, Optional[Tensor]], None]] = {}  # site key -> its in-place edit


def new_site(edit: Callable[[Tensor, Optional[Tensor]], None]) -> int:
    """Register ``edit(hidden, residual)`` and return the key the compiled graph calls it by."""
    key = len(SITES)
    SITES[key] = edit
    return key


@torch.library.custom_op("reftx::vllm_edit", mutates_args=("hidden", "residual"))
def vllm_edit(hidden: Tensor, residual: Optional[Tensor], site: int) -> None:
    """Edit ``hidden`` (and zero ``residual``) on this forward's rows of site ``site``, in place."""
    SITES[site](hidden, residual)


@vllm_edit.register_fake
def _vllm_edit_fake(hidden: Tensor, residual: Optional[Tensor], site: int) -> None:
    return None


__all__ = ["SITES", "new_site", "vllm_edit"]
