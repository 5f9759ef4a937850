"""Recipes: short commands that configure the one training loop for a protocol (TOFU's stage 1, ...).

They sit above the tasks and the run driver (reftx.runner) and below the command line; a task
never imports them (tests/unit/test_layers.py). Each is one file with one entry point that
``reftx <command>`` calls.
"""
