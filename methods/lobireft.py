"""LoBiReFT: a learned bias inside a low-rank subspace."""
from reftx.parts import SubspaceConfig, register_primitive, subspace

register_primitive("lobireft", SubspaceConfig, subspace(orthogonal=True, source="bias", subtract=False),
                   "h' = h + Rᵀ b; R orthonormal; trains R, b.")
