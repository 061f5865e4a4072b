#!/usr/bin/env bash
# Installs pagedllm, then serves the default model on 127.0.0.1:8000 (extra args go to `pagedllm serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec pagedllm serve "$@"
