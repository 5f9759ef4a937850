"""Data: examples, encoding and batching (the prompt boundary travels in the batch), and BREP's
prefix-truncated labels.

Before 0.2 ``reftx.data`` was a module (encoding); its names still resolve here for one release.
"""
from reftx.core.compat import forward

__getattr__ = forward(__name__, ('reftx.data.encoding', 'reftx.data.examples'))
