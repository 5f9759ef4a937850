"""ConsReFT: the subspace coordinates are pulled to a learned constant."""
from reftx.parts import SubspaceConfig, register_primitive, subspace

register_primitive("consreft", SubspaceConfig, subspace(orthogonal=True, source="bias", subtract=True),
                   "h' = h + Rᵀ(b − R h); R orthonormal; trains R, b.")
