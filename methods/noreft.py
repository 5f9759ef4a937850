"""NoReFT: LoReFT without the orthogonality constraint."""
from reftx.parts import SubspaceConfig, register_primitive, subspace

register_primitive("noreft", SubspaceConfig, subspace(orthogonal=False, source="linear", subtract=True),
                   "h' = h + W2ᵀ(W1 h + b − W2 h); trains W1, W2, b.")
