"""The reftx version (its own module, so the core can read it without importing the package)."""
__version__ = "0.1.0"
