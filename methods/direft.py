"""DiReFT (the ReFT paper's DiReFT; pyreft calls it NodiReFT): no orthogonality, no subtraction."""
from reftx.parts import SubspaceConfig, register_primitive, subspace

register_primitive("direft", SubspaceConfig, subspace(orthogonal=False, source="linear", subtract=False),
                   "h' = h + W2ᵀ(W1 h + b); trains W1, W2, b.")
