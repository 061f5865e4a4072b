"""A small pure-Python model of pagedllm's scheduler, for checking the C++ plans bit for bit.

Scope: FCFS, chunked prefill or whole prompts, prefix caching with exact content keys, aborts,
the stop checks. No preemption: callers size the pool so that running requests always fit
(max_num_seqs * ceil(max_model_len / block_size) usable blocks), and allocation failures raise.
Written from the contract in python/pagedllm/_C/core.pyi, independently of csrc/core/.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NONE, STOP, LENGTH = 0, 1, 2


@dataclass
class RefRequest:
    handle: int
    tokens: list[int]
    num_prompt: int
    max_tokens: int
    min_tokens: int
    eos: int
    ignore_eos: bool
    stop_ids: tuple[int, ...]
    salt: str
    order: tuple[float, int]          # (arrival_time, add order)
    computed: int = 0
    blocks: list[int] = field(default_factory=list)
    num_keyed: int = 0                # blocks[:num_keyed] were offered to the cache
    cached_tokens: int = -1


class ReferenceScheduler:
    def __init__(self, *, num_blocks: int, block_size: int, max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len: int,
                 enable_prefix_caching: bool = True, enable_chunked_prefill: bool = True) -> None:
        self.bs = block_size
        self.max_num_seqs = max_num_seqs
        self.budget = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.caching = enable_prefix_caching
        self.chunked = enable_chunked_prefill
        self.max_blocks = -(-max_model_len // block_size)
        self.ref = [0] * num_blocks
        self.free: dict[int, None] = dict.fromkeys(range(1, num_blocks))  # insertion order = eviction order
        self.key_of: dict[int, tuple] = {}     # block -> content key
        self.block_of: dict[tuple, int] = {}   # content key -> block
        self.running: list[RefRequest] = []
        self.waiting: list[RefRequest] = []
        self.requests: dict[int, RefRequest] = {}
        self.queries = 0
        self.hits = 0
        self.adds = 0

    # -- requests ---------------------------------------------------------------------------
    def add(self, handle: int, prompt: list[int], *, max_tokens: int, min_tokens: int = 0, eos: int = -1,
            ignore_eos: bool = False, stop_ids: tuple[int, ...] = (), salt: str = "",
            arrival_time: float = 0.0) -> None:
        self.adds += 1
        r = RefRequest(handle, list(prompt), len(prompt), max_tokens, min_tokens, eos, ignore_eos,
                       tuple(stop_ids), salt, (arrival_time, self.adds))
        self.requests[handle] = r
        self.waiting.append(r)
        self.waiting.sort(key=lambda q: q.order)

    def abort(self, handle: int) -> bool:
        r = self.requests.pop(handle, None)
        if r is None:
            return False
        if r in self.running:
            self.running.remove(r)
        else:
            self.waiting.remove(r)
        self._free(r)
        return True

    # -- blocks -----------------------------------------------------------------------------
    def _keys(self, r: RefRequest, n: int) -> list[tuple]:
        keys, parent = [], ("root", r.salt)
        for i in range(n):
            parent = (parent, tuple(r.tokens[i * self.bs:(i + 1) * self.bs]))
            keys.append(parent)
        return keys

    def _lookup(self, r: RefRequest) -> list[int]:
        if not self.caching:
            return []
        hits = []
        for key in self._keys(r, (len(r.tokens) - 1) // self.bs):
            if key not in self.block_of:
                break
            hits.append(self.block_of[key])
        return hits

    def _allocate(self, r: RefRequest, num_new: int, hits: list[int]) -> bool:
        total = r.computed + len(hits) * self.bs + num_new
        need = max(0, -(-total // self.bs) - len(r.blocks) - len(hits))
        if need > len(self.free) - sum(1 for b in hits if self.ref[b] == 0):
            return False
        for b in hits:
            self.free.pop(b, None)
            self.ref[b] += 1
            r.blocks.append(b)
        for _ in range(need):
            b = next(iter(self.free))
            del self.free[b]
            old = self.key_of.pop(b, None)
            if old is not None:
                del self.block_of[old]
            self.ref[b] = 1
            r.blocks.append(b)
        if self.caching:
            full = min(total, len(r.tokens)) // self.bs
            keys = self._keys(r, full)
            for i in range(r.num_keyed, full):
                b = r.blocks[i]
                if b not in self.key_of and keys[i] not in self.block_of:
                    self.key_of[b] = keys[i]
                    self.block_of[keys[i]] = b
            r.num_keyed = max(r.num_keyed, full)
        return True

    def _free(self, r: RefRequest) -> None:
        for b in reversed(r.blocks):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free[b] = None
        r.blocks = []
        r.num_keyed = 0

    # -- steps ------------------------------------------------------------------------------
    def schedule(self) -> dict[str, np.ndarray]:
        budget = self.budget
        rows: list[tuple[RefRequest, int]] = []
        for r in self.running:
            if budget <= 0:
                break
            n = len(r.tokens) - r.computed
            if n > budget:
                if not self.chunked:
                    continue
                n = budget
            if not self._allocate(r, n, []):
                raise RuntimeError("reference scheduler ran out of blocks (no preemption modelled)")
            rows.append((r, n))
            budget -= n
        while budget > 0 and self.waiting and len(self.running) < self.max_num_seqs:
            r = self.waiting[0]
            hits = self._lookup(r)
            n = len(r.tokens) - len(hits) * self.bs
            if n > budget:
                if not self.chunked:
                    break
                n = budget
            if not self._allocate(r, n, hits):
                break
            self.waiting.pop(0)
            if self.caching:
                self.queries += len(r.tokens)
                self.hits += len(hits) * self.bs
            if r.cached_tokens < 0:
                r.cached_tokens = len(hits) * self.bs
            r.computed = len(hits) * self.bs
            self.running.append(r)
            rows.append((r, n))
            budget -= n
        return self._plan(rows)

    def _plan(self, rows: list[tuple[RefRequest, int]]) -> dict[str, np.ndarray]:
        ids, pos, slots, qsl, lens, comp, logits, seqidx, handles = [], [], [], [0], [], [], [], [], []
        table = np.zeros((len(rows), self.max_blocks), dtype=np.int32)  # [S, max_blocks]
        for s, (r, n) in enumerate(rows):
            for p in range(r.computed, r.computed + n):
                ids.append(r.tokens[p])
                pos.append(p)
                slots.append(r.blocks[p // self.bs] * self.bs + p % self.bs)
            qsl.append(qsl[-1] + n)
            comp.append(r.computed)
            r.computed += n
            lens.append(r.computed)
            table[s, :len(r.blocks)] = r.blocks
            handles.append(r.handle)
            if r.computed == len(r.tokens):
                logits.append(qsl[-1] - 1)
                seqidx.append(s)
        i32 = lambda v: np.asarray(v, dtype=np.int32)
        return {"input_ids": i32(ids), "positions": i32(pos), "slot_mapping": i32(slots),
                "query_start_loc": i32(qsl), "seq_lens": i32(lens), "num_computed": i32(comp),
                "block_table": table, "logits_indices": i32(logits), "sampled_seq_indices": i32(seqidx),
                "handles": np.asarray(handles, dtype=np.int64)}

    def update(self, plan: dict[str, np.ndarray], sampled: np.ndarray) -> list[tuple[int, list[int], int, int]]:
        """Returns (handle, new tokens, finish reason, stop token) per sampled live sequence."""
        out = []
        for k, row in enumerate(plan["sampled_seq_indices"]):
            r = self.requests.get(int(plan["handles"][row]))
            if r is None:
                continue
            reason, new, stop_tok = NONE, [], -1
            if r.max_tokens == 0:
                reason = LENGTH
            else:
                tok = int(sampled[k])
                outputs_before = len(r.tokens) - r.num_prompt
                r.tokens.append(tok)
                new = [tok]
                is_stop = (not r.ignore_eos and r.eos >= 0 and tok == r.eos) or tok in r.stop_ids
                if outputs_before >= r.min_tokens and is_stop:
                    reason, stop_tok = STOP, tok
                elif outputs_before + 1 >= r.max_tokens or len(r.tokens) >= self.max_model_len:
                    reason = LENGTH
            out.append((r.handle, new, reason, stop_tok))
            if reason != NONE:
                del self.requests[r.handle]
                self.running.remove(r)
                self._free(r)
        return out
