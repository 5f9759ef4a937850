"""The contract suite for primitives written anywhere: ``reftx check KIND [--import my_variant]``.

The registry-derived contract tests (shape and dtype kept, gradients only to intervention
parameters, unscheduled and padded positions untouched, save -> load identical, unknown options
refused, every modifier and site combination, the same gradients under gradient checkpointing)
live in ``reftx.testing.contract``, so an out-of-tree variant runs the same tests as the shipped zoo::

    reftx --import my_variant.py check my_kind            # or: import my_variant; reftx.testing.check(["my_kind"])
    REFTX_CHECK_KINDS=my_kind pytest --pyargs reftx.testing.contract -p my_variant

Needs pytest (``pip install 'reftx[test]'``). The tiny random models they run on are
``reftx.testing.tiny``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from reftx.core.errors import ReftError

ENV = "REFTX_CHECK_KINDS"


def kinds() -> list[str]:
    """The kinds the contract suite runs: ``$REFTX_CHECK_KINDS`` (comma-separated), else every registered one."""
    from reftx.core.intervention import available_interventions, get_intervention

    chosen = [k.strip() for k in os.environ.get(ENV, "").split(",") if k.strip()]
    for k in chosen:
        get_intervention(k)  # an unknown kind: a ConfigError with did-you-mean
    return chosen or available_interventions()


def check(names: Sequence[str], pytest_args: Sequence[str] = ()) -> int:
    """Run the contract suite on the registered kinds ``names`` (imported before this call); pytest's
    exit code (0: every test passed)."""
    try:
        import pytest
    except ImportError:
        raise ReftError("reftx check runs the contract tests with pytest: pip install pytest "
                        "(or pip install 'reftx[test]')") from None
    os.environ[ENV] = ",".join(names)
    try:
        kinds()
        return int(pytest.main(["-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning",
                                "--pyargs", "reftx.testing.contract", *pytest_args]))
    finally:
        os.environ.pop(ENV, None)


__all__ = ["ENV", "check", "kinds"]
