"""Evaluation: the task interface, batched generation, teacher-forced scoring, metrics and
sequence classification.
"""
