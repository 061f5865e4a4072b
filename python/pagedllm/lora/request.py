"""LoRARequest: which adapter a request runs with (vLLM's class and field names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# Adapter ids travel to tensor-parallel workers and through the runner as int32.
MAX_LORA_INT_ID = 2**31 - 1


@dataclass(eq=False)
class LoRARequest:
    """A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).

    lora_int_id identifies the adapter to the engine: the engine loads it once per id and reuses
    it, so one id must always name the same weights (a different path under a known id is
    refused). lora_name is how clients call it (the server's `model` field); as in vLLM, two
    requests are equal (and hash alike) when their names are."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.lora_name, str) or not self.lora_name:
            raise ValueError("lora_name: must be a non-empty string")
        if (isinstance(self.lora_int_id, bool) or not isinstance(self.lora_int_id, int)
                or not 0 < self.lora_int_id <= MAX_LORA_INT_ID):
            raise ValueError(f"lora_int_id: must be an integer in [1, {MAX_LORA_INT_ID}], "
                             f"got {self.lora_int_id!r}")
        if not isinstance(self.lora_path, str) or not self.lora_path:
            raise ValueError("lora_path: must be a non-empty path to the adapter's directory")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoRARequest) and other.lora_name == self.lora_name

    def __hash__(self) -> int:
        return hash(self.lora_name)

    # vLLM's aliases.
    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path
