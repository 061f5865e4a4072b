"""The sampler: one step's logits [N, V] -> one token per row, plus logprobs when asked.

Order of operations per row (vLLM's): logprobs are taken from the raw model logits; then the
structured-output and allowed-token masks, logit bias, min_tokens and bad-word masking,
penalties, temperature, min_p, top_k and top_p; then the draw.
Drawing uses the exponential race (argmax of p / E, E ~ Exp(1)), which samples exactly from p and
lets a seeded request draw its own noise from its own torch.Generator: its tokens then depend
only on its seed and its own history, never on which requests share the batch.
The common case (no penalties, no seeds) is fully vectorised over the batch; on CUDA, batches
without top-k / top-p / min-p and without seeds take one fused kernel (ops.exponential_race_sample:
the same race in Gumbel form, Philox noise, one pass over the logits in their own dtype).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from pagedllm import ops
from pagedllm.structured_outputs import allowed_mask

_NEG_INF = float("-inf")


@dataclass
class SamplingRow:
    """What the sampler needs to know about one sampled row."""

    temperature: float = 0.0  # < 1e-5 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    generator: Optional[torch.Generator] = None  # seeded requests only
    num_logprobs: Optional[int] = None  # None: no logprobs for this row
    prompt_token_ids: Sequence[int] = ()  # for the repetition penalty
    output_token_ids: Sequence[int] = ()  # for all three penalties
    banned_token_ids: Sequence[int] = ()  # masked to -inf (stop/EOS tokens before min_tokens)
    # SamplingParams.allowed_token_ids / logit_bias: sequences or (pinned) CPU tensors of ids
    # [A] int64, ids [B] int64 and biases [B] float32.
    allowed_token_ids: Sequence[int] = ()
    bias_token_ids: Sequence[int] = ()
    bias_values: Sequence[float] = ()
    # Structured outputs: [ceil(V / 32)] int32 host bitmask of the tokens allowed next (bit j of
    # word w is token 32 w + j), refreshed in place by the engine before each draw.
    grammar_bitmask: Optional[torch.Tensor] = None

    @property
    def is_greedy(self) -> bool:
        return self.temperature < 1e-5

    @property
    def has_logit_edits(self) -> bool:
        """The row carries a grammar bitmask, an allowed set or a logit bias: edits of the
        logits the sampler makes before bans and penalties."""
        return (len(self.allowed_token_ids) > 0 or len(self.bias_token_ids) > 0
                or self.grammar_bitmask is not None)

    @property
    def has_penalties(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )


# Per-row numbers SamplingBatch needs, in this column order (row_columns builds one tuple).
_COLUMNS = ("temperature", "top_p", "top_k", "min_p", "penalties", "seeded", "num_logprobs",
            "banned", "logit_edits")
_NUM_COLUMNS = len(_COLUMNS)


def row_columns(row: SamplingRow) -> tuple:
    """The row's numbers for SamplingBatch (num_logprobs -1 means none). The engine caches this
    tuple per request: only `banned` can change over a request's life."""
    return (
        row.temperature,
        row.top_p,
        row.top_k,
        row.min_p,
        row.has_penalties,
        row.generator is not None,
        -1 if row.num_logprobs is None else row.num_logprobs,
        len(row.banned_token_ids) > 0,
        row.has_logit_edits,
    )


class SamplingBatch:
    """One step's rows, packed once. Flags are computed with numpy over all rows; only the device
    tensors the sampler will read are built (at construction), so an all-greedy batch costs no
    host-to-device copies; the others are built on first access. `columns` ([N, 9] rows of
    row_columns, in row order) may be passed by a caller that caches them per request."""

    def __init__(
        self,
        rows: list[SamplingRow],
        device: torch.device | str = "cpu",
        columns: Optional[list[tuple]] = None,
    ) -> None:
        self.rows = rows
        self.device = torch.device(device)
        if columns is None:
            columns = [row_columns(r) for r in rows]
        table = np.array(columns, dtype=np.float64).reshape(len(rows), _NUM_COLUMNS)  # [N, 9]
        temperature = table[:, 0]  # [N]
        greedy = temperature < 1e-5  # [N] bool
        self._greedy = greedy
        # Greedy rows get temperature 1 so the division is harmless; their draw is argmax anyway.
        self._temperature = np.where(greedy, 1.0, temperature).astype(np.float32)  # [N]
        self._top_p = table[:, 1].astype(np.float32)  # [N]
        self._top_k = table[:, 2].astype(np.int64)  # [N]
        self._min_p = table[:, 3].astype(np.float32)  # [N]
        self.all_greedy = bool(greedy.all())
        self.any_greedy = bool(greedy.any())
        self.all_temperature_one = bool((self._temperature == 1.0).all())
        self.any_penalties = bool(table[:, 4].any())
        self.any_banned = bool(table[:, 7].any())
        self.any_logit_edits = bool(table[:, 8].any())
        self.any_seeded = bool((table[:, 5].astype(bool) & ~greedy).any())
        num_logprobs = table[:, 6]  # [N]
        self.max_num_logprobs: Optional[int] = (
            int(num_logprobs.max()) if len(rows) and num_logprobs.max() >= 0 else None
        )
        self.need_top_p = bool((self._top_p < 1.0).any())
        self.need_top_k = bool((self._top_k > 0).any())
        self.need_min_p = bool((self._min_p > 0.0).any())
        # The fused exponential-race kernel serves the batch (Sampler._draw): nothing filtered,
        # no per-request generators.
        self.race_applies = not (self.all_greedy or self.need_min_p or self.need_top_k
                                 or self.need_top_p or self.any_seeded)
        # Copy what the sampler will read now, before the engine launches the forward: a
        # blocking host-to-device copy issued after the launch would wait for the forward.
        if self.race_applies and self.device.type == "cuda":
            _ = self.inv_temperature, self.greedy_flags
        elif not self.all_greedy:
            _ = self.temperature, self.greedy_mask
            if self.need_top_p:
                _ = self.top_p
            if self.need_top_k:
                _ = self.top_k
            if self.need_min_p:
                _ = self.min_p

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    @functools.cached_property
    def temperature(self) -> torch.Tensor:  # [N] float32
        return self._to_device(self._temperature)

    @functools.cached_property
    def greedy_mask(self) -> torch.Tensor:  # [N] bool
        return self._to_device(self._greedy)

    @functools.cached_property
    def inv_temperature(self) -> torch.Tensor:  # [N] float32 (1 on greedy rows)
        return self._to_device((1.0 / self._temperature).astype(np.float32))

    @functools.cached_property
    def greedy_flags(self) -> torch.Tensor:  # [N] int32
        return self._to_device(self._greedy.astype(np.int32))

    @functools.cached_property
    def top_p(self) -> torch.Tensor:  # [N] float32
        return self._to_device(self._top_p)

    @functools.cached_property
    def top_k(self) -> torch.Tensor:  # [N] int64
        return self._to_device(self._top_k)

    @functools.cached_property
    def min_p(self) -> torch.Tensor:  # [N] float32
        return self._to_device(self._min_p)


@dataclass
class SamplerOutput:
    token_ids: np.ndarray  # [N] int32
    logprobs: Optional[np.ndarray] = None  # [N] float32, log p(sampled token) from raw logits
    ranks: Optional[np.ndarray] = None  # [N] int64, 1-based rank of the sampled token
    topk_token_ids: Optional[np.ndarray] = None  # [N, K] int64, K = max num_logprobs in the batch
    topk_logprobs: Optional[np.ndarray] = None  # [N, K] float32


def _on_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A row's ids or biases on the logits' device. Tensors (pinned on the host by the engine)
    travel without blocking; plain sequences (tests, CPU) are converted."""
    if isinstance(values, torch.Tensor):
        return values.to(device=device, dtype=dtype, non_blocking=True)
    return torch.tensor(list(values), dtype=dtype, device=device)


def _check_rows(logits: torch.Tensor, batch: SamplingBatch) -> None:
    if logits.shape[0] != len(batch.rows):
        raise ValueError(f"logits has {logits.shape[0]} rows, batch has {len(batch.rows)}")


class PendingSample:
    """Token ids on their way to the host: wait() blocks until the copy has landed.
    device_token_ids stays readable by later work on the same stream (the next step's deferred
    input tokens) without waiting."""

    def __init__(self, host_token_ids: torch.Tensor, event: Optional["torch.cuda.Event"],
                 device_token_ids: torch.Tensor):
        self._host = host_token_ids  # [N] int32, CPU (pinned when it came from a GPU)
        self._event = event
        self.device_token_ids = device_token_ids  # [N] int32 on the logits' device

    def wait(self) -> SamplerOutput:
        if self._event is not None:
            self._event.synchronize()
        return SamplerOutput(token_ids=self._host.numpy())


def token_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For rows of log-probabilities [N, V] and chosen tokens [N]: the chosen token's logprob,
    its 1-based rank, and the top-k (ids, logprobs). Shared with prompt logprobs."""
    chosen = logprobs.gather(1, token_ids.view(-1, 1).long()).squeeze(1)  # [N]
    ranks = (logprobs > chosen.unsqueeze(1)).sum(dim=1) + 1  # [N]
    if k > 0:
        top_vals, top_ids = logprobs.topk(k, dim=1)  # [N, k]
    else:
        top_vals = logprobs.new_empty((logprobs.shape[0], 0))
        top_ids = torch.empty((logprobs.shape[0], 0), dtype=torch.int64, device=logprobs.device)
    return (
        chosen.float().cpu().numpy(),
        ranks.cpu().numpy(),
        top_ids.cpu().numpy(),
        top_vals.float().cpu().numpy(),
    )


class Sampler:
    def __init__(self, seed: Optional[int] = None) -> None:
        # Noise for unseeded rows; seeded rows use their own generators. With a seed (the
        # engine's: EngineArgs.seed, 0 by default) that noise starts from it on every device, so
        # an engine run repeats its sampled tokens, as vLLM's seed promises; None: torch's global
        # CPU generator, and on CUDA a generator seeded afresh by torch.
        self._seed = seed
        self._default_generator: Optional[torch.Generator] = None
        # The fused kernel's Philox counter advances by one step per draw.
        self._race_step = 0

    def sample(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """logits: [N, V] (any float dtype) on any device. Returns int32 token ids [N] (numpy)."""
        _check_rows(logits, batch)
        raw_logprobs = None
        if batch.max_num_logprobs is not None:
            logits = logits.float()  # once, for the logprobs and the draw alike
            raw_logprobs = torch.log_softmax(logits, dim=-1)  # [N, V]
        token_ids = self._draw(logits, batch)
        out = SamplerOutput(token_ids=token_ids.to(torch.int32).cpu().numpy())
        if raw_logprobs is not None:
            k = int(batch.max_num_logprobs or 0)
            out.logprobs, out.ranks, out.topk_token_ids, out.topk_logprobs = token_logprobs(
                raw_logprobs, token_ids, k
            )
        return out

    def sample_async(self, logits: torch.Tensor, batch: SamplingBatch) -> "PendingSample":
        """As sample(), for batches without logprobs, without waiting for the device: the token
        ids are copied to pinned host memory behind an event; PendingSample.wait() reads them."""
        _check_rows(logits, batch)
        if batch.max_num_logprobs is not None:
            raise ValueError("sample_async: logprobs need the synchronous sample()")
        token_ids = self._draw(logits, batch).to(torch.int32)  # [N]
        if not token_ids.is_cuda:
            return PendingSample(token_ids, None, token_ids)
        host = token_ids.to("cpu", non_blocking=True)  # pinned destination
        event = torch.cuda.Event()
        event.record()
        return PendingSample(host, event, token_ids)

    def _draw(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """One token per row [N] (int64, on the logits' device): masks, penalties, then the draw.
        Logits stay in their own dtype unless a step below needs float32."""
        if batch.any_banned or batch.any_penalties or batch.any_logit_edits:
            # Edited in place below; the caller's tensor stays intact.
            logits = logits.to(torch.float32, copy=True)
        if batch.any_logit_edits:
            self._apply_masks_and_bias(logits, batch)
        if batch.any_banned:
            self._ban_tokens(logits, batch)
        if batch.any_penalties:
            self._apply_penalties(logits, batch)
        if batch.all_greedy:
            return logits.argmax(dim=-1)  # [N]
        if batch.race_applies and ops.exponential_race_sample_supported(logits):
            # One fused pass (kernels/sampling.h) instead of cast, divide, noise, log, argmax.
            self._race_step += 1
            return ops.exponential_race_sample(logits, batch.inv_temperature, batch.greedy_flags,
                                               self._race_seed(logits.device), self._race_step)
        return self._sample_random(logits.float(), batch)

    # -- logits processing ----------------------------------------------------------------------
    @staticmethod
    def _ban_tokens(logits: torch.Tensor, batch: SamplingBatch) -> None:
        for i, row in enumerate(batch.rows):
            if len(row.banned_token_ids):
                ids = torch.tensor(
                    list(row.banned_token_ids), dtype=torch.long, device=logits.device
                )
                logits[i, ids] = _NEG_INF

    @staticmethod
    def _apply_masks_and_bias(logits: torch.Tensor, batch: SamplingBatch) -> None:
        """vLLM's order: the grammar's and the allowed-token masks first, then the bias (all
        before penalties)."""
        vocab = logits.shape[1]
        for i, row in enumerate(batch.rows):
            if row.grammar_bitmask is not None:
                bitmask = row.grammar_bitmask.to(logits.device)
                logits[i].masked_fill_(~allowed_mask(bitmask, vocab), _NEG_INF)
            if len(row.allowed_token_ids):
                ids = _on_device(row.allowed_token_ids, torch.long, logits.device)
                kept = logits[i, ids]
                logits[i].fill_(_NEG_INF)
                logits[i, ids] = kept
            if len(row.bias_token_ids):
                ids = _on_device(row.bias_token_ids, torch.long, logits.device)
                bias = _on_device(row.bias_values, logits.dtype, logits.device)
                logits[i].index_add_(0, ids, bias)

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> None:
        """Repetition (prompt + output tokens, divide positive / multiply negative logits),
        then frequency (x count) and presence (x seen) over output tokens only."""
        vocab = logits.shape[1]
        for i, row in enumerate(batch.rows):
            if not row.has_penalties:
                continue
            out_ids = torch.tensor(
                list(row.output_token_ids), dtype=torch.long, device=logits.device
            )
            counts = torch.bincount(out_ids, minlength=vocab)[:vocab].to(logits.dtype)  # [V]
            if row.repetition_penalty != 1.0:
                seen = counts > 0
                if len(row.prompt_token_ids):
                    prompt_ids = torch.tensor(
                        list(row.prompt_token_ids), dtype=torch.long, device=logits.device
                    )
                    seen[prompt_ids] = True
                r = row.repetition_penalty
                rowv = logits[i]
                penalised = torch.where(rowv > 0, rowv / r, rowv * r)
                logits[i] = torch.where(seen, penalised, rowv)
            if row.frequency_penalty != 0.0:
                logits[i] -= row.frequency_penalty * counts
            if row.presence_penalty != 0.0:
                logits[i] -= row.presence_penalty * (counts > 0).to(logits.dtype)

    def _sample_random(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        greedy_ids = logits.argmax(dim=-1) if batch.any_greedy else None  # [N]
        if batch.need_min_p or batch.need_top_k or batch.need_top_p:
            sampled = self._sample_filtered(logits, batch)
        else:
            # argmax_i p_i / E_i == argmax_i (logit_i / T - log E_i): the softmax normaliser is
            # the same for every token of a row, so the plain case needs no softmax pass.
            if not batch.all_temperature_one:
                logits = logits / batch.temperature.unsqueeze(1)
            # Exp(1) draws can be exactly 0; clamp so log E stays finite (-inf - -inf is NaN).
            log_noise = self._exponential_noise(logits, batch).clamp_min_(1e-20).log_()
            sampled = (logits - log_noise).argmax(dim=-1)  # [N]
        if greedy_ids is None:
            return sampled
        return torch.where(batch.greedy_mask, greedy_ids, sampled)

    def _sample_filtered(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """The draw when min_p, top_k or top_p zero out part of the distribution."""
        logits = logits / batch.temperature.unsqueeze(1)
        probs = torch.softmax(logits, dim=-1)  # [N, V]
        if batch.need_min_p:
            # Keep tokens with p >= min_p * p_max.
            p_max = probs.max(dim=-1, keepdim=True).values
            probs = probs.masked_fill(probs < batch.min_p.unsqueeze(1) * p_max, 0.0)
        if batch.need_top_k or batch.need_top_p:
            probs = self._top_k_top_p(probs, batch)
        # Exp(1) draws can be exactly 0; clamp so p / E never becomes 0/0.
        noise = self._exponential_noise(probs, batch).clamp_min_(1e-20)  # [N, V]
        return (probs / noise).argmax(dim=-1)  # [N]

    @staticmethod
    def _top_k_top_p(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Zero out tokens outside the top_k and outside the smallest top_p nucleus.
        The most likely token always survives."""
        vocab = probs.shape[1]
        sorted_p, order = probs.sort(dim=-1, descending=True)  # [N, V]
        keep = torch.ones_like(sorted_p, dtype=torch.bool)
        if batch.need_top_k:
            k = torch.where(batch.top_k > 0, batch.top_k, torch.full_like(batch.top_k, vocab))
            ranks = torch.arange(vocab, device=probs.device).unsqueeze(0)  # [1, V]
            keep &= ranks < k.unsqueeze(1)
            sorted_p = sorted_p * keep
        if batch.need_top_p:
            # Renormalise after top-k so top_p applies to what is left (vLLM's order).
            sorted_p = sorted_p / sorted_p.sum(dim=-1, keepdim=True)
            mass_before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of better tokens
            keep &= mass_before < batch.top_p.unsqueeze(1)
        keep[:, 0] = True
        filtered = torch.zeros_like(probs)
        filtered.scatter_(1, order, (probs.gather(1, order)) * keep)
        return filtered

    def _exponential_noise(self, probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        noise = torch.empty_like(probs)
        if not batch.any_seeded:
            return noise.exponential_(generator=self._generator_for(probs.device))
        unseeded = [i for i, r in enumerate(batch.rows) if r.generator is None]
        if unseeded:
            idx = torch.tensor(unseeded, device=probs.device)
            noise[idx] = torch.empty(
                (len(unseeded), probs.shape[1]), device=probs.device
            ).exponential_(generator=self._generator_for(probs.device))
        for i, r in enumerate(batch.rows):
            if r.generator is not None:
                # One full-vocab draw per step: the stream depends on the seed and step count only.
                noise[i].exponential_(generator=r.generator)
        return noise

    def _race_seed(self, device: torch.device) -> int:
        """The fused kernel's Philox key: the seed of the noise generator unseeded rows use."""
        generator = self._generator_for(device)
        return generator.initial_seed() if generator is not None else torch.initial_seed()

    def _generator_for(self, device: torch.device) -> Optional[torch.Generator]:
        if self._seed is None and device.type == "cpu":
            return None  # torch's global CPU generator
        if self._default_generator is None or self._default_generator.device != device:
            self._default_generator = torch.Generator(device=device)
            if self._seed is None:
                self._default_generator.seed()
            else:
                self._default_generator.manual_seed(self._seed)
        return self._default_generator
