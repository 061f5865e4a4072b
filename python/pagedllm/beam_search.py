"""Beam search over the engine, as vLLM's LLM.beam_search does it: every step runs each live
beam as a one-token request asking for the 2 * beam_width likeliest next tokens (the prefix
cache keeps the beam's context, so a step costs about one decode token per beam), extends the
beam by each of them, sends extensions ending in EOS to the finished list, and keeps the
beam_width best of the rest. At the end the finished beams and the live ones compete together
and the beam_width best come back, best first.

Score (vLLM's, after transformers'): cumulative logprob / len(tokens) ** length_penalty, where
tokens include the prompt and a final EOS is not counted. Logprobs are the model's own (before
temperature); temperature only changes which extra sampled token the engine also reports.
"""
from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional, Sequence, Union

from pagedllm.outputs import CompletionOutput, Logprob, RequestOutput
from pagedllm.sampling_params import BeamSearchParams, SamplingParams

if TYPE_CHECKING:
    from pagedllm.entrypoints.llm import LLM
    from pagedllm.lora import LoRARequest


@dataclass
class BeamSearchSequence:
    """One beam: all its tokens (prompt first), their logprob dicts (one per generated token)
    and the sum of the chosen tokens' logprobs. text is filled when the beam is returned."""

    tokens: list[int]
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    lora_request: Optional["LoRARequest"] = None
    cum_logprob: float = 0.0
    text: Optional[str] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None


@dataclass
class BeamSearchOutput:
    """The beam_width best sequences of one prompt, best first."""

    sequences: list[BeamSearchSequence]


def beam_score(tokens: list[int], cum_logprob: float, eos_token_id: Optional[int],
               length_penalty: float) -> float:
    length = len(tokens) - (1 if eos_token_id is not None and tokens[-1] == eos_token_id else 0)
    return cum_logprob / (max(length, 1) ** length_penalty)


def beam_search(llm: "LLM", prompts: Sequence[Any], params: BeamSearchParams,
                lora_request: Union["LoRARequest", Sequence[Optional["LoRARequest"]], None] = None,
                use_tqdm: bool = False,
                concurrency_limit: Optional[int] = None) -> list[BeamSearchOutput]:
    """LLM.beam_search: prompts as LLM.generate takes them; concurrency_limit prompts are
    searched at a time (all of them when None)."""
    if not isinstance(params, BeamSearchParams):
        raise TypeError(f"params: a BeamSearchParams is needed, got {type(params).__name__}")
    if concurrency_limit is not None and concurrency_limit < 1:
        raise ValueError(f"concurrency_limit: must be >= 1, got {concurrency_limit}")
    prompt_list = llm._normalize_prompts(prompts, None)
    if lora_request is None or not isinstance(lora_request, (list, tuple)):
        loras = [lora_request] * len(prompt_list)
    else:
        loras = list(lora_request)
        if len(loras) != len(prompt_list):
            raise ValueError(f"lora_request: {len(loras)} given for {len(prompt_list)} prompts")
    tokenizer = llm.get_tokenizer()
    eos, stop_at_eos, step_params = _step_setup(tokenizer, params)
    engine = llm.llm_engine
    searches = [_Search(engine.tokenize_prompt(p)[1], lora)
                for p, lora in zip(prompt_list, loras)]
    limit = concurrency_limit or max(len(searches), 1)
    for start in range(0, len(searches), limit):
        batch = searches[start:start + limit]
        steps = range(params.max_tokens)
        if use_tqdm:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="Beam search", unit="token")
        for _ in steps:
            if not _step(llm, batch, step_params, params, eos, stop_at_eos):
                break
    outputs = []
    for search in searches:
        best = search.best(params, eos)
        for beam in best:
            if tokenizer is not None:
                beam.text = tokenizer.decode(beam.tokens,
                                             skip_special_tokens=params.skip_special_tokens)
        outputs.append(BeamSearchOutput(best))
    return outputs


def _step_setup(tokenizer: Any, params: BeamSearchParams
                ) -> tuple[Optional[int], bool, SamplingParams]:
    """(EOS id: scores and ends beams, whether EOS ends a beam, the params of one beam's step:
    one token and its 2 * beam_width likeliest alternatives with their logprobs)."""
    eos = None if tokenizer is None else tokenizer.eos_token_id
    step_params = SamplingParams(logprobs=2 * params.beam_width, max_tokens=1,
                                 temperature=params.temperature, detokenize=False)
    return eos, eos is not None and not params.ignore_eos, step_params


class _Search:
    """One prompt's live beams and finished (EOS-ended) beams."""

    def __init__(self, prompt_ids: list[int], lora: Optional["LoRARequest"]):
        self.prompt_len = len(prompt_ids)
        self.beams = [BeamSearchSequence(list(prompt_ids), lora_request=lora)]
        self.finished: list[BeamSearchSequence] = []

    def advance(self, tops: Sequence[dict[int, Logprob]], params: BeamSearchParams,
                eos: Optional[int], stop_at_eos: bool) -> None:
        """tops[i]: the next-token logprob dict of live beam i. Extends every beam by each of
        its tokens; EOS extensions finish; the beam_width best of the rest live on."""
        candidates = []
        for beam, top in zip(self.beams, tops):
            for token, logprob in top.items():
                grown = BeamSearchSequence(beam.tokens + [token], beam.logprobs + [top],
                                           beam.lora_request, beam.cum_logprob + logprob.logprob)
                if stop_at_eos and token == eos:
                    grown.finish_reason, grown.stop_reason = "stop", token
                    self.finished.append(grown)
                else:
                    candidates.append(grown)
        candidates.sort(reverse=True, key=lambda b: beam_score(b.tokens, b.cum_logprob, eos,
                                                                 params.length_penalty))
        self.beams = candidates[:params.beam_width]

    def best(self, params: BeamSearchParams, eos: Optional[int]) -> list[BeamSearchSequence]:
        """The search's answer: finished and live beams ranked together, beam_width of them."""
        for beam in self.beams:
            beam.finish_reason = "length"
        ranked = sorted(self.finished + self.beams, reverse=True,
                        key=lambda b: beam_score(b.tokens, b.cum_logprob, eos,
                                                 params.length_penalty))
        return ranked[:params.beam_width]


def _step(llm: "LLM", batch: list[_Search], step_params: SamplingParams,
          params: BeamSearchParams, eos: Optional[int], stop_at_eos: bool) -> bool:
    """Extends every live beam of the batch by one token; False when no beam is left."""
    beams = list(itertools.chain.from_iterable(s.beams for s in batch))
    if not beams:
        return False
    results = llm.generate([{"prompt_token_ids": b.tokens} for b in beams], step_params,
                           use_tqdm=False, lora_request=[b.lora_request for b in beams])
    done = 0
    for search in batch:
        own = results[done:done + len(search.beams)]
        done += len(search.beams)
        search.advance([r.outputs[0].logprobs[0] for r in own], params, eos, stop_at_eos)
    return True


async def beam_search_stream(engine: Any, tokenizer: Any, prompt_ids: list[int],
                             params: BeamSearchParams, request_id: str,
                             lora_request: Optional["LoRARequest"] = None
                             ) -> AsyncIterator[RequestOutput]:
    """The server's beam search over an AsyncLLMEngine (vLLM's use_beam_search): the beams of
    a step run as concurrent one-token requests `{request_id}-beam{step}-{i}`; yields one
    finished RequestOutput whose outputs are the beam_width best beams (generated tokens only;
    a final EOS is left out of the text, and of the tokens unless include_stop_str_in_output).
    Cancelling the consumer aborts the step's requests (each stream aborts its own)."""
    eos, stop_at_eos, step_params = _step_setup(tokenizer, params)
    extra = {} if lora_request is None else {"lora_request": lora_request}
    search = _Search(prompt_ids, lora_request)

    async def last(beam: BeamSearchSequence, rid: str) -> RequestOutput:
        final = None
        async for out in engine.generate({"prompt_token_ids": beam.tokens}, step_params, rid,
                                         **extra):
            final = out
        return final

    for step in range(params.max_tokens):
        if not search.beams:
            break
        finals = await asyncio.gather(*(last(b, f"{request_id}-beam{step}-{i}")
                                        for i, b in enumerate(search.beams)))
        if any(f.outputs[0].finish_reason == "abort" for f in finals):
            raise RuntimeError(f"beam search {request_id}: a step's request was aborted")
        search.advance([f.outputs[0].logprobs[0] for f in finals], params, eos, stop_at_eos)
    outputs = []
    for i, beam in enumerate(search.best(params, eos)):
        generated = beam.tokens[search.prompt_len:]
        ends_in_eos = beam.finish_reason == "stop"
        shown = generated[:-1] if ends_in_eos else generated
        text = ("" if tokenizer is None
                else tokenizer.decode(shown, skip_special_tokens=params.skip_special_tokens))
        outputs.append(CompletionOutput(
            index=i, text=text,
            token_ids=generated if params.include_stop_str_in_output else shown,
            cumulative_logprob=beam.cum_logprob, logprobs=beam.logprobs,
            finish_reason=beam.finish_reason, stop_reason=beam.stop_reason))
    yield RequestOutput(request_id=request_id, prompt=None, prompt_token_ids=list(prompt_ids),
                        prompt_logprobs=None, outputs=outputs, finished=True,
                        lora_request=lora_request)
