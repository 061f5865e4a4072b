"""LLMEngine: the synchronous engine (vLLM's LLMEngine interface).

It turns prompts into token ids, maps string request ids to core handles (n handles for n > 1,
all sharing the prompt), runs EngineCore steps and turns their token ids into RequestOutputs.
Thread model: one thread at a time (LLM calls it directly; AsyncLLMEngine from its worker thread).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

from pagedllm.config import EngineConfig
from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.core import EngineCore, StepFailedError
from pagedllm.engine.generation_defaults import model_sampling_defaults
from pagedllm.engine.output_processor import OutputProcessor
from pagedllm.lora.request import LoRARequest
from pagedllm.outputs import RequestOutput
from pagedllm.pooling_params import PoolingParams
from pagedllm.sampling_params import SamplingParams
from pagedllm.usage.usage_lib import UsageContext

logger = logging.getLogger(__name__)

# Seconds between two stats lines in the log (when log_stats is on).
_STATS_LOG_INTERVAL_S = 5.0

PromptType = Union[str, list[int], dict[str, Any]]


@dataclass
class EngineStats:
    """A snapshot of the scheduler's counters plus the engine's token counters."""

    num_running: int
    num_waiting: int
    num_blocks_total: int
    num_blocks_used: int
    num_blocks_free: int
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    num_unfinished_requests: int
    num_prompt_tokens: int  # cumulative, prompt tokens of every added request
    num_generation_tokens: int  # cumulative, tokens generated
    num_steps: int
    mean_step_host_s: float  # schedule + batch prep + update + output processing
    mean_step_model_s: float  # model forward + sampling


def load_tokenizer(config: EngineConfig) -> Any:
    """The model's tokenizer (models' get_tokenizer handles GGUF files and the default model)."""
    try:
        from pagedllm.transformers_utils.tokenizer import get_tokenizer
    except ImportError:  # not merged yet: plain transformers on the model directory
        import os

        from transformers import AutoTokenizer

        mc = config.model_config
        kwargs: dict[str, Any] = dict(
            revision=mc.revision,
            trust_remote_code=mc.trust_remote_code,
            use_fast=mc.tokenizer_mode != "slow",
        )
        source = mc.tokenizer
        gguf_path = getattr(mc, "gguf_path", None)
        if gguf_path and mc.tokenizer in (mc.model, None):
            source, kwargs["gguf_file"] = os.path.split(gguf_path)
        return AutoTokenizer.from_pretrained(source, **kwargs)
    return get_tokenizer(config.model_config)


def parse_prompt(prompt: PromptType) -> tuple[Optional[str], Optional[list[int]]]:
    """vLLM's prompt forms: a string, a list of token ids, {"prompt": str} or
    {"prompt_token_ids": [...]} (optionally with "prompt" too)."""
    if isinstance(prompt, str):
        return prompt, None
    if isinstance(prompt, dict):
        ids = prompt.get("prompt_token_ids")
        text = prompt.get("prompt")
        if ids is None and text is None:
            raise ValueError("prompt: a dict prompt needs 'prompt' or 'prompt_token_ids'")
        return text, (list(ids) if ids is not None else None)
    if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
        return None, list(prompt)
    raise ValueError(f"prompt: expected str, list[int] or dict, got {type(prompt).__name__}")


class LLMEngine:
    def __init__(
        self,
        config: EngineConfig,
        *,
        max_logprobs: int = 20,
        runner: Any = None,
        tokenizer: Any = None,
        log_stats: bool = True,
        skip_tokenizer_init: bool = False,
        reasoning_parser: Optional[str] = None,
        generation_config: str = "auto",
        override_generation_config: Optional[dict] = None,
    ) -> None:
        self.config = config
        self.model_config = config.model_config
        self.max_logprobs = max_logprobs
        self.log_stats = log_stats
        self.engine_core = EngineCore(config, runner=runner)
        if tokenizer is None and not skip_tokenizer_init:
            tokenizer = load_tokenizer(config)
        self.tokenizer = tokenizer
        # A pooling engine (runner "pooling") embeds prompts instead of generating.
        self.runner_type = "pooling" if config.pooler_config is not None else "generate"
        if self.runner_type == "pooling":
            from pagedllm.engine.pooling_output_processor import PoolingOutputProcessor

            self.output_processor: Any = PoolingOutputProcessor()
        else:
            self.output_processor = OutputProcessor(tokenizer)
        self._compiler: Any = None  # structured outputs' GrammarCompiler, on first use
        # (start, end) token ids of a thinking model's reasoning: grammars wait for its end.
        self._think_ids = self._reasoning_token_ids(reasoning_parser)
        # What requests leave unset defaults to (vLLM's get_diff_sampling_param).
        self.default_sampling_params = model_sampling_defaults(
            self.model_config.model_path, generation_config, override_generation_config)
        self._next_handle = 1
        self._time_output = 0.0
        self._last_log = (time.monotonic(), 0, 0)  # (when, prompt tokens, generation tokens)

    @classmethod
    def from_engine_args(
        cls, engine_args: EngineArgs, usage_context: UsageContext = UsageContext.ENGINE_CONTEXT
    ) -> "LLMEngine":
        config = engine_args.create_engine_config()
        return cls(
            config,
            max_logprobs=engine_args.max_logprobs,
            log_stats=not engine_args.disable_log_stats,
            skip_tokenizer_init=engine_args.skip_tokenizer_init,
            reasoning_parser=engine_args.reasoning_parser,
            generation_config=engine_args.generation_config,
            override_generation_config=engine_args.override_generation_config,
        )

    # -- model info -----------------------------------------------------------------------------
    @property
    def max_model_len(self) -> int:
        return self.engine_core.max_model_len

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def shutdown(self) -> None:
        """Stop tensor-parallel workers, if any. The engine is unusable afterwards."""
        self.engine_core.close()

    def get_model_config(self) -> Any:
        return self.model_config

    # -- requests ---------------------------------------------------------------------------------
    def tokenize_prompt(self, prompt: PromptType) -> tuple[Optional[str], list[int]]:
        text, ids = parse_prompt(prompt)
        if ids is None:
            if self.tokenizer is None:
                raise ValueError("prompt: text prompts need a tokenizer; pass token ids")
            ids = list(self.tokenizer.encode(text))
        return text, ids

    def add_request(
        self,
        request_id: str,
        prompt: PromptType,
        params: Optional[SamplingParams] = None,
        arrival_time: Optional[float] = None,
        priority: int = 0,
        lora_request: Optional[LoRARequest] = None,
    ) -> None:
        """Queue a request. ValueError for a duplicate id or an invalid prompt/params, or a
        lora_request this engine cannot serve (LoRA off, an unusable adapter)."""
        if not isinstance(request_id, str):
            request_id = str(request_id)
        if self.output_processor.has_request(request_id):
            raise ValueError(f"request_id: {request_id!r} is already running")
        if self.runner_type == "pooling":
            return self._add_pooling_request(request_id, prompt, params, arrival_time)
        params = SamplingParams() if params is None else params
        if isinstance(params, PoolingParams):
            raise ValueError("pooling_params: embedding needs a pooling model; start the engine "
                             "with runner='pooling' (--runner pooling)")
        if not isinstance(params, SamplingParams):
            raise ValueError(
                f"sampling_params: expected SamplingParams, got {type(params).__name__}"
            )
        arrival_time = time.time() if arrival_time is None else arrival_time
        if lora_request is not None:
            self.engine_core.check_lora(lora_request)
        text, ids = self.tokenize_prompt(prompt)
        self._validate(ids, params)
        if priority:
            params = params.clone()
            params.priority = priority
        bad_words_ids = self._bad_words_token_ids(params.bad_words) if params.bad_words else []
        grammar = grammar_after = None
        if params.structured_outputs is not None:
            grammar = self._grammar_compiler().compile(params.structured_outputs)
            grammar_after = self._reasoning_end_pending(ids)
        max_tokens = params.max_tokens
        room = self.max_model_len - len(ids)
        max_tokens = room if max_tokens is None else min(max_tokens, room)
        handles = [self._new_handle() for _ in range(params.n)]
        added: list[int] = []
        try:
            for index, handle in enumerate(handles):
                child_params = params
                if params.n > 1 and params.seed is not None:
                    child_params = params.clone()
                    child_params.seed = params.seed + index  # distinct but reproducible samples
                self.engine_core.add_request(handle, ids, child_params, arrival_time, max_tokens,
                                             bad_words_ids, grammar, grammar_after, lora_request)
                added.append(handle)
        except Exception:
            for h in added:
                self.engine_core.abort_request(h)
            raise
        self.output_processor.add_request(request_id, text, ids, params, handles, arrival_time,
                                          lora_request)

    def _add_pooling_request(self, request_id: str, prompt: PromptType,
                             params: Optional[PoolingParams],
                             arrival_time: Optional[float]) -> None:
        params = PoolingParams() if params is None else params
        if not isinstance(params, PoolingParams):
            raise ValueError("sampling_params: this is a pooling model (runner 'pooling'); it "
                             "embeds prompts and cannot generate. Start the engine with "
                             "runner='generate' to generate")
        hf_config = self.model_config.hf_config
        params.verify(int(hf_config.hidden_size),
                      bool(getattr(hf_config, "is_matryoshka", False)
                           or getattr(hf_config, "matryoshka_dimensions", None)),
                      self.model_config.model)
        text, ids = self.tokenize_prompt(prompt)
        self._check_prompt_ids(ids)
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt: {len(ids)} tokens; a pooling prompt must be shorter than "
                             f"max_model_len {self.max_model_len}")
        arrival_time = time.time() if arrival_time is None else arrival_time
        handle = self._new_handle()
        self.engine_core.add_request(handle, ids, params, arrival_time, 1)
        self.output_processor.add_request(request_id, text, ids, params, [handle], arrival_time)

    # -- LoRA adapters (vLLM's methods) ------------------------------------------------------------
    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Check an adapter and load it ahead of its requests; ValueError if unusable."""
        return self.engine_core.add_lora(lora_request)

    def remove_lora(self, lora_id: int) -> bool:
        """Unload an adapter; False if it is unknown or requests still use it."""
        return self.engine_core.remove_lora(lora_id)

    def list_loras(self) -> set[int]:
        """Ids of the adapters loaded now."""
        return self.engine_core.list_loras()

    def _reasoning_token_ids(self, parser_name: Optional[str]) -> Optional[tuple[int, int]]:
        if not parser_name:
            return None
        from pagedllm.reasoning import make_reasoning_parser

        parser = make_reasoning_parser(parser_name)
        if self.tokenizer is None:
            raise ValueError("reasoning_parser: needs a tokenizer (skip_tokenizer_init is set)")
        ids = []
        for marker in (parser.START, parser.END):
            encoded = self.tokenizer.encode(marker, add_special_tokens=False)
            if len(encoded) != 1:
                raise ValueError(f"reasoning_parser {parser_name!r}: the tokenizer has no "
                                 f"single token for {marker!r} (got {encoded})")
            ids.append(encoded[0])
        return ids[0], ids[1]

    def _reasoning_end_pending(self, prompt_ids: list[int]) -> Optional[int]:
        """The token that ends the reasoning the output starts in, or None when the prompt has
        already ended it (e.g. a template that turned thinking off) or there is no parser."""
        if self._think_ids is None:
            return None
        start, end = self._think_ids
        for tok in reversed(prompt_ids):
            if tok == end:
                return None
            if tok == start:
                break
        return end

    def _grammar_compiler(self) -> Any:
        """Structured outputs' compiler for this tokenizer, built on first use."""
        if self._compiler is None:
            from pagedllm.structured_outputs import GrammarCompiler

            if self.tokenizer is None:
                raise ValueError(
                    "structured_outputs: needs a tokenizer (skip_tokenizer_init is set)"
                )
            core = self.engine_core
            stops = [] if core.eos_token_id is None else [int(core.eos_token_id)]
            stops += [t for t in core.extra_eos_ids if t not in stops]
            self._compiler = GrammarCompiler(self.tokenizer, core.vocab_size, stops)
        return self._compiler

    def _bad_words_token_ids(self, words: list[str]) -> list[list[int]]:
        """The token sequences that spell each bad word, as it starts a text and after a space
        (most tokenizers fold the space into the word's first token); duplicates dropped."""
        sequences: list[list[int]] = []
        for word in words:
            for text in (word.lstrip(), " " + word.lstrip()):
                ids = list(self.tokenizer.encode(text, add_special_tokens=False))
                if ids and ids not in sequences:
                    sequences.append(ids)
        return sequences

    def _check_prompt_ids(self, ids: list[int]) -> None:
        """ValueError for an empty prompt or a token id outside the vocabulary."""
        if not ids:
            raise ValueError("prompt: must not be empty")
        vocab = self.engine_core.vocab_size
        bad = [t for t in ids if not (0 <= t < vocab)]
        if bad:
            raise ValueError(
                f"prompt_token_ids: token id {bad[0]} is outside the vocabulary [0, {vocab})"
            )

    def _validate(self, ids: list[int], params: SamplingParams) -> None:
        self._check_prompt_ids(ids)
        params.check_token_ids(self.engine_core.vocab_size)
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt: {len(ids)} tokens leaves no room under max_model_len {self.max_model_len}"
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > self.max_logprobs:
                raise ValueError(f"{name}: {value} exceeds max_logprobs {self.max_logprobs}")
        if self.tokenizer is None and params.stop:
            raise ValueError("stop: stop strings need a tokenizer (skip_tokenizer_init is set)")
        if self.tokenizer is None and params.bad_words:
            raise ValueError("bad_words: need a tokenizer (skip_tokenizer_init is set)")
        if params.prompt_logprobs is not None and params.n > 1:
            raise ValueError("prompt_logprobs: not supported together with n > 1")

    def _new_handle(self) -> int:
        h = self._next_handle
        self._next_handle += 1
        return h

    def abort_request(self, request_id: Union[str, Iterable[str]]) -> list[RequestOutput]:
        """Abort requests (unknown or finished ids are ignored). Returns their final outputs
        (finish_reason "abort")."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        finals = []
        for rid in ids:
            for h in self.output_processor.unfinished_handles(rid):
                self.engine_core.abort_request(h)
            ro = self.output_processor.abort_request(rid)
            if ro is not None:
                finals.append(ro)
        return finals

    def has_request(self, request_id: str) -> bool:
        return self.output_processor.has_request(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.output_processor.requests) or self.engine_core.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.requests)

    # -- stepping ---------------------------------------------------------------------------------
    def step_with_failures(self) -> tuple[list[RequestOutput], dict[str, BaseException]]:
        """One engine step. Returns the outputs, and the requests that a failed model forward
        took down (request_id -> the exception); the engine itself stays usable."""
        try:
            core_outputs = self.engine_core.step()
        except StepFailedError as e:
            failed = {}
            for rid in self.output_processor.fail_handles(e.handles, e.cause):
                for h in self.output_processor.pop_failed(rid):
                    self.engine_core.abort_request(h)
                failed[rid] = e.cause
            return [], failed
        t0 = time.perf_counter()
        outputs, to_abort = self.output_processor.process_outputs(core_outputs)
        for h in to_abort:
            self.engine_core.abort_request(h)
        self._time_output += time.perf_counter() - t0
        if self.log_stats:
            self._maybe_log_stats()
        return outputs, {}

    def step(self) -> list[RequestOutput]:
        outputs, failed = self.step_with_failures()
        if failed:
            first = next(iter(failed.values()))
            raise RuntimeError(f"step failed for requests {sorted(failed)}") from first
        return outputs

    def _maybe_log_stats(self) -> None:
        now = time.monotonic()
        then, prompt0, gen0 = self._last_log
        if now - then < _STATS_LOG_INTERVAL_S:
            return
        core = self.engine_core
        s = core.stats()
        logger.info(
            "prompt throughput: %.1f tok/s, generation throughput: %.1f tok/s, running: %d, "
            "waiting: %d, KV cache usage: %.1f%%, prefix cache hit rate: %.1f%%",
            (core.num_prompt_tokens - prompt0) / (now - then),
            (core.num_generation_tokens - gen0) / (now - then),
            s.num_running,
            s.num_waiting,
            100 * s.kv_cache_usage,
            100 * s.prefix_cache_hits / max(s.prefix_cache_queries, 1),
        )
        self._last_log = (now, core.num_prompt_tokens, core.num_generation_tokens)

    # -- stats ------------------------------------------------------------------------------------
    def get_stats(self) -> EngineStats:
        s = self.engine_core.stats()
        core = self.engine_core
        steps = max(core.num_steps, 1)
        return EngineStats(
            num_running=s.num_running,
            num_waiting=s.num_waiting + core.num_lora_waiting,  # LoRA ones held for a slot
            num_blocks_total=s.num_blocks_total,
            num_blocks_used=s.num_blocks_used,
            num_blocks_free=s.num_blocks_free,
            kv_cache_usage=s.kv_cache_usage,
            prefix_cache_queries=s.prefix_cache_queries,
            prefix_cache_hits=s.prefix_cache_hits,
            num_preemptions=s.num_preemptions,
            num_unfinished_requests=self.get_num_unfinished_requests(),
            num_prompt_tokens=core.num_prompt_tokens,
            num_generation_tokens=core.num_generation_tokens,
            num_steps=core.num_steps,
            mean_step_host_s=(core.time_host + self._time_output) / steps,
            mean_step_model_s=core.time_model / steps,
        )

    def reset_prefix_cache(self) -> bool:
        return self.engine_core.reset_prefix_cache()
