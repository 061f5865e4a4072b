"""The LoRA adapters the server serves as models of their own (vLLM's --lora-modules).

A request whose `model` names an adapter runs with it; /v1/models lists each adapter with its
base model as `parent`. With PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING=1 (as vLLM's
VLLM_ALLOW_RUNTIME_LORA_UPDATING) /v1/load_lora_adapter and /v1/unload_lora_adapter change the
set at run time. Adapter ids are given here, one per load: reloading a name gives it a new id,
so K/V cached under the old weights is never reused (the id salts the prefix cache).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Optional, Sequence

from pagedllm.entrypoints.openai.errors import APIError, BadRequestError
from pagedllm.entrypoints.openai.serving_engine import maybe_await
from pagedllm.lora.request import LoRARequest

RUNTIME_LORA_ENV = "PAGEDLLM_ALLOW_RUNTIME_LORA_UPDATING"


def runtime_lora_updating_allowed() -> bool:
    return os.environ.get(RUNTIME_LORA_ENV, "").lower() in ("1", "true")


class ServedLoRAs:
    """Adapter name -> its LoRARequest. Touched on the event loop only; the lock keeps one
    load / unload of a name at a time (each awaits the engine)."""

    def __init__(self, engine: Any, base_model_names: Sequence[str]) -> None:
        self.engine = engine
        self.base_model_names = list(base_model_names)
        self.adapters: dict[str, LoRARequest] = {}
        self._next_id = 1
        self._lock = asyncio.Lock()

    def get(self, name: str) -> Optional[LoRARequest]:
        return self.adapters.get(name)

    async def load(self, name: str, path: str, base_model_name: Optional[str] = None,
                   replace: bool = False) -> LoRARequest:
        """Check and load the adapter (BadRequestError if the engine refuses it). replace: a
        name already served gets the new path (vLLM's load_inplace)."""
        if not name or not path:
            raise BadRequestError("Both 'lora_name' and 'lora_path' must be provided.")
        if name in self.base_model_names:
            raise BadRequestError(f"The lora adapter name '{name}' is a base model's name.",
                                  param="lora_name")
        if base_model_name is not None and base_model_name not in self.base_model_names:
            raise BadRequestError(f"base_model_name '{base_model_name}' is not served here.")
        async with self._lock:
            previous = self.adapters.get(name)
            if previous is not None and not replace:
                raise BadRequestError(f"The lora adapter '{name}' has already been loaded.",
                                      param="lora_name")
            lora = LoRARequest(name, self._next_id, path, base_model_name)
            self._next_id += 1
            try:
                await maybe_await(self.engine.add_lora(lora))
            except ValueError as e:
                raise BadRequestError(str(e), param="lora_path") from e
            self.adapters[name] = lora
            if previous is not None:
                await self._drop(previous)
            return lora

    async def unload(self, name: str) -> None:
        async with self._lock:
            lora = self.adapters.pop(name, None)
            if lora is None:
                raise APIError(f"The lora adapter '{name}' cannot be found.", status=404,
                               param="lora_name", code="model_not_found")
            await self._drop(lora)

    async def _drop(self, lora: LoRARequest) -> None:
        # Requests still running with it finish; the engine keeps it until then.
        await maybe_await(self.engine.remove_lora(lora.lora_int_id))

    def parent_of(self, lora: LoRARequest) -> str:
        return lora.base_model_name or self.base_model_names[0]
