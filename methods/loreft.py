"""LoReFT (Wu et al. 2024): low-rank linear subspace ReFT."""
from reftx.parts import SubspaceConfig, register_primitive, subspace

register_primitive("loreft", SubspaceConfig, subspace(orthogonal=True, source="linear", subtract=True),
                   "h' = h + Rᵀ(W h + b − R h); R (r x d) has orthonormal rows; trains R, W, b.")
