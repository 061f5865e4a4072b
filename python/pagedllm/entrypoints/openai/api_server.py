"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) in front of an AsyncLLMEngine.

    pagedllm serve [MODEL] [--host 127.0.0.1] [--port 8000] [--api-key KEY] ...
    python -m pagedllm.entrypoints.openai.api_server --model MODEL ...

Routes: /v1/completions, /v1/chat/completions, /v1/responses (and GET /v1/responses/{id}),
/v1/models, /health (and /ping), /version, /tokenize, /detokenize, /metrics; with --enable-lora
and PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING=1 also /v1/load_lora_adapter and
/v1/unload_lora_adapter (serving_models.py). Every route except /health and /ping (and /metrics
with --metrics-public) needs the API key when one is set. SIGINT/SIGTERM stop accepting
connections, let in-flight requests finish (aborting them after --shutdown-timeout), shut the
engine down and exit 0; a dead engine makes the process exit 1. Prompts and request bodies are
never logged at INFO.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from http import HTTPStatus
from typing import Any, Callable, Optional

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

import pagedllm
from pagedllm.entrypoints.openai.cli_args import add_server_args, validate_server_args
from pagedllm.entrypoints.openai.errors import (
    APIError,
    error_body,
    error_response,
    internal_error_response,
    validation_error_message,
)
from pagedllm.entrypoints.openai.metrics import PREFIX as METRICS_PREFIX
from pagedllm.entrypoints.openai.metrics import ServerMetrics
from pagedllm.entrypoints.openai.middleware import BodyLimitAndAuthMiddleware
from pagedllm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    DetokenizeRequest,
    LoadLoRAAdapterRequest,
    ModelCard,
    ModelList,
    TokenizeRequest,
    UnloadLoRAAdapterRequest,
)
from pagedllm.entrypoints.openai.protocol_responses import ResponsesRequest
from pagedllm.entrypoints.openai.response_store import ResponseStore
from pagedllm.entrypoints.openai.serving_chat import OpenAIServingChat, render_chat
from pagedllm.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagedllm.entrypoints.openai.serving_embedding import OpenAIServingEmbedding
from pagedllm.entrypoints.openai.serving_engine import (
    AdmissionControl,
    OpenAIServing,
    ServerContext,
    maybe_await,
)
from pagedllm.entrypoints.openai.serving_models import (
    ServedLoRAs,
    runtime_lora_updating_allowed,
)
from pagedllm.entrypoints.openai.serving_responses import OpenAIServingResponses
from pagedllm.entrypoints.openai.streaming import (
    ClientDisconnected,
    DisconnectAwareStreamingResponse,
    run_unless_disconnected,
)

logger = logging.getLogger("pagedllm.entrypoints.openai.api_server")

# A status for "the client went away"; nobody reads it, but access logs show it (nginx's 499).
CLIENT_CLOSED_REQUEST = 499


# ---- the app ------------------------------------------------------------------------------


def _json(model: Any, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def build_app(
    ctx: ServerContext, *, api_key: Optional[str] = None, metrics_public: bool = False,
    cors: Optional[dict] = None,
) -> FastAPI:
    """The FastAPI app. `cors`: CORSMiddleware's allow_* arguments (None: no CORS headers)."""
    app = FastAPI(title="pagedllm OpenAI-compatible server", version=pagedllm.__version__)
    admission = AdmissionControl(ctx.max_num_waiting)
    completions = OpenAIServingCompletion(ctx, admission)
    chat = OpenAIServingChat(ctx, admission)
    store = ResponseStore(ctx.max_stored_responses) if ctx.enable_responses_store else None
    responses = OpenAIServingResponses(ctx, admission, store)
    embeddings = OpenAIServingEmbedding(ctx, admission)
    base = OpenAIServing(ctx, admission)
    app.state.ctx = ctx
    app.state.admission = admission

    def record_error(status: int) -> None:
        if ctx.metrics is not None:
            ctx.metrics.request_errors.labels(ctx.metrics.model_name, str(status)).inc()

    def internal_error(exc: Exception) -> JSONResponse:
        # A real fault: logged with its traceback (never the body); the server keeps serving.
        logger.error(
            "internal error: %s: %s",
            type(exc).__name__,
            exc,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        base.on_engine_error(exc)
        if getattr(ctx.engine, "errored", False):
            record_error(503)
            return JSONResponse(
                error_body(
                    "The engine has stopped after a fatal error; the server is shutting down.",
                    "engine_dead",
                    503,
                ),
                status_code=503,
            )
        record_error(500)
        return internal_error_response(f"Internal server error: {type(exc).__name__}")

    public = {"/health", "/ping"} | ({"/metrics"} if metrics_public else set())
    app.add_middleware(
        BodyLimitAndAuthMiddleware,
        api_key=api_key,
        public_paths=public,
        on_internal_error=internal_error,
    )
    if cors is not None:
        # Added last, so outermost: a browser's preflight (OPTIONS, no API key) is answered
        # before the key check, and every answer, errors included, carries the CORS headers.
        app.add_middleware(CORSMiddleware, **cors)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        record_error(int(exc.status))
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        record_error(400)
        message, param = validation_error_message(list(exc.errors()))
        return JSONResponse(
            error_body(message, "invalid_request_error", 400, param), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        record_error(exc.status_code)
        err_type = "invalid_request_error" if exc.status_code < 500 else "internal_server_error"
        return JSONResponse(
            error_body(str(exc.detail), err_type, exc.status_code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    def require_runner(runner: str, api: str) -> None:
        """vLLM serves only the APIs of its runner (the others are 404s); so does this."""
        if ctx.runner_type == runner:
            return
        hint = ("it embeds; start the server with --runner generate to generate"
                if runner == "generate" else
                "it generates; start the server with --runner pooling to embed")
        raise APIError(f"The model does not support the {api} API ({hint}).",
                       status=HTTPStatus.NOT_FOUND)

    async def generate(raw: Request, serving: Any, req: Any) -> Response:
        async def work() -> tuple[Any, Any]:
            return await serving.create(req)

        try:
            result, stream = await run_unless_disconnected(raw, work())
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        if stream is not None:
            return DisconnectAwareStreamingResponse(stream)
        return _json(result)

    @app.post("/v1/completions")
    async def create_completion(req: CompletionRequest, raw: Request) -> Response:
        require_runner("generate", "Completions")
        return await generate(raw, completions, req)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(req: ChatCompletionRequest, raw: Request) -> Response:
        require_runner("generate", "Chat Completions")
        return await generate(raw, chat, req)

    @app.post("/v1/responses")
    async def create_response(req: ResponsesRequest, raw: Request) -> Response:
        require_runner("generate", "Responses")
        return await generate(raw, responses, req)

    @app.post("/v1/embeddings")
    async def create_embedding(req: EmbeddingRequest, raw: Request) -> Response:
        require_runner("pooling", "Embeddings")
        return await generate(raw, embeddings, req)

    @app.get("/v1/responses/{response_id}")
    async def retrieve_response(response_id: str) -> Response:
        return _json(responses.retrieve(response_id))

    @app.get("/v1/models")
    async def list_models() -> Response:
        cards = [
            ModelCard(id=name, root=ctx.model_path, max_model_len=ctx.max_model_len)
            for name in ctx.served_model_names
        ]
        if ctx.loras is not None:
            cards += [
                ModelCard(id=name, root=lora.lora_path, parent=ctx.loras.parent_of(lora),
                          max_model_len=ctx.max_model_len)
                for name, lora in ctx.loras.adapters.items()
            ]
        return _json(ModelList(data=cards))

    if ctx.loras is not None and runtime_lora_updating_allowed():
        loras = ctx.loras

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(req: LoadLoRAAdapterRequest) -> Response:
            await loras.load(req.lora_name, req.lora_path, replace=req.load_inplace)
            return Response(f"Success: LoRA adapter '{req.lora_name}' added successfully.",
                            media_type="text/plain")

        @app.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(req: UnloadLoRAAdapterRequest) -> Response:
            await loras.unload(req.lora_name)
            return Response(f"Success: LoRA adapter '{req.lora_name}' removed successfully.",
                            media_type="text/plain")

    # /ping: the same answer for load balancers and SageMaker-style hosts (GET or POST), as vLLM.
    @app.get("/health")
    @app.get("/ping")
    @app.post("/ping")
    async def health() -> Response:
        try:
            await maybe_await(ctx.engine.check_health())
        except Exception as exc:
            return JSONResponse(
                error_body(f"engine is not healthy: {type(exc).__name__}", "engine_dead", 503),
                status_code=503,
            )
        if getattr(ctx.engine, "errored", False):
            return JSONResponse(
                error_body("engine is not running", "engine_dead", 503), status_code=503
            )
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": pagedllm.__version__})

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> JSONResponse:
        base.check_model(req.model)
        if req.messages is not None:
            tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
            ids = render_chat(
                ctx.tokenizer, req.messages, ctx.chat_template, req.add_generation_prompt,
                tools=tools,
            )
        else:
            ids = ctx.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        return JSONResponse({"count": len(ids), "max_model_len": ctx.max_model_len, "tokens": ids})

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest) -> JSONResponse:
        base.check_model(req.model)
        base.check_token_ids(req.tokens, "tokens")
        return JSONResponse({"prompt": ctx.tokenizer.decode(req.tokens)})

    @app.get("/metrics")
    async def metrics() -> Response:
        if ctx.metrics is None:
            raise StarletteHTTPException(404, "metrics are disabled")
        ctx.metrics.update_from_engine(await maybe_await(ctx.engine.get_stats()))
        ctx.metrics.in_flight.labels(ctx.metrics.model_name).set(admission.num_waiting)
        return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


# ---- building the context from a live engine ----------------------------------------------


def _first(obj: Any, *paths: str, default: Any = None) -> Any:
    """The first attribute path (dotted) of obj that exists and is not None."""
    for path in paths:
        cur = obj
        for part in path.split("."):
            cur = getattr(cur, part, None)
            if cur is None:
                break
        if cur is not None:
            return cur
    return default


def _load_chat_template(value: Optional[str]) -> Optional[str]:
    """--chat-template is a file path or the template text itself."""
    if not value:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if "{" not in value:
        raise ValueError(f"chat_template: {value!r} is neither a file nor a Jinja template")
    return value


async def build_context(engine: Any, args: argparse.Namespace) -> ServerContext:
    model_config = await maybe_await(engine.get_model_config())
    tokenizer = await maybe_await(engine.get_tokenizer())
    model_path = str(_first(model_config, "model", default=getattr(args, "model", "") or ""))
    names = getattr(args, "served_model_name", None)
    if isinstance(names, str):
        names = [names]
    names = [n for n in (names or []) if n]
    if not names:
        names = [
            getattr(args, "model", None)
            or os.path.splitext(os.path.basename(model_path.rstrip("/")))[0]
            or "default"
        ]
    hf_config = _first(model_config, "hf_config")
    vocab = int(
        _first(hf_config, "vocab_size", "text_config.vocab_size", default=0) or len(tokenizer)
    )
    max_len = int(
        _first(model_config, "max_model_len", default=0)
        or _first(
            engine,
            "max_model_len",
            "engine.max_model_len",
            "engine.engine_core.max_model_len",
            default=2048,
        )
    )
    loras = await _served_loras(engine, args, names)
    return ServerContext(
        engine=engine,
        tokenizer=tokenizer,
        served_model_names=names,
        model_path=model_path,
        max_model_len=max_len,
        vocab_size=vocab,
        metrics=ServerMetrics(names[0], getattr(args, "metrics_prefix", None) or METRICS_PREFIX),
        max_num_waiting=getattr(args, "max_num_waiting", None),
        chat_template=_load_chat_template(getattr(args, "chat_template", None)),
        enable_auto_tool_choice=bool(getattr(args, "enable_auto_tool_choice", False)),
        tool_call_parser=getattr(args, "tool_call_parser", None),
        reasoning_parser=getattr(args, "reasoning_parser", None),
        enable_prompt_tokens_details=bool(getattr(args, "enable_prompt_tokens_details", False)),
        default_sampling=dict(_first(engine, "engine.default_sampling_params",
                                     "default_sampling_params", default={})),
        loras=loras,
        enable_responses_store=bool(getattr(args, "enable_responses_store", False)
                                    or os.environ.get("VLLM_ENABLE_RESPONSES_API_STORE") == "1"),
        max_stored_responses=int(getattr(args, "max_stored_responses", 1000)),
        runner_type=str(_first(engine, "engine.runner_type", "runner_type",
                               default="generate")),
    )


async def _served_loras(engine: Any, args: argparse.Namespace,
                        base_names: list[str]) -> Optional[ServedLoRAs]:
    """With --enable-lora: the adapters of --lora-modules, each checked and loaded now (a bad
    one stops the server from starting)."""
    if not getattr(args, "enable_lora", False):
        return None
    loras = ServedLoRAs(engine, base_names)
    for module in getattr(args, "lora_modules", None) or []:
        try:
            await loras.load(module.name, module.path, module.base_model_name)
        except APIError as e:
            raise ValueError(f"lora_modules: {module.name}: {e.message}") from e
    return loras


def describe_engine(engine: Any, model_config: Any, stats: Any) -> str:
    dtype = _first(
        engine,
        "engine.engine_core.runner.dtype",
        "dtype",
        default=_first(model_config, "dtype", default="?"),
    )
    device = _first(
        engine,
        "engine.engine_core.runner.device",
        "device",
        "engine.config.device_config.device",
        default="?",
    )
    blocks = _first(stats, "num_blocks_total", default="?")
    block_size = _first(engine, "engine.config.cache_config.block_size", default=None)
    kv = f"{blocks} KV blocks" + (f" of {block_size} tokens" if block_size else "")
    return f"dtype {dtype}, device {device}, {kv}"


# ---- running it ---------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn.Server that exits normally on SIGINT/SIGTERM instead of re-raising the signal."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        sigs = (signal.SIGINT, signal.SIGTERM)
        original = {s: signal.signal(s, self.handle_exit) for s in sigs}
        try:
            yield
        finally:
            for s, handler in original.items():
                signal.signal(s, handler)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def run_server(
    args: argparse.Namespace,
    engine: Any = None,
    on_ready: Optional[Callable[[str, uvicorn.Server], None]] = None,
) -> int:
    """Serve until a signal (returns 0) or until the engine dies (returns 1).

    `engine` is built from the EngineArgs flags unless one is given (tests pass their own);
    `on_ready(url, server)` is called once the socket listens (tests stop it with should_exit)."""
    sock = _bind(args.host, args.port)  # bind first: a busy port fails before loading the model
    if engine is None:
        from pagedllm.engine.arg_utils import AsyncEngineArgs
        from pagedllm.engine.async_llm_engine import AsyncLLMEngine

        engine_args = AsyncEngineArgs.from_cli_args(args)
        engine = await maybe_await(AsyncLLMEngine.from_engine_args(engine_args))
    exit_code = 0
    try:
        ctx = await build_context(engine, args)
        server_holder: dict[str, _Server] = {}

        def on_engine_dead() -> None:
            nonlocal exit_code
            if exit_code == 0:
                logger.error("the engine died; shutting the server down")
            exit_code = 1
            srv = server_holder.get("server")
            if srv is not None:
                srv.should_exit = True

        ctx.on_engine_dead = on_engine_dead
        api_key = args.api_key or os.environ.get("PAGEDLLM_API_KEY") or None
        cors = dict(allow_origins=args.allowed_origins, allow_methods=args.allowed_methods,
                    allow_headers=args.allowed_headers, allow_credentials=args.allow_credentials)
        app = build_app(ctx, api_key=api_key, metrics_public=args.metrics_public, cors=cors)
        config = uvicorn.Config(
            app,
            log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log,
            timeout_graceful_shutdown=args.shutdown_timeout,
            # Longer than common clients' idle-connection expiry (httpx: 5 s): with equal
            # timeouts a client can reuse a pooled connection just as the server closes it,
            # and the request dies with a connection reset (seen in the disconnect storm).
            timeout_keep_alive=75,
            backlog=2048,
            lifespan="off",
        )
        server = _Server(config)
        server_holder["server"] = server

        host, port = sock.getsockname()[:2]
        model_config = await maybe_await(engine.get_model_config())
        stats = await maybe_await(engine.get_stats())
        logger.info(
            "model %s (served as %s), max_model_len %d, %s",
            ctx.model_path,
            ", ".join(ctx.served_model_names),
            ctx.max_model_len,
            describe_engine(engine, model_config, stats),
        )
        shown_host = f"[{host}]" if ":" in host else host
        logger.info(
            "Serving on http://%s:%d (API key %s)",
            shown_host,
            port,
            "required" if api_key else "not required",
        )

        async def watchdog() -> None:
            while not server.should_exit:
                if getattr(engine, "errored", False):
                    on_engine_dead()
                    return
                await asyncio.sleep(0.5)

        watch = asyncio.ensure_future(watchdog())
        if on_ready is not None:
            on_ready(f"http://{shown_host}:{port}", server)
        try:
            await server.serve(sockets=[sock])
        finally:
            watch.cancel()
    finally:
        try:
            await maybe_await(engine.shutdown())
        except Exception:
            logger.exception("engine shutdown failed")
            exit_code = exit_code or 1
        sock.close()
    logger.info("server stopped (exit code %d)", exit_code)
    return exit_code


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def serve(args: argparse.Namespace) -> int:
    validate_server_args(args)
    setup_logging(args.log_level)
    return asyncio.run(run_server(args))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pagedllm.entrypoints.openai.api_server",
        description="OpenAI-compatible server for pagedllm",
        conflict_handler="resolve",
    )
    return add_server_args(parser)


def main(argv: Optional[list[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return serve(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
