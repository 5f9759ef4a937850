"""``reftx serve``: the command line of reftx.integrations.vllm.serve (dispatch only)."""
from __future__ import annotations

import argparse
import shlex

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)
TEXT = ("serve saved adapters (run folders or save_pretrained folders) with vLLM's OpenAI-compatible server on "
        "127.0.0.1; a request names its adapter with extra_body={'vllm_xargs': {'reft': NAME}} (needs the vLLM "
        "environment: bash scripts/setup.sh --vllm)")


def cmd_serve(args: argparse.Namespace) -> int:
    from reftx.integrations.vllm import serve

    extra = shlex.split(args.vllm_args or "")
    plan = serve.plan(args.run_dirs, args.names, args.port, args.dtype, args.allow_runtime_loading, extra,
                      check=not args.no_check, compile=args.compile)
    for name, folder in plan.adapters.items():
        console.print(f"adapter [bold]{escape(name)}[/]: {escape(folder)}", soft_wrap=True, highlight=False)
    console.print(f"base model: {escape(plan.base)}\n{escape(plan.command())}", soft_wrap=True, highlight=False)
    if args.dry_run:
        print(plan.command())
        return 0
    serve.launch(plan)  # does not return
    return 0  # pragma: no cover


def add_parser(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help=TEXT, description=TEXT)
    s.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folders (or save_pretrained folders), "
                                                                  "each served under its folder's name")
    s.add_argument("--name", dest="names", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="serve RUN_DIR under NAME (repeatable)")
    s.add_argument("--port", type=int, default=8000, help="TCP port on 127.0.0.1 (default 8000)")
    s.add_argument("--dtype", default="float32", help="the engine's dtype (default float32, as the parity tests)")
    s.add_argument("--allow-runtime-loading", action="store_true",
                   help="add POST /v1/load_reft_adapter and /v1/unload_reft_adapter (as vLLM's "
                        "VLLM_ALLOW_RUNTIME_LORA_UPDATING does for LoRA)")
    s.add_argument("--compile", action="store_true",
                   help="let vLLM compile the forward (default: --enforce-eager); adapters loaded at runtime may "
                        "then only edit modules the adapters given at start edit")
    s.add_argument("--no-check", action="store_true", help="skip loading every adapter before vLLM starts")
    s.add_argument("--dry-run", action="store_true", help="print vLLM's command and exit")
    s.add_argument("--vllm-args", metavar="'OPTIONS'", help="more options for vLLM's server, as one string, "
                                                          "after '=', e.g. --vllm-args='--max-model-len 2048'")
    s.set_defaults(fn=cmd_serve)
