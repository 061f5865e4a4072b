"""The `pagedllm` command.

    pagedllm serve [MODEL] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [EngineArgs flags...]
    pagedllm complete [--url http://127.0.0.1:8000/v1] [--model-name NAME] [-q PROMPT]
    pagedllm chat     [--url http://127.0.0.1:8000/v1] [--model-name NAME] [--system-prompt S]
                      [-q MSG]

`complete` and `chat` talk to a running server (as `vllm complete` / `vllm chat` do): with -q they
send one prompt and print the streamed answer; without it they read prompts from stdin, one per
line, until EOF (chat keeps the conversation). They use only the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Iterator, Optional, TextIO

DEFAULT_URL = "http://127.0.0.1:8000/v1"


# ---- a tiny OpenAI-protocol client (stdlib only) ------------------------------------------


class ServerClient:
    def __init__(self, url: str, api_key: Optional[str], timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Optional[dict] = None):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read())["error"]["message"]
            except Exception:
                message = str(err)
            raise SystemExit(f"error: server answered {err.code}: {message}") from None
        except urllib.error.URLError as err:
            raise SystemExit(f"error: cannot reach {self.url}: {err.reason}") from None

    def first_model(self) -> str:
        with self._request("GET", "/models") as resp:
            models = json.loads(resp.read())["data"]
        if not models:
            raise SystemExit("error: the server lists no models")
        return models[0]["id"]

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """The JSON events of an SSE stream, until `data: [DONE]`."""
        body = dict(body, stream=True)
        with self._request("POST", path, body) as resp:
            for raw in resp:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    return
                event = json.loads(payload)
                if "error" in event:
                    raise SystemExit(f"error: {event['error'].get('message')}")
                yield event


def _api_key(args: argparse.Namespace) -> Optional[str]:
    return args.api_key or os.environ.get("PAGEDLLM_API_KEY") or os.environ.get("OPENAI_API_KEY")


def run_complete(
    args: argparse.Namespace, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> int:
    client = ServerClient(args.url, _api_key(args))
    model = args.model_name or client.first_model()

    def one(prompt: str) -> None:
        body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": args.max_tokens}
        if args.temperature is not None:
            body["temperature"] = args.temperature
        for event in client.stream("/completions", body):
            for choice in event.get("choices", []):
                stdout.write(choice.get("text") or "")
                stdout.flush()
        stdout.write("\n")
        stdout.flush()

    if args.quick is not None:
        one(args.quick)
        return 0
    for line in stdin:
        prompt = line.rstrip("\n")
        if prompt:
            one(prompt)
    return 0


def run_chat(
    args: argparse.Namespace, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout
) -> int:
    client = ServerClient(args.url, _api_key(args))
    model = args.model_name or client.first_model()
    conversation: list[dict[str, str]] = []
    if args.system_prompt:
        conversation.append({"role": "system", "content": args.system_prompt})

    def one(message: str) -> None:
        conversation.append({"role": "user", "content": message})
        body: dict[str, Any] = {"model": model, "messages": conversation}
        if args.max_tokens is not None:
            body["max_tokens"] = args.max_tokens
        if args.temperature is not None:
            body["temperature"] = args.temperature
        reply = []
        for event in client.stream("/chat/completions", body):
            for choice in event.get("choices", []):
                piece = (choice.get("delta") or {}).get("content") or ""
                reply.append(piece)
                stdout.write(piece)
                stdout.flush()
        stdout.write("\n")
        stdout.flush()
        conversation.append({"role": "assistant", "content": "".join(reply)})

    if args.quick is not None:
        one(args.quick)
        return 0
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            return 0
        message = line.rstrip("\n")
        if message:
            one(message)


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default=DEFAULT_URL, help=f"the server's /v1 URL (default {DEFAULT_URL})"
    )
    p.add_argument("--model-name", default=None, help="default: the first model the server lists")
    p.add_argument("--api-key", default=None, help="default: $PAGEDLLM_API_KEY or $OPENAI_API_KEY")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument(
        "-q", "--quick", default=None, metavar="TEXT", help="send this one prompt/message and exit"
    )


def make_parser() -> argparse.ArgumentParser:
    from pagedllm.entrypoints.openai.cli_args import add_server_args

    parser = argparse.ArgumentParser(prog="pagedllm", description="pagedllm: serve and query LLMs")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="start the OpenAI-compatible server", conflict_handler="resolve"
    )
    serve.add_argument(
        "model_tag",
        nargs="?",
        default=None,
        help="model directory, .gguf file or hub id in the local cache "
        "(default: the bundled SmolLM2-135M-Instruct)",
    )
    add_server_args(serve)
    complete = sub.add_parser("complete", help="complete prompts with a running server")
    _add_client_args(complete)
    chat = sub.add_parser("chat", help="chat with a running server")
    _add_client_args(chat)
    chat.add_argument("--system-prompt", default=None)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    if args.command == "serve":
        from pagedllm.entrypoints.openai.api_server import serve

        if args.model_tag:
            args.model = args.model_tag
        try:
            return serve(args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "complete":
        if args.max_tokens is None:
            args.max_tokens = 256
        return run_complete(args)
    return run_chat(args)


if __name__ == "__main__":
    sys.exit(main())
