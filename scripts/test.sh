#!/usr/bin/env bash
# Installs pagedllm and runs every test: the C++ core under ctest (plain and ASan+UBSan), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
jobs=$(nproc)
echo "== ctest (C++ core)"
cmake -S . -B build/ctest -G Ninja -DPAGEDLLM_BUILD_TESTS=ON -DPAGEDLLM_CUDA=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/ctest -j "$jobs"
ctest --test-dir build/ctest --output-on-failure -j "$jobs"
echo "== randomized core stress (1 minute; run with --seconds 600 locally for the long run)"
build/ctest/tests/cpp/core_stress --seconds 60 --seed "${PAGEDLLM_STRESS_SEED:-$RANDOM}"
echo "== ctest under ASan + UBSan"
cmake -S . -B build/asan -G Ninja -DPAGEDLLM_BUILD_TESTS=ON -DPAGEDLLM_CUDA=OFF -DPAGEDLLM_SANITIZE=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --test-dir build/asan --output-on-failure -j "$jobs"
echo "== pytest"
# Run from tests/ so `import pagedllm` takes the installed package (with _C), not the source tree.
cd tests && python3 -m pytest -q -p no:cacheprovider "$@"
