"""DiReFT with an orthonormal up-projection (pyreft's Direft)."""
from reftx.parts import SubspaceConfig, register_primitive, subspace

register_primitive("direft_orth", SubspaceConfig, subspace(orthogonal=True, source="linear", subtract=False),
                   "h' = h + Rᵀ(W h + b); R orthonormal; trains R, W, b.")
