"""The experiment schema (what an experiment YAML may hold), its migration and the config hash.

Before 0.2 ``reftx.config`` was a module (the generic config machinery and the config hash); its names still resolve here for one release.
"""
from reftx.core.compat import forward

__getattr__ = forward(__name__, ('reftx.core.convert', 'reftx.config.hashing'))
