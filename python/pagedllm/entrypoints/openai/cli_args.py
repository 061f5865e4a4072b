"""Command-line flags of the server (vLLM's names): server flags, then every EngineArgs flag."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Optional

from pagedllm.entrypoints.openai.tool_parsers import TOOL_PARSERS


@dataclass
class LoRAModulePath:
    name: str
    path: str
    base_model_name: Optional[str] = None


def parse_lora_module(item: str) -> LoRAModulePath:
    """`name=path`, or vLLM's JSON form {"name": ..., "path": ..., "base_model_name": ...}."""
    if "=" in item and not item.lstrip().startswith("{"):
        name, path = item.split("=", 1)
        if not name or not path:
            raise ValueError(f"lora_modules: expected name=path, got {item!r}")
        return LoRAModulePath(name, path)
    try:
        fields = json.loads(item)
        return LoRAModulePath(**fields)
    except (ValueError, TypeError) as e:
        raise ValueError(f"lora_modules: {item!r} is neither name=path nor a JSON object with "
                         f"name, path and optionally base_model_name ({e})") from None


class LoRAModulesAction(argparse.Action):
    """--lora-modules name=path [name2=path2 ...] into a list of LoRAModulePath."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        try:
            modules = [parse_lora_module(v) for v in values or () if v]
        except ValueError as e:
            parser.error(str(e))
        setattr(namespace, self.dest, modules)


def add_server_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Server flags (vLLM's names), then every EngineArgs flag."""
    from pagedllm.engine.arg_utils import AsyncEngineArgs

    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    g.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    g.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' (or set PAGEDLLM_API_KEY)",
    )
    g.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="model name(s) clients use in the 'model' field",
    )
    g.add_argument(
        "--max-num-waiting",
        type=int,
        default=None,
        help="answer 503 while more than this many requests wait for the engine",
    )
    g.add_argument("--chat-template", default=None, help="chat template file or Jinja text")
    g.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help='allow tool_choice "auto" (the default when a request has tools); needs '
        "--tool-call-parser",
    )
    g.add_argument(
        "--tool-call-parser",
        default=None,
        choices=sorted(TOOL_PARSERS),
        help="how the model writes tool calls: hermes (Qwen2.5/3, Hermes, ChatML tool "
        "templates), llama3_json (Llama 3.1-3.3), pythonic / llama4_pythonic (Llama 3.2 / 4), "
        "mistral, qwen3_coder or deepseek_v3",
    )
    g.add_argument(
        "--lora-modules",
        nargs="+",
        default=None,
        action=LoRAModulesAction,
        metavar="NAME=PATH",
        help="LoRA adapters served as models of their own (needs --enable-lora): name=path, or "
        'JSON {"name": ..., "path": ..., "base_model_name": ...}',
    )
    g.add_argument(
        "--enable-responses-store",
        action="store_true",
        help="keep finished /v1/responses answers in memory (store: true, OpenAI's default) so "
        "previous_response_id can continue them; off by default, as vLLM's "
        "VLLM_ENABLE_RESPONSES_API_STORE (also honoured)",
    )
    g.add_argument(
        "--max-stored-responses",
        type=int,
        default=1000,
        help="with --enable-responses-store: how many responses to keep (least recently used "
        "go first)",
    )
    g.add_argument(
        "--metrics-public", action="store_true", help="serve /metrics without the API key"
    )
    # CORS, as vLLM: every origin by default, so browser clients can call the API.
    g.add_argument("--allowed-origins", type=json.loads, default=["*"],
                   help='JSON list of origins browsers may call from (default ["*"])')
    g.add_argument("--allowed-methods", type=json.loads, default=["*"],
                   help="JSON list of HTTP methods allowed cross-origin")
    g.add_argument("--allowed-headers", type=json.loads, default=["*"],
                   help="JSON list of request headers allowed cross-origin")
    g.add_argument("--allow-credentials", action="store_true",
                   help="let cross-origin requests carry credentials (cookies, auth headers)")
    g.add_argument("--enable-prompt-tokens-details", action="store_true",
                   help="answer usage.prompt_tokens_details.cached_tokens (prompt tokens the "
                   "prefix cache served)")
    g.add_argument(
        "--metrics-prefix",
        default="pagedllm:",
        help="prefix of the /metrics names (vLLM's names after it); 'vllm:' serves dashboards "
        "made for vLLM unchanged",
    )
    g.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="seconds in-flight requests get to finish after SIGINT/SIGTERM",
    )
    g.add_argument(
        "--uvicorn-log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
    )
    g.add_argument("--disable-uvicorn-access-log", action="store_true")
    g.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    AsyncEngineArgs.add_cli_args(parser)
    return parser


def validate_server_args(args: argparse.Namespace) -> None:
    if not (0 <= args.port <= 65535):
        raise ValueError("port: must be in [0, 65535]")
    if args.max_num_waiting is not None and args.max_num_waiting < 0:
        raise ValueError("max_num_waiting: must be >= 0")
    if args.shutdown_timeout < 0:
        raise ValueError("shutdown_timeout: must be >= 0")
    for name in ("allowed_origins", "allowed_methods", "allowed_headers"):
        value = getattr(args, name)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"{name}: expected a JSON list of strings, got {value!r}")
    if getattr(args, "lora_modules", None) and not getattr(args, "enable_lora", False):
        raise ValueError("lora_modules: --lora-modules needs --enable-lora")
    if args.max_stored_responses < 1:
        raise ValueError("max_stored_responses: must be >= 1")
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise ValueError("enable_auto_tool_choice: --enable-auto-tool-choice needs "
                         "--tool-call-parser")
