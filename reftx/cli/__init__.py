"""The ``reftx`` command line (dispatch only) and the docs generator.
"""
from reftx.cli.commands import main

__all__ = ["main"]
