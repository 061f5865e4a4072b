"""Multi-LoRA serving: PEFT adapters applied per request on top of the base model's linears.

request.py  LoRARequest (the public API)
adapter.py  reading a PEFT adapter and packing it into this rank's layers
layers.py   the LoRA-wrapped linear layers and the per-step batch they read
manager.py  a runner's loaded adapters and the per-step batch it builds from the plan
slots.py    the engine's admission of LoRA requests: at most max_loras adapters per step
"""

from pagedllm.lora.request import LoRARequest

__all__ = ["LoRARequest"]
