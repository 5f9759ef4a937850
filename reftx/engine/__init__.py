"""The intervention engine: sites, schedules, positions, generation state, rotations, the hooks
(the only place that registers forward hooks) and ``ReftModel`` (which reports auxiliary losses and
never composes a loss), with its serialization.
"""
