"""HTTP routes for runtime adapter loading on vLLM's OpenAI server: an endpoint plugin, no fork.

vLLM 0.32 loads ``vllm.endpoint_plugins`` entry points into its API server
(``vllm/plugins/endpoint_plugins/interface.py``: ``attach_router`` during ``build_app``,
``init_state`` with the engine client during ``init_app_state``), but only those named in
``VLLM_PLUGINS`` (``vllm/plugins/__init__.py``, ``load_endpoint_plugins``): like vLLM's
``VLLM_ALLOW_RUNTIME_LORA_UPDATING``, runtime loading is off unless asked for: ``reftx serve
--allow-runtime-loading`` names this plugin (:data:`NAME`) there. The routes mirror vLLM's LoRA ones
(``vllm/entrypoints/serve/lora/api_router.py``)::

    POST /v1/load_reft_adapter    {"name": "b", "path": "runs/b"}  -> 200, or 400 with a one-line error
    POST /v1/unload_reft_adapter  {"name": "b"}                    -> 200, or 404 when it is not loaded
    GET  /v1/reft_adapters        -> {"adapters": {name: folder}, "errors": {name: why it cannot be served}}

Errors use vLLM's own error body (``vllm/entrypoints/serve/exception_handling/error_response.py``),
so OpenAI clients raise them as usual; the server keeps serving whatever happens here.
"""
# no `from __future__ import annotations`: FastAPI reads the routes' `Request` annotations as objects
from http import HTTPStatus
from typing import Any

from reftx.core.errors import ReftError

NAME = "reftx_adapters"  # the entry point's name in vllm.endpoint_plugins (and in VLLM_PLUGINS)


def _error(e: Exception, status: HTTPStatus) -> Any:
    from fastapi.responses import JSONResponse
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    kind = "NotFoundError" if status == HTTPStatus.NOT_FOUND else "BadRequestError"
    body = create_error_response(str(e), kind, status)
    return JSONResponse(content=body.model_dump(), status_code=status.value)


def _router() -> Any:
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse

    router = APIRouter()

    @router.post("/v1/load_reft_adapter")
    async def load_reft_adapter(raw: Request):
        try:
            body = await raw.json()
            body = body if isinstance(body, dict) else {}
            fingerprint = await raw.app.state.reftx_runtime.load(body.get("name"), body.get("path"))
        except (ReftError, ValueError) as e:
            return _error(e, HTTPStatus.BAD_REQUEST)
        return JSONResponse({"loaded": body["name"], "weights_sha256": fingerprint})

    @router.post("/v1/unload_reft_adapter")
    async def unload_reft_adapter(raw: Request):
        try:
            body = await raw.json()
            name = body.get("name") if isinstance(body, dict) else None
            await raw.app.state.reftx_runtime.unload(name)
        except (ReftError, ValueError) as e:
            return _error(e, HTTPStatus.NOT_FOUND if "is not loaded" in str(e) else HTTPStatus.BAD_REQUEST)
        return JSONResponse({"unloaded": name})

    @router.get("/v1/reft_adapters")
    async def reft_adapters(raw: Request):
        try:
            return JSONResponse(raw.app.state.reftx_runtime.listing())
        except ReftError as e:
            return _error(e, HTTPStatus.BAD_REQUEST)

    return router


class ReftAdapterEndpoints:
    """The ``vllm.endpoint_plugins`` factory (vLLM's ``EndpointPlugin`` protocol)."""

    name = NAME
    required_tasks = ("generate",)

    def attach_router(self, app: Any) -> None:
        app.include_router(_router())

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        from reftx.integrations.vllm.runtime import RuntimeAdapters

        state.reftx_runtime = RuntimeAdapters(engine_client)
