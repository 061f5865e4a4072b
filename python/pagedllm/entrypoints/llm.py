"""LLM: offline batch inference (vLLM's LLM class) over the synchronous LLMEngine."""

from __future__ import annotations

import itertools
import time
from typing import Any, Optional, Sequence, Union

from pagedllm.engine.arg_utils import EngineArgs
from pagedllm.engine.llm_engine import LLMEngine, PromptType
from pagedllm.lora.request import LoRARequest
from pagedllm.outputs import EmbeddingRequestOutput, PoolingRequestOutput, RequestOutput
from pagedllm.pooling_params import PoolingParams, as_pooling_params
from pagedllm.sampling_params import RequestOutputKind, SamplingParams
from pagedllm.usage.usage_lib import UsageContext

ChatMessage = dict[str, Any]


class LLM:
    """LLM(model=None, **engine_args): model None means the default SmolLM2 GGUF (offline)."""

    def __init__(self, model: Optional[str] = None, **kwargs: Any) -> None:
        kwargs.pop("usage_context", None)
        engine_args = EngineArgs(model=model, **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(engine_args, UsageContext.LLM_CLASS)
        self._counter = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.get_tokenizer()

    def get_default_sampling_params(self) -> SamplingParams:
        """The model's own sampling defaults (its generation_config.json), else vLLM's."""
        return SamplingParams.from_optional(**self.llm_engine.default_sampling_params)

    def generate(
        self,
        prompts: Union[PromptType, Sequence[PromptType], None] = None,
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: bool = True,
        *,
        prompt_token_ids: Optional[list] = None,
        priority: Optional[list[int]] = None,
        lora_request: Union[LoRARequest, Sequence[Optional[LoRARequest]], None] = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in input order. lora_request: one
        adapter for every prompt, or one (or None) per prompt (needs enable_lora)."""
        self._require_runner("generate", "LLM.generate()")
        prompt_list = self._normalize_prompts(prompts, prompt_token_ids)
        if sampling_params is None:
            params_list = [self.get_default_sampling_params()] * len(prompt_list)
        elif isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompt_list)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompt_list):
                raise ValueError(
                    f"sampling_params: {len(params_list)} given for {len(prompt_list)} prompts"
                )
        if priority is not None and len(priority) != len(prompt_list):
            raise ValueError("priority: one value per prompt is needed")
        if lora_request is None or isinstance(lora_request, LoRARequest):
            lora_list = [lora_request] * len(prompt_list)
        else:
            lora_list = list(lora_request)
            if len(lora_list) != len(prompt_list):
                raise ValueError(
                    f"lora_request: {len(lora_list)} given for {len(prompt_list)} prompts")
        # Only finished outputs are returned: FINAL_ONLY spares building a cumulative
        # RequestOutput for every running request on every step (as vLLM's LLM does).
        final_only: dict[int, SamplingParams] = {}
        for params in params_list:
            if id(params) not in final_only:
                final_only[id(params)] = params.clone()
                final_only[id(params)].output_kind = RequestOutputKind.FINAL_ONLY
        params_list = [final_only[id(p)] for p in params_list]
        ids = []
        try:
            for i, (prompt, params) in enumerate(zip(prompt_list, params_list)):
                rid = str(next(self._counter))
                self.llm_engine.add_request(
                    rid, prompt, params, priority=priority[i] if priority else 0,
                    lora_request=lora_list[i],
                )
                ids.append(rid)
        except Exception:
            self.llm_engine.abort_request(ids)
            raise
        return self._run_engine(ids, use_tqdm)

    def beam_search(self, prompts: Any, params: Any, lora_request: Any = None,
                    use_tqdm: bool = False,
                    concurrency_limit: Optional[int] = None) -> list[Any]:
        """vLLM's beam search (pagedllm.beam_search): BeamSearchParams in, one BeamSearchOutput
        per prompt, its beam_width best sequences first."""
        from pagedllm.beam_search import beam_search

        self._require_runner("generate", "LLM.beam_search()")
        return beam_search(self, prompts, params, lora_request, use_tqdm, concurrency_limit)

    def chat(
        self,
        messages: Union[list[ChatMessage], list[list[ChatMessage]]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: bool = True,
        chat_template: Optional[str] = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: Optional[dict[str, Any]] = None,
        tools: Optional[list[dict[str, Any]]] = None,
        lora_request: Union[LoRARequest, Sequence[Optional[LoRARequest]], None] = None,
    ) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to each conversation, then generate. `tools`
        (OpenAI-style tool dicts) reach the template as its `tools` variable; lora_request as
        in generate()."""
        self._require_runner("generate", "LLM.chat()")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tokenizer = self.get_tokenizer()
        prompts: list[PromptType] = []
        for conv in conversations:
            text = tokenizer.apply_chat_template(
                list(conv),
                tokenize=False,
                chat_template=chat_template,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message,
                **({"tools": tools} if tools is not None else {}),
                **(chat_template_kwargs or {}),
            )
            # The template writes the special tokens itself: do not add BOS twice.
            ids = tokenizer.encode(text, add_special_tokens=False)
            prompts.append({"prompt": text, "prompt_token_ids": ids})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm,
                             lora_request=lora_request)

    def embed(
        self,
        prompts: Union[PromptType, Sequence[PromptType]],
        pooling_params: Union[PoolingParams, Sequence[PoolingParams], None] = None,
        use_tqdm: bool = True,
        **_: Any,
    ) -> list[EmbeddingRequestOutput]:
        """One embedding per prompt, in input order (needs runner='pooling')."""
        self._require_runner("pooling", "LLM.embed()")
        return [EmbeddingRequestOutput.from_base(o)
                for o in self.encode(prompts, pooling_params, use_tqdm)]

    def encode(
        self,
        prompts: Union[PromptType, Sequence[PromptType]],
        pooling_params: Union[PoolingParams, Sequence[PoolingParams], None] = None,
        use_tqdm: bool = True,
        **_: Any,
    ) -> list[PoolingRequestOutput]:
        """The pooled hidden state (a tensor) of each prompt, in input order."""
        self._require_runner("pooling", "LLM.encode()")
        prompt_list = self._normalize_prompts(prompts, None)
        if pooling_params is None or isinstance(pooling_params, (PoolingParams, dict)):
            params_list = [as_pooling_params(pooling_params)] * len(prompt_list)
        else:
            params_list = [as_pooling_params(p) for p in pooling_params]
            if len(params_list) != len(prompt_list):
                raise ValueError(
                    f"pooling_params: {len(params_list)} given for {len(prompt_list)} prompts")
        ids = []
        try:
            for prompt, params in zip(prompt_list, params_list):
                rid = str(next(self._counter))
                self.llm_engine.add_request(rid, prompt, params)
                ids.append(rid)
        except Exception:
            self.llm_engine.abort_request(ids)
            raise
        return self._run_engine(ids, use_tqdm)

    # -- internals --------------------------------------------------------------------------------
    def _require_runner(self, runner: str, what: str) -> None:
        """vLLM's rule: generating models generate, pooling models embed."""
        if self.llm_engine.runner_type == runner:
            return
        if runner == "generate":
            raise ValueError(f"{what} is only supported for generative models. Try passing "
                             "`runner='generate'` to use the model as a generative model.")
        raise ValueError(f"{what} is only supported for pooling (embedding) models. Try "
                         "passing `runner='pooling'` to use the model as an embedding model.")

    @staticmethod
    def _normalize_prompts(prompts: Any, prompt_token_ids: Optional[list]) -> list[PromptType]:
        if prompts is None:
            if prompt_token_ids is None:
                raise ValueError("prompts: give prompts or prompt_token_ids")
            if prompt_token_ids and isinstance(prompt_token_ids[0], int):
                return [list(prompt_token_ids)]
            return [list(p) for p in prompt_token_ids]
        if isinstance(prompts, (str, dict)):
            return [prompts]
        if (
            isinstance(prompts, (list, tuple))
            and prompts
            and all(isinstance(t, int) for t in prompts)
        ):
            return [list(prompts)]  # one prompt given as token ids
        return list(prompts)

    def _run_engine(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        order = {rid: i for i, rid in enumerate(ids)}
        results: list[Optional[RequestOutput]] = [None] * len(ids)
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=len(ids),
                desc="Processed prompts",
                dynamic_ncols=True,
                postfix="est. speed input: 0.00 toks/s, output: 0.00 toks/s",
            )
        in_toks = out_toks = 0
        start = time.perf_counter()
        engine = self.llm_engine
        while engine.has_unfinished_requests():
            for out in engine.step():
                if not out.finished or out.request_id not in order:
                    continue
                results[order[out.request_id]] = out
                if bar is not None:
                    in_toks += len(out.prompt_token_ids or [])
                    if isinstance(out, RequestOutput):
                        out_toks += sum(len(c.token_ids) for c in out.outputs)
                    elapsed = max(time.perf_counter() - start, 1e-9)
                    bar.postfix = (
                        f"est. speed input: {in_toks / elapsed:.2f} toks/s, "
                        f"output: {out_toks / elapsed:.2f} toks/s"
                    )
                    bar.update(1)
        if bar is not None:
            bar.close()
        missing = [ids[i] for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"requests {missing} ended without a final output")
        return results  # type: ignore[return-value]
