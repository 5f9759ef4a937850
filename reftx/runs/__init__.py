"""Run folders: the one writer every command uses, a run's figures and the plan table.
"""
