"""Parts primitives are composed from: the composed edit (``compose``: ``Delta``, ``register_primitive``,
``subspace``, ``scale_bias``), basis and input gates, magnitude bounds and the editing engine's slot
bank. ``from reftx.parts import register_primitive, subspace`` is the path a method file uses.

Before 0.2 ``reftx.parts`` was a module (the composed edit); its other names (``shared_rotations``,
...) still resolve here for one release.
"""
from reftx.core.compat import forward
from reftx.parts.compose import (
    ACTIVATIONS,
    BASIS_GATES,
    BOUNDS,
    INPUT_GATES,
    BiasSource,
    BoundOn,
    Delta,
    DeltaConfig,
    FreeBasis,
    OrthoBasis,
    Primitive,
    SubspaceConfig,
    SubspaceOptions,
    check_modifier,
    register_primitive,
    scale_bias,
    subspace,
)

__getattr__ = forward(__name__, ("reftx.parts.compose", "reftx.engine.rotations"))

__all__ = ["ACTIVATIONS", "BASIS_GATES", "BOUNDS", "INPUT_GATES", "BiasSource", "BoundOn", "Delta", "DeltaConfig",
           "FreeBasis", "OrthoBasis", "Primitive", "SubspaceConfig", "SubspaceOptions", "check_modifier",
           "register_primitive", "scale_bias", "subspace"]
