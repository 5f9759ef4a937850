"""DiReFT with an orthonormal up-projection (pyreft's Direft)."""
from reftx.intervention import register_intervention
from reftx.parts import SubspaceIntervention


@register_intervention("direft_orth")
class DiReFTOrth(SubspaceIntervention):
    """h' = h + Rᵀ(W h + b); R orthonormal; trains R, W, b."""

    orthogonal = True
    source_kind = "linear"
    subtract = False
