"""The task zoo, one file each; importing this package registers them all.

Installed, this folder is ``reftx.tasks``.
"""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
