"""Pooler: turns a pooling request's prompt hidden states (after the final norm) into one vector.

LAST takes the hidden state of the prompt's last token: the row a finished prefill samples from.
MEAN averages every prompt position, summed per request across prefill chunks (float32); its
requests never read the prefix cache, since cached positions would not run through the model.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import numpy as np
import torch

from pagedllm.pooling_params import PoolingParams

logger = logging.getLogger(__name__)

# sentence-transformers pooling modes -> pagedllm's pooling types.
_ST_MODES = {"pooling_mode_lasttoken": "LAST", "pooling_mode_mean_tokens": "MEAN"}


def sentence_transformers_pooling(model_path: Optional[str]) -> Optional[str]:
    """The pooling type a sentence-transformers model directory declares (modules.json points
    at its Pooling module's config), or None when there is none or it is one we lack."""
    if not model_path or not os.path.isdir(model_path):
        return None
    pooling_dir = "1_Pooling"
    modules_path = os.path.join(model_path, "modules.json")
    if os.path.isfile(modules_path):
        with open(modules_path) as f:
            for module in json.load(f):
                if str(module.get("type", "")).endswith(".Pooling"):
                    pooling_dir = module.get("path", pooling_dir)
    config_path = os.path.join(model_path, pooling_dir, "config.json")
    if not os.path.isfile(config_path):
        return None
    with open(config_path) as f:
        config = json.load(f)
    for key, pooling_type in _ST_MODES.items():
        if config.get(key):
            return pooling_type
    logger.warning("%s: no supported pooling mode (LAST, MEAN); using LAST", config_path)
    return None


class Pooler:
    def __init__(self, pooling_type: str, use_activation: bool = True) -> None:
        self.pooling_type = pooling_type
        self.use_activation = use_activation
        # MEAN: handle -> (sum of the prompt positions run so far [H] float32, next position).
        self._sums: dict[int, tuple[torch.Tensor, int]] = {}

    @property
    def needs_all_positions(self) -> bool:
        return self.pooling_type == "MEAN"

    def forget(self, handle: int) -> None:
        self._sums.pop(handle, None)

    def pool_step(self, plan: Any, handles: list[int], hidden: torch.Tensor,
                  prompt_lens: dict[int, int]) -> dict[int, torch.Tensor]:
        """hidden [T, H]: the plan's rows. Returns handle -> pooled [H] float32 for the requests
        whose prompt ends in this step (not yet normalized)."""
        qsl = np.asarray(plan.query_start_loc)
        done: dict[int, torch.Tensor] = {}
        if self.pooling_type == "LAST":
            for i in np.asarray(plan.sampled_seq_indices).tolist():
                done[handles[i]] = hidden[int(qsl[i + 1]) - 1].float()
            return done
        num_computed = np.asarray(plan.num_computed)
        for i, h in enumerate(handles):
            start, end = int(qsl[i]), int(qsl[i + 1])
            pos = int(num_computed[i])
            chunk = hidden[start:end].float().sum(dim=0)
            if pos == 0 or h not in self._sums:  # first chunk, or run again after preemption
                total = chunk
            else:
                total, expected = self._sums[h]
                if pos != expected:
                    raise RuntimeError(f"MEAN pooling: request {h} resumed at position {pos}, "
                                       f"expected {expected}")
                total = total + chunk
            pos += end - start
            if pos >= prompt_lens[h]:
                self._sums.pop(h, None)
                done[h] = total / prompt_lens[h]
            else:
                self._sums[h] = (total, pos)
        return done

    def finish(self, pooled: torch.Tensor, params: PoolingParams) -> torch.Tensor:
        """Matryoshka truncation, then L2 normalization (unless turned off); a CPU tensor."""
        if params.dimensions is not None:
            pooled = pooled[: params.dimensions]
        normalize = self.use_activation if params.use_activation is None else params.use_activation
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled.cpu()
