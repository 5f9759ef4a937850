"""Wrappers that let other libraries drive reftx: peft (LoRA, HEFT), TRL's trainers and
lm-evaluation-harness.
"""
