"""A deterministic stand-in for AsyncLLMEngine (vLLM's API), for HTTP-layer tests only.

It produces token `(prompt_sum * 31 + 7 * k + seed) % (vocab - 8) + 8` at step k (never a
special token), one token per `step_s` for every running request, and keeps block accounting
like the real engine (ceil(tokens / 16) blocks per running request), so disconnect and abort
handling can be checked through /metrics. Run as a script it serves like
`python -m pagedllm.entrypoints.openai.api_server` but with this engine.
"""

from __future__ import annotations

import asyncio
import math
import sys
from dataclasses import dataclass
from typing import Any, AsyncIterator

from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.outputs import CompletionOutput, Logprob, RequestOutput
from pagedllm.sampling_params import SamplingParams


@dataclass
class FakeModelConfig:
    model: str
    max_model_len: int
    hf_config: Any
    dtype: str = "float32"


@dataclass
class FakeStats:
    num_running: int
    num_waiting: int
    num_blocks_total: int
    num_blocks_used: int
    num_blocks_free: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int


class FakeEngine:
    device = "cpu(fake)"

    def __init__(self, model_dir: str, max_model_len: int = 256, step_s: float = 0.005) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model_config = FakeModelConfig(
            model_dir, max_model_len, AutoConfig.from_pretrained(model_dir)
        )
        self.vocab = self.model_config.hf_config.vocab_size
        self.step_s = step_s
        self.blocks_in_use: dict[str, int] = {}
        self.aborted: set[str] = set()
        self.errored = False
        self.prompt_queries = 0
        self._fault_injector = None

    async def get_tokenizer(self) -> Any:
        return self.tokenizer

    async def get_model_config(self) -> FakeModelConfig:
        return self.model_config

    async def check_health(self) -> None:
        if self.errored:
            raise RuntimeError("dead")

    def get_stats(self) -> FakeStats:
        used = sum(self.blocks_in_use.values())
        return FakeStats(
            len(self.blocks_in_use), 0, 1000, used, 1000 - used, self.prompt_queries, 0, 0
        )

    def abort_request(self, request_id: str) -> None:
        self.aborted.add(request_id)
        self.blocks_in_use.pop(request_id, None)

    def shutdown(self) -> None:
        pass

    async def generate(
        self, prompt: dict, params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        ids = list(prompt["prompt_token_ids"])
        if len(ids) + (params.max_tokens or 0) > self.model_config.max_model_len:
            raise ValueError("prompt too long")
        self.prompt_queries += len(ids)
        seqs = []
        for j in range(params.n):
            seqs.append(
                {
                    "tokens": [],
                    "detok": IncrementalDetokenizer(self.tokenizer, ids, params),
                    "lps": [],
                    "finish": None,
                    "stop": None,
                }
            )
        self.blocks_in_use[request_id] = math.ceil(len(ids) / 16)
        base = sum(ids) * 31 + (params.seed or 0)
        try:
            for k in range(params.max_tokens or 16):
                await asyncio.sleep(self.step_s)
                if request_id in self.aborted:
                    return
                if self._fault_injector is not None:
                    self._fault_injector()
                for j, s in enumerate(seqs):
                    if s["finish"]:
                        continue
                    jitter = 13 * j if params.temperature > 0 else 0
                    tok = (base + 7 * k + jitter) % (self.vocab - 8) + 8
                    s["tokens"].append(tok)
                    if params.logprobs is not None:
                        s["lps"].append(
                            {tok: Logprob(-0.5, 1)}
                            | {
                                (tok + r) % self.vocab: Logprob(-1.0 - r, r + 1)
                                for r in range(1, params.logprobs + 1)
                            }
                        )
                    stop = s["detok"].update([tok], False)
                    if stop is not None:
                        s["finish"], s["stop"] = "stop", stop
                    elif len(s["tokens"]) >= params.max_tokens:
                        s["detok"].finish()
                        s["finish"] = "length"
                self.blocks_in_use[request_id] = math.ceil((len(ids) + len(seqs[0]["tokens"])) / 16)
                done = all(s["finish"] for s in seqs)
                prompt_lps = None
                if params.prompt_logprobs is not None:
                    prompt_lps = [None] + [{t: Logprob(-2.0, 1)} for t in ids[1:]]
                yield RequestOutput(
                    request_id,
                    None,
                    ids,
                    prompt_lps,
                    [
                        CompletionOutput(
                            j,
                            s["detok"].text,
                            list(s["tokens"]),
                            None,
                            list(s["lps"]) if params.logprobs is not None else None,
                            s["finish"],
                            s["stop"],
                        )
                        for j, s in enumerate(seqs)
                    ],
                    done,
                )
                if done:
                    return
        finally:
            self.blocks_in_use.pop(request_id, None)


def main() -> int:
    from pagedllm.entrypoints.openai.api_server import make_parser, run_server, setup_logging

    args = make_parser().parse_args(sys.argv[1:])
    setup_logging(args.log_level)
    return asyncio.run(run_server(args, engine=FakeEngine(args.model, args.max_model_len or 256)))


if __name__ == "__main__":
    sys.exit(main())
