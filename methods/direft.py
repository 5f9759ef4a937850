"""DiReFT (the ReFT paper's DiReFT; pyreft calls it NodiReFT): no orthogonality, no subtraction."""
from reftx.intervention import register_intervention
from reftx.parts import SubspaceIntervention


@register_intervention("direft")
class DiReFT(SubspaceIntervention):
    """h' = h + W2ᵀ(W1 h + b); trains W1, W2, b."""

    orthogonal = False
    source_kind = "linear"
    subtract = False
