"""The front-end side: each request's adapter is checked, and its prefix cache salted, on admission.

vLLM turns every request (``LLM.generate``, the OpenAI server's ``vllm_xargs``) into an
``EngineCoreRequest`` in ``InputProcessor.process_inputs``; :func:`admit` runs right after it:

* a request whose ``SamplingParams.extra_args['reft']`` names an adapter the table cannot serve
  (unknown, trained on another base, damaged, a schedule vLLM cannot place) is refused there with
  the adapter's one-line error (:class:`AdapterError`, a ValueError and vLLM's ``VLLMValidationError``:
  the OpenAI server answers 400 with it),
  before it reaches the scheduler, so the engine keeps serving every other request;
* an adapter request gets a cache salt ``reftx:<name>:<weights hash>:<prompt length>`` (after the
  user's own salt, if any). vLLM hashes the salt into the first block of the prompt, so a prefix
  computed without this edit (a base request, another adapter, the same adapter on a prompt of
  another length, whose ``last`` positions or generated tokens sit elsewhere) is never reused for
  it. Base requests keep their salt untouched and share the cache as without the plugin.
"""
from __future__ import annotations

import json
from typing import Any

from reftx.core.errors import ReftError
from reftx.integrations.vllm.adapters import AdapterError, AdapterTable, load_table
from reftx.integrations.vllm.worker import adapter_name

CONFIG_KEY = "reftx"  # vLLM's additional_config: {"reftx": {"adapters": {name: folder}}}
_TABLES: dict[str, AdapterTable] = {}  # one table per process and configuration


def adapters_config(vllm_config: Any) -> dict[str, Any] | None:
    """``additional_config['reftx']['adapters']``, checked; None when the plugin is not configured."""
    extra = getattr(vllm_config, "additional_config", None)
    if not isinstance(extra, dict) or CONFIG_KEY not in extra:
        return None
    section = extra[CONFIG_KEY]
    if not isinstance(section, dict) or not isinstance(section.get("adapters"), dict):
        raise ReftError("additional_config.reftx.adapters: expected a mapping {adapter name: saved folder}, got "
                        f"{section!r}; e.g. --additional-config '{{\"reftx\": {{\"adapters\": {{\"a\": \"runs/x\"}}}}}}'")
    unknown = sorted(set(section) - {"adapters", "compiled_sites"})  # compiled_sites: the worker writes it
    if unknown:
        raise ReftError(f"additional_config.reftx.{unknown[0]}: unknown key; valid: adapters")
    return section["adapters"]


def table_for(vllm_config: Any) -> AdapterTable | None:
    """This process's adapter table for ``vllm_config`` (loaded once), or None without a reftx section."""
    adapters = adapters_config(vllm_config)
    if adapters is None:
        return None
    model = vllm_config.model_config
    key = json.dumps([adapters, str(model.model), str(model.dtype)], sort_keys=True, default=str)
    if key not in _TABLES:
        _TABLES[key] = load_table(adapters, model.hf_config, model.dtype)
    return _TABLES[key]


def salt(name: str, fingerprint: str, prompt_len: int, user: str | None) -> str:
    own = f"reftx:{name}:{fingerprint}:{prompt_len}"
    return f"{user}|{own}" if user else own


_REQUEST_ERROR: list[type] = []


def request_error(error: AdapterError) -> AdapterError:
    """``error`` as vLLM's ``VLLMValidationError`` too: vLLM's async engine (the OpenAI server) passes
    client errors on as a 400 with their message (``vllm/v1/engine/async_llm.py:793``) but turns any
    other exception, a plain ValueError included, into an empty ``EngineGenerateError`` 500 (:807-820)."""
    if not _REQUEST_ERROR:
        from vllm.exceptions import VLLMValidationError

        # parameter/value: VLLMValidationError.__str__ reads them; ValueError's __init__ runs first in the MRO
        _REQUEST_ERROR.append(type("AdapterRequestError", (AdapterError, VLLMValidationError),
                                   {"parameter": None, "value": None}))
    return _REQUEST_ERROR[0](str(error))


def admit(processor: Any, request: Any) -> Any:
    """Check the adapter ``request`` names and salt its prefix cache (see the module docstring)."""
    name = adapter_name(getattr(request, "sampling_params", None))
    if name is None:
        return request
    table = table_for(processor.vllm_config)
    try:
        if table is None:
            raise AdapterError(f"the request names reftx adapter {name!r}, but this engine serves none: start it "
                               "with additional_config={'reftx': {'adapters': {name: folder}}}")
        adapter = table.get(name)
    except AdapterError as e:
        raise request_error(e) from None
    ids = request.prompt_token_ids
    length = len(ids) if ids is not None else int(request.prompt_embeds.shape[0])
    request.cache_salt = salt(name, adapter.fingerprint, length, request.cache_salt)
    return request
