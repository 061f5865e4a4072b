"""Send one step's BatchPlan (and the logits rows) from the driver to the tensor-parallel workers.

The scheduler runs once, in the driver. Every step the driver broadcasts, over a CPU (gloo) group:
  header  int64 [8]: command, T, S, max_blocks, num_sampled, num_rows, max_query_len, max_seq_len
  payload int32 [sum of _field_sizes]: the plan arrays the model runner reads, then the logits rows.
Workers rebuild a read-only plan object with the same field names as `_C.core.BatchPlan`.
Two broadcasts per step (header, then a payload of the size it announces); both are tiny next to
a forward pass. A step whose sequences use LoRA adapters is sent as CMD_EXECUTE_LORA, with the
sequences' adapter ids after the rows. Adapters are loaded / dropped on every rank by
CMD_ADD_LORA (header[1]: bytes of the pickled LoRARequest that follow) and CMD_REMOVE_LORA
(header[1]: the id), sent between steps.
"""
from __future__ import annotations

import pickle
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

CMD_EXECUTE = 1
CMD_SHUTDOWN = 2
CMD_EXECUTE_LORA = 3
CMD_ADD_LORA = 4
CMD_REMOVE_LORA = 5

_HEADER_LEN = 8


def _field_sizes(T: int, S: int, MB: int, N: int, R: int,
                 lora: bool = False) -> list[tuple[str, int]]:
    """Payload layout, in order: (field name, element count)."""
    return [
        ("input_ids", T), ("positions", T), ("slot_mapping", T),
        ("query_start_loc", S + 1), ("seq_lens", S), ("num_computed", S),
        ("block_table", S * MB),
        ("logits_indices", N), ("sampled_seq_indices", N),
        ("rows", R),
    ] + ([("lora_ids", S)] if lora else [])


def broadcast_plan(plan: Any, rows: np.ndarray, group: Any,
                   lora_ids: Optional[np.ndarray] = None) -> None:
    """Driver side: send `plan`, the token rows whose logits are wanted and, for a step with
    adapters, each sequence's adapter id ([S], 0: none; ids fit int32, see LoRARequest)."""
    T, S = int(plan.num_tokens), int(plan.num_seqs)
    block_table = np.asarray(plan.block_table, dtype=np.int32)       # [S, MB]
    MB = int(block_table.shape[1]) if block_table.ndim == 2 else 0
    N, R = int(plan.num_sampled), int(len(rows))
    cmd = CMD_EXECUTE if lora_ids is None else CMD_EXECUTE_LORA
    header = torch.tensor([cmd, T, S, MB, N, R, int(plan.max_query_len),
                           int(plan.max_seq_len)], dtype=torch.int64)
    dist.broadcast(header, src=0, group=group)
    parts = [np.asarray(plan.input_ids, np.int32), np.asarray(plan.positions, np.int32),
             np.asarray(plan.slot_mapping, np.int32), np.asarray(plan.query_start_loc, np.int32),
             np.asarray(plan.seq_lens, np.int32), np.asarray(plan.num_computed, np.int32),
             block_table.reshape(-1), np.asarray(plan.logits_indices, np.int32),
             np.asarray(plan.sampled_seq_indices, np.int32), np.asarray(rows, np.int32)]
    if lora_ids is not None:
        parts.append(np.asarray(lora_ids, np.int32))
    payload = torch.from_numpy(np.concatenate(parts)) if parts else torch.empty(0, dtype=torch.int32)
    if payload.numel():
        dist.broadcast(payload, src=0, group=group)


def broadcast_shutdown(group: Any) -> None:
    header = torch.zeros(_HEADER_LEN, dtype=torch.int64)
    header[0] = CMD_SHUTDOWN
    dist.broadcast(header, src=0, group=group)


def broadcast_add_lora(lora_request: Any, group: Any) -> None:
    """Driver side: every worker loads this adapter (a LoRARequest)."""
    data = np.frombuffer(pickle.dumps(lora_request), dtype=np.uint8)
    header = torch.zeros(_HEADER_LEN, dtype=torch.int64)
    header[0], header[1] = CMD_ADD_LORA, len(data)
    dist.broadcast(header, src=0, group=group)
    dist.broadcast(torch.from_numpy(data.copy()), src=0, group=group)


def broadcast_remove_lora(lora_int_id: int, group: Any) -> None:
    header = torch.zeros(_HEADER_LEN, dtype=torch.int64)
    header[0], header[1] = CMD_REMOVE_LORA, lora_int_id
    dist.broadcast(header, src=0, group=group)


class WorkerCommand(SimpleNamespace):
    """What a worker is told to do next: kind "execute" (plan, rows, lora_ids or None),
    "add_lora" (lora_request), "remove_lora" (lora_int_id) or "shutdown"."""


def receive_command(group: Any) -> WorkerCommand:
    """Worker side: the driver's next command."""
    header = torch.empty(_HEADER_LEN, dtype=torch.int64)
    dist.broadcast(header, src=0, group=group)
    cmd, T, S, MB, N, R, max_q, max_s = (int(v) for v in header.tolist())
    if cmd == CMD_SHUTDOWN:
        return WorkerCommand(kind="shutdown")
    if cmd == CMD_ADD_LORA:
        data = torch.empty(T, dtype=torch.uint8)
        dist.broadcast(data, src=0, group=group)
        return WorkerCommand(kind="add_lora", lora_request=pickle.loads(data.numpy().tobytes()))
    if cmd == CMD_REMOVE_LORA:
        return WorkerCommand(kind="remove_lora", lora_int_id=T)
    if cmd not in (CMD_EXECUTE, CMD_EXECUTE_LORA):
        raise RuntimeError(f"tensor-parallel worker: unknown command {cmd} from the driver")
    plan, rows, lora_ids = _receive_plan_payload(group, T, S, MB, N, R, max_q, max_s,
                                                 lora=cmd == CMD_EXECUTE_LORA)
    return WorkerCommand(kind="execute", plan=plan, rows=rows, lora_ids=lora_ids)


def _receive_plan_payload(group: Any, T: int, S: int, MB: int, N: int, R: int, max_q: int,
                          max_s: int, lora: bool
                          ) -> tuple[SimpleNamespace, np.ndarray, Optional[np.ndarray]]:
    sizes = _field_sizes(T, S, MB, N, R, lora)
    total = sum(n for _, n in sizes)
    payload = torch.empty(total, dtype=torch.int32)
    if total:
        dist.broadcast(payload, src=0, group=group)
    flat = payload.numpy()
    fields: dict[str, np.ndarray] = {}
    offset = 0
    for name, n in sizes:
        fields[name] = flat[offset: offset + n]
        offset += n
    rows = fields.pop("rows")
    lora_ids = fields.pop("lora_ids", None)
    plan = SimpleNamespace(
        num_seqs=S, num_tokens=T, num_sampled=N, max_query_len=max_q, max_seq_len=max_s,
        block_table=fields.pop("block_table").reshape(S, MB),
        handles=np.zeros(S, dtype=np.int64), preempted_handles=np.zeros(0, dtype=np.int64),
        **fields)
    return plan, rows, lora_ids
