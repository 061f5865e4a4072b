"""The sampling defaults a model ships in its generation_config.json, applied as vLLM applies
them (`--generation-config auto`, its default): a request (or `LLM.generate` without params)
that leaves temperature, top_p, top_k, min_p or a penalty unset gets the model's value, and
max_new_tokens caps the default length. `vllm` ignores the file (neutral defaults), a directory
reads its generation_config.json instead, and `override_generation_config` wins over both.

The file is read as vLLM reads it: transformers' GenerationConfig diff against its own defaults
(under transformers 5, whose defaults are unset, every value the file states).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

logger = logging.getLogger("pagedllm.engine")

# generation_config.json keys that become SamplingParams defaults (max_new_tokens: max_tokens).
SAMPLING_KEYS = ("repetition_penalty", "presence_penalty", "frequency_penalty", "temperature",
                 "top_k", "top_p", "min_p", "max_new_tokens")


def _read_generation_config(directory: str) -> dict[str, Any]:
    if not os.path.isfile(os.path.join(directory, "generation_config.json")):
        return {}
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(directory).to_diff_dict()
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"generation_config: cannot read {directory}/generation_config.json: "
                         f"{exc}") from exc


def model_sampling_defaults(model_path: Optional[str], source: str = "auto",
                            overrides: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """{SamplingParams field: value} for what requests leave unset. `model_path` is the model's
    directory (or file: a GGUF file ships no generation config)."""
    if source == "vllm":
        config: dict[str, Any] = {}
    elif source == "auto":
        is_dir = model_path is not None and os.path.isdir(model_path)
        config = _read_generation_config(model_path) if is_dir else {}
    elif os.path.isdir(source):
        config = _read_generation_config(source)
    else:
        raise ValueError(f"generation_config: expected 'auto', 'vllm' or a directory with a "
                         f"generation_config.json, got {source!r}")
    config = dict(config)
    config.update(overrides or {})
    unknown = sorted(set(overrides or {}) - set(SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"override_generation_config: unknown keys {unknown}; "
                         f"known: {list(SAMPLING_KEYS)}")
    defaults = {k: config[k] for k in SAMPLING_KEYS if config.get(k) is not None}
    if "max_new_tokens" in defaults:
        defaults["max_tokens"] = defaults.pop("max_new_tokens")
    if defaults:
        logger.info("Default sampling parameters from the model's generation config (override "
                    "with --generation-config vllm): %s", defaults)
    return defaults
