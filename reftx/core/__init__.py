"""The core: errors, registries and plugin loading, the strict config converter, atomic file I/O,
and the intervention contract with its modifier protocol. It imports nothing else of reftx.
"""
