"""LoBiReFT: a learned bias inside a low-rank subspace."""
from reftx.intervention import register_intervention
from reftx.parts import SubspaceIntervention


@register_intervention("lobireft")
class LoBiReFT(SubspaceIntervention):
    """h' = h + Rᵀ b; R orthonormal; trains R, b."""

    orthogonal = True
    source_kind = "bias"
    subtract = False
