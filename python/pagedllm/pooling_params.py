"""PoolingParams: what a pooling (embedding) request may ask for (vLLM's class and names)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

from pagedllm.sampling_params import RequestOutputKind


@dataclass
class PoolingParams:
    """use_activation: L2-normalize the embedding (None: the engine's pooler config, which
    defaults to True, as vLLM's embed does). dimensions: keep only the first `dimensions`
    values (Matryoshka models), normalized again. `normalize` is the older vLLM spelling of
    use_activation and is accepted as such."""

    use_activation: Optional[bool] = None
    dimensions: Optional[int] = None
    normalize: Optional[bool] = None
    task: Optional[str] = "embed"
    output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY

    def __post_init__(self) -> None:
        if self.use_activation is None and self.normalize is not None:
            self.use_activation = self.normalize
        if self.dimensions is not None:
            if isinstance(self.dimensions, bool) or not isinstance(self.dimensions, int):
                raise ValueError(f"dimensions: expected an int, got {self.dimensions!r}")
            if self.dimensions < 1:
                raise ValueError(f"dimensions: must be at least 1, got {self.dimensions}")
        if self.task not in (None, "embed"):
            raise ValueError(f"task: only 'embed' is supported, got {self.task!r}")

    def clone(self) -> "PoolingParams":
        return copy.deepcopy(self)

    def verify(self, hidden_size: int, is_matryoshka: bool, model: str = "") -> None:
        """vLLM's rule: `dimensions` only for Matryoshka models, and within the hidden size."""
        if self.dimensions is None:
            return
        if not is_matryoshka:
            raise ValueError(
                f"dimensions: model {model!r} does not support Matryoshka representation "
                f"(is_matryoshka in its config); leave dimensions unset "
                f"(received dimensions={self.dimensions})"
            )
        if self.dimensions > hidden_size:
            raise ValueError(
                f"dimensions: model {model!r} only supports dimensions in [1, {hidden_size}], "
                f"got {self.dimensions}"
            )

    def __repr__(self) -> str:
        return f"PoolingParams(use_activation={self.use_activation}, dimensions={self.dimensions})"


def as_pooling_params(value: Any) -> PoolingParams:
    """None -> the defaults; a dict -> PoolingParams(**dict); a PoolingParams unchanged."""
    if value is None:
        return PoolingParams()
    if isinstance(value, dict):
        return PoolingParams(**value)
    if isinstance(value, PoolingParams):
        return value
    raise ValueError(f"pooling_params: expected PoolingParams, got {type(value).__name__}")
