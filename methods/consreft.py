"""ConsReFT: the subspace coordinates are pulled to a learned constant."""
from reftx.intervention import register_intervention
from reftx.parts import SubspaceIntervention


@register_intervention("consreft")
class ConsReFT(SubspaceIntervention):
    """h' = h + Rᵀ(b − R h); R orthonormal; trains R, b."""

    orthogonal = True
    source_kind = "bias"
    subtract = True
