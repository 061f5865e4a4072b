// Randomized property test: thousands of random add/schedule/update/abort sequences over random
// configurations, with the scheduler's invariants and an independent model of every plan checked
// after each operation (see core_sim.h). Every request must end finished or aborted.
#include <gtest/gtest.h>

#include "core_sim.h"

namespace pagedllm::core {
namespace {

TEST(SchedulerProperty, RandomSequencesKeepInvariantsAndFinishEveryRequest) {
  testing::SimStats total;
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    testing::SchedulerSim sim(seed);
    try {
      total += sim.run(200);
    } catch (const std::exception& e) {
      FAIL() << e.what();
    }
  }
  // The random mix must actually exercise the interesting paths.
  EXPECT_GT(total.steps, 10000);
  EXPECT_GT(total.finished, 1000);
  EXPECT_GT(total.aborted, 100);
  EXPECT_GT(total.preemptions, 10);
  EXPECT_GT(total.rejected, 10);
  EXPECT_GT(total.prefix_hits, 0);
  EXPECT_GT(total.failed_steps, 100);
  EXPECT_GT(total.ahead_steps, 5000);     // planned one step ahead (schedule_ahead)
  EXPECT_GT(total.deferred_tokens, 5000);
  EXPECT_GT(total.ahead_refused, 10);      // ahead planning that would have had to preempt
  std::printf("steps=%lld added=%lld finished=%lld aborted=%lld rejected=%lld preemptions=%lld hits=%lld/%lld\n",
              static_cast<long long>(total.steps), static_cast<long long>(total.added),
              static_cast<long long>(total.finished), static_cast<long long>(total.aborted),
              static_cast<long long>(total.rejected), static_cast<long long>(total.preemptions),
              static_cast<long long>(total.prefix_hits), static_cast<long long>(total.prefix_queries));
}

}  // namespace
}  // namespace pagedllm::core
