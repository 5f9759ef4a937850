"""Scale-and-bias (RED-style): an elementwise scale a and shift c on any component."""
from reftx.parts import DeltaConfig, register_primitive, scale_bias

register_primitive("scale_bias", DeltaConfig, scale_bias, """h' = a ⊙ h + c; a = 1 and c = 0 at init (the identity); trains a, c (2·width parameters).

    Every DeltaConfig modifier applies: e.g. ``bound: project`` restrains ||c||, ``dropout`` drops
    parts of the edit (a − 1) ⊙ h + c, never of h.
    """)
