// Long randomized stress run of the scheduler (the property test's simulation, for minutes).
//   core_stress --seconds 600 [--seed N]
// Prints JSON totals; exits 1 on the first violation, with the seed that reproduces it.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>

#include "core_sim.h"

int main(int argc, char** argv) {
  double seconds = 10;
  uint64_t seed = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--seconds") == 0) seconds = std::atof(argv[i + 1]);
    else if (std::strcmp(argv[i], "--seed") == 0) seed = std::strtoull(argv[i + 1], nullptr, 10);
    else {
      std::fprintf(stderr, "usage: %s [--seconds N] [--seed N]\n", argv[0]);
      return 2;
    }
  }
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  pagedllm::core::testing::SimStats total;
  int64_t runs = 0;
  try {
    while (std::chrono::duration<double>(Clock::now() - start).count() < seconds) {
      pagedllm::core::testing::SchedulerSim sim(seed++);
      total += sim.run(1000);
      ++runs;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAILED: %s\n", e.what());
    return 1;
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf(
      "{\"seconds\": %.1f, \"runs\": %lld, \"ops\": %lld, \"steps\": %lld, \"added\": %lld, \"rejected\": %lld, "
      "\"finished\": %lld, \"aborted\": %lld, \"preemptions\": %lld, \"tokens_scheduled\": %lld, "
      "\"prefix_hit_tokens\": %lld, \"prefix_query_tokens\": %lld, \"failed_steps\": %lld, \"ahead_steps\": %lld, "
      "\"ahead_refused\": %lld, \"deferred_tokens\": %lld, \"violations\": 0}\n",
      elapsed, static_cast<long long>(runs), static_cast<long long>(total.ops), static_cast<long long>(total.steps),
      static_cast<long long>(total.added), static_cast<long long>(total.rejected),
      static_cast<long long>(total.finished), static_cast<long long>(total.aborted),
      static_cast<long long>(total.preemptions), static_cast<long long>(total.tokens_scheduled),
      static_cast<long long>(total.prefix_hits), static_cast<long long>(total.prefix_queries),
      static_cast<long long>(total.failed_steps), static_cast<long long>(total.ahead_steps),
      static_cast<long long>(total.ahead_refused), static_cast<long long>(total.deferred_tokens));
  return 0;
}
