"""Loading and unloading reftx adapters while a vLLM engine serves, as vLLM does for LoRA.

vLLM 0.32 offers runtime LoRA updates behind ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``
(``vllm/entrypoints/serve/lora/api_router.py``: ``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``).
reftx adapters get the same through vLLM's two extension points, without a fork:

* the worker side is one method, :data:`RPC`, that :func:`reftx.integrations.vllm.register` adds to
  vLLM's ``WorkerWrapperBase`` (``vllm/v1/worker/worker_base.py``); ``EngineClient.collective_rpc``
  (``vllm/v1/engine/async_llm.py:1205``) runs it by name in every worker
  (``vllm/v1/serial_utils.py:485``, ``run_method``: a string is looked up with ``getattr``, and the
  wrapper hands unknown attributes on to the worker, ``worker_base.py:352``);
* the HTTP side is an endpoint plugin (``vllm/plugins/endpoint_plugins/interface.py``: entry point
  group ``vllm.endpoint_plugins``, loaded only when named in ``VLLM_PLUGINS``), in
  reftx.integrations.vllm.endpoint.

:class:`RuntimeAdapters` is the front end's half. A load first loads the folder in the front end
(every check :func:`load_adapter` makes: a folder that is unknown, damaged, trained on another base
or not placeable is a one-line error and nothing changes), then in every worker, and only then
lets requests name it. An unload first refuses the name to new requests (the front end checks every
request, reftx.integrations.vllm.frontend), then tells the workers, which keep the edits for requests
admitted before the unload (reftx.integrations.vllm.worker.Serving.retire).
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from reftx.core.errors import ReftError
from reftx.integrations.vllm.adapters import AdapterError, AdapterTable, load_adapter

RPC = "reftx_adapters"  # the worker method collective_rpc calls


def worker_rpc(wrapper: Any, op: str, name: str, folder: str | None = None) -> str | None:
    """Installed as ``WorkerWrapperBase.reftx_adapters``: ``op`` "load" (returns the weights' hash) or
    "unload" on the reftx hooks of this worker's model runner."""
    runner = getattr(wrapper, "model_runner", None)
    serving = getattr(runner, "reftx_serving", None)  # set by the plugin's load_model wrapper
    if serving is None:
        raise ReftError("this vLLM worker serves no reftx adapters: start the engine with "
                        "additional_config={'reftx': {'adapters': {...}}} (reftx serve does)")
    if op == "load":
        model = runner.model_config
        adapter = load_adapter(name, folder, model.hf_config, model.dtype)
        serving.add(name, adapter)
        return adapter.fingerprint
    if op == "unload":
        serving.retire(name)
        return None
    raise ReftError(f"unknown reftx worker operation {op!r} (load, unload)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


class RuntimeAdapters:
    """The front end's side of runtime loading, for one engine client (vLLM's ``AsyncLLM``)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._lock = asyncio.Lock()  # one change at a time

    def table(self) -> AdapterTable:
        from reftx.integrations.vllm.frontend import table_for

        table = table_for(self.engine.vllm_config)
        if table is None:
            raise ReftError("this server was started without reftx adapters: start it with reftx serve (or "
                            "additional_config={'reftx': {'adapters': {...}}})")
        return table

    def listing(self) -> dict[str, Any]:
        table = self.table()
        return {"adapters": {n: str(a.folder) for n, a in table.adapters.items()}, "errors": dict(table.errors)}

    async def load(self, name: Any, path: Any) -> str:
        """Serve the saved folder ``path`` as ``name``; a one-line ReftError when it cannot be."""
        if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
            raise AdapterError("load_reft_adapter needs a JSON body {\"name\": adapter name, \"path\": saved folder}")
        async with self._lock:
            table = self.table()
            if name in table.adapters:
                raise AdapterError(f"adapter {name!r} is already loaded (from {table.adapters[name].folder}); "
                                   "unload it first")
            model = self.engine.model_config
            folder = str(Path(path).expanduser().resolve())
            try:
                adapter = await asyncio.to_thread(load_adapter, name, folder, model.hf_config, model.dtype)
            except (ReftError, ValueError) as e:
                raise AdapterError(f"adapter {name!r} cannot be loaded: {folder}: {e}") from None
            try:
                hashes = await self.engine.collective_rpc(RPC, args=("load", name, folder))
            except Exception as e:  # noqa: BLE001 - a worker's failure reaches us as its message
                raise AdapterError(f"adapter {name!r} cannot be loaded in vLLM's workers: {_first_line(e)}") from None
            if any(h != adapter.fingerprint for h in hashes):
                await self.engine.collective_rpc(RPC, args=("unload", name))
                raise AdapterError(f"adapter {name!r}: {folder} changed while it was loading; load it again")
            table.adapters[name] = adapter
            table.errors.pop(name, None)
            table.unloaded.discard(name)
            return adapter.fingerprint

    async def unload(self, name: Any) -> None:
        """Stop serving ``name``: new requests naming it get a one-line error, running ones finish."""
        async with self._lock:
            table = self.table()
            if not isinstance(name, str) or name not in table.adapters:
                loaded = ", ".join(sorted(table.adapters)) or "none"
                raise AdapterError(f"adapter {name!r} is not loaded; loaded: {loaded}")
            adapter = table.adapters.pop(name)
            table.unloaded.add(name)
            try:
                await self.engine.collective_rpc(RPC, args=("unload", name))
            except Exception as e:  # noqa: BLE001
                table.adapters[name] = adapter
                table.unloaded.discard(name)
                raise AdapterError(f"adapter {name!r} cannot be unloaded in vLLM's workers: {_first_line(e)}") from None
