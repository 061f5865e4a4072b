// Scheduler scenarios, table-driven: chunked prefill, token budget, whole-prompt mode,
// preemption and resume, abort, stop conditions, add-time rejection, policies, update errors.
#include <gtest/gtest.h>

#include <map>
#include <ostream>
#include <numeric>

#include "core/core_error.h"
#include "core/scheduler.h"
#include "core_sim.h"

namespace pagedllm::core {
namespace {

using Ids = std::vector<int32_t>;
using testing::fake_next_token;

std::vector<int32_t> iota(int32_t n, int32_t start = 0) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), start);
  return v;
}

RequestParams params(int32_t max_tokens, double arrival = 0.0, int32_t priority = 0) {
  RequestParams p;
  p.max_tokens = max_tokens;
  p.arrival_time = arrival;
  p.priority = priority;
  return p;
}

SchedulerConfig config(int32_t num_blocks, int32_t block_size, int32_t budget, int32_t max_num_seqs = 8,
                       int32_t max_model_len = 128) {
  SchedulerConfig c;
  c.num_blocks = num_blocks;
  c.block_size = block_size;
  c.max_num_batched_tokens = budget;
  c.max_num_seqs = max_num_seqs;
  c.max_model_len = max_model_len;
  return c;
}

// One row of a plan, copied out for comparisons.
struct Row {
  int64_t handle;
  int32_t num_computed, seq_len;
  Ids input_ids, positions, slots, blocks;
  bool sampled;
  bool operator==(const Row& o) const {
    return handle == o.handle && num_computed == o.num_computed && seq_len == o.seq_len &&
           input_ids == o.input_ids && positions == o.positions && slots == o.slots && blocks == o.blocks &&
           sampled == o.sampled;
  }
};

std::vector<Row> rows_of(const BatchPlan& p) {
  std::vector<Row> rows;
  std::vector<bool> sampled(static_cast<size_t>(p.num_seqs), false);
  for (int32_t k = 0; k < p.num_sampled; ++k) sampled[static_cast<size_t>(p.sampled_seq_indices[static_cast<size_t>(k)])] = true;
  for (int32_t s = 0; s < p.num_seqs; ++s) {
    const size_t si = static_cast<size_t>(s);
    Row r{p.handles[si], p.num_computed[si], p.seq_lens[si], {}, {}, {}, {}, sampled[si]};
    for (int32_t t = p.query_start_loc[si]; t < p.query_start_loc[si + 1]; ++t) {
      r.input_ids.push_back(p.input_ids[static_cast<size_t>(t)]);
      r.positions.push_back(p.positions[static_cast<size_t>(t)]);
      r.slots.push_back(p.slot_mapping[static_cast<size_t>(t)]);
    }
    for (int32_t b = 0; b < p.max_blocks_per_seq; ++b) {
      const int32_t id = p.block_table[si * static_cast<size_t>(p.max_blocks_per_seq) + static_cast<size_t>(b)];
      if (id != kNullBlock) r.blocks.push_back(id);
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

// Runs steps with the fake model; records every plan and every output.
struct Driver {
  explicit Driver(const SchedulerConfig& c) : s(c) {}
  Scheduler s;
  std::vector<std::vector<Row>> plans;
  std::vector<Ids> preempted;
  std::map<int64_t, Ids> outputs;
  std::map<int64_t, FinishReason> finished;
  std::map<int64_t, int32_t> stop_tokens;

  StepOutputs step(const std::map<int64_t, int32_t>& forced = {}) {
    auto plan = s.schedule();
    plans.push_back(rows_of(*plan));
    preempted.emplace_back();
    for (int32_t k = 0; k < plan->num_preempted; ++k) {
      preempted.back().push_back(static_cast<int32_t>(plan->preempted_handles[static_cast<size_t>(k)]));
    }
    Ids sampled;
    for (int32_t k = 0; k < plan->num_sampled; ++k) {
      const size_t row = static_cast<size_t>(plan->sampled_seq_indices[static_cast<size_t>(k)]);
      auto f = forced.find(plan->handles[row]);
      sampled.push_back(f != forced.end() ? f->second : fake_next_token(plan->handles[row], plan->seq_lens[row]));
    }
    StepOutputs out;
    s.update(*plan, sampled.data(), sampled.size(), out);
    for (size_t i = 0; i < out.size(); ++i) {
      if (out.new_token_ids[i] >= 0) outputs[out.handles[i]].push_back(out.new_token_ids[i]);
      if (out.finish_reasons[i] != 0) {
        finished[out.handles[i]] = static_cast<FinishReason>(out.finish_reasons[i]);
        stop_tokens[out.handles[i]] = out.stop_token_ids[i];
      }
    }
    s.check_invariants();
    return out;
  }
  void run_to_completion(int max_steps = 10000) {
    for (int i = 0; i < max_steps && s.has_unfinished_requests(); ++i) step();
    ASSERT_FALSE(s.has_unfinished_requests());
  }
  int32_t tokens_in_step(size_t i, int64_t handle) const {
    for (const Row& r : plans[i]) if (r.handle == handle) return static_cast<int32_t>(r.input_ids.size());
    return 0;
  }
};

// ---- chunked prefill ----------------------------------------------------------------------

struct ChunkCase {
  int32_t prompt_len, budget, block_size;
  Ids tokens_per_step;  // for the single request until its first sample, inclusive
};

void PrintTo(const ChunkCase& c, std::ostream* os) {
  *os << "prompt " << c.prompt_len << " budget " << c.budget << " block " << c.block_size;
}

class ChunkedPrefill : public ::testing::TestWithParam<ChunkCase> {};

TEST_P(ChunkedPrefill, SplitsThePromptAcrossStepsAndSamplesOnlyAtTheEnd) {
  const ChunkCase c = GetParam();
  Driver d(config(64, c.block_size, c.budget));
  d.s.add_request(1, iota(c.prompt_len, 1), params(3));
  int32_t computed = 0;
  for (size_t i = 0; i < c.tokens_per_step.size(); ++i) {
    d.step();
    ASSERT_EQ(d.plans[i].size(), 1u);
    const Row& r = d.plans[i][0];
    EXPECT_EQ(static_cast<int32_t>(r.input_ids.size()), c.tokens_per_step[i]) << "step " << i;
    EXPECT_EQ(r.num_computed, computed);
    EXPECT_EQ(r.positions.front(), computed);
    EXPECT_EQ(r.input_ids, iota(c.tokens_per_step[i], computed + 1));
    EXPECT_EQ(static_cast<int32_t>(r.blocks.size()), (computed + c.tokens_per_step[i] + c.block_size - 1) / c.block_size);
    computed += c.tokens_per_step[i];
    EXPECT_EQ(r.sampled, i + 1 == c.tokens_per_step.size()) << "step " << i;
  }
  d.step();  // then plain decode, one token
  EXPECT_EQ(d.plans.back()[0].input_ids.size(), 1u);
  EXPECT_EQ(d.plans.back()[0].num_computed, c.prompt_len);
}

INSTANTIATE_TEST_SUITE_P(Table, ChunkedPrefill,
                         ::testing::Values(ChunkCase{10, 4, 4, {4, 4, 2}}, ChunkCase{10, 10, 4, {10}},
                                           ChunkCase{10, 3, 16, {3, 3, 3, 1}}, ChunkCase{33, 16, 16, {16, 16, 1}},
                                           ChunkCase{5, 1, 2, {1, 1, 1, 1, 1}}));

// ---- token budget --------------------------------------------------------------------------

struct BudgetCase {
  int32_t budget, max_num_seqs;
  bool chunked;
};

void PrintTo(const BudgetCase& c, std::ostream* os) {
  *os << "budget " << c.budget << " max_num_seqs " << c.max_num_seqs << (c.chunked ? " chunked" : " whole");
}

class TokenBudget : public ::testing::TestWithParam<BudgetCase> {};

TEST_P(TokenBudget, NeverExceededAndRunningRequestsComeFirst) {
  const BudgetCase c = GetParam();
  SchedulerConfig cfg = config(400, 4, c.budget, c.max_num_seqs, 64);
  cfg.enable_chunked_prefill = c.chunked;
  Driver d(cfg);
  for (int64_t h = 1; h <= 20; ++h) d.s.add_request(h, iota(5 + static_cast<int32_t>(h) * 2, 100 * static_cast<int32_t>(h)), params(6, h));
  for (int i = 0; i < 5000 && d.s.has_unfinished_requests(); ++i) {
    const size_t prev_running = d.s.running().size();
    std::vector<int64_t> running_before;
    for (const Request* r : d.s.running()) running_before.push_back(r->handle);
    d.step();
    const auto& rows = d.plans.back();
    int32_t total = 0;
    for (const Row& r : rows) total += static_cast<int32_t>(r.input_ids.size());
    EXPECT_LE(total, c.budget);
    EXPECT_LE(rows.size(), static_cast<size_t>(c.max_num_seqs));
    // Rows start with the requests that were running, in running order.
    for (size_t k = 0; k < std::min(prev_running, rows.size()); ++k) EXPECT_EQ(rows[k].handle, running_before[k]);
    if (!c.chunked) {
      for (const Row& r : rows) {
        if (r.num_computed == 0) EXPECT_TRUE(r.sampled) << "whole prompts only";
      }
    }
  }
  EXPECT_FALSE(d.s.has_unfinished_requests());
  for (int64_t h = 1; h <= 20; ++h) EXPECT_EQ(d.outputs[h].size(), 6u);
}

INSTANTIATE_TEST_SUITE_P(Table, TokenBudget,
                         ::testing::Values(BudgetCase{8, 4, true}, BudgetCase{64, 8, true}, BudgetCase{1, 3, true},
                                           BudgetCase{64, 2, false}, BudgetCase{100, 16, false}));

TEST(Scheduler, WholePromptWaitsForBudgetWhenChunkingIsOff) {
  SchedulerConfig cfg = config(64, 4, 16, 8, 16);
  cfg.enable_chunked_prefill = false;
  Driver d(cfg);
  d.s.add_request(1, iota(10), params(4, 1));
  d.s.add_request(2, iota(10, 50), params(4, 2));  // 10 + 10 > 16: must wait
  d.step();
  ASSERT_EQ(d.plans[0].size(), 1u);
  d.step();  // request 1 decodes (1 token) and request 2's 10 tokens fit now
  ASSERT_EQ(d.plans[1].size(), 2u);
  EXPECT_EQ(d.plans[1][1].input_ids.size(), 10u);
}

TEST(Scheduler, MaxNumSeqsLimitsRunningRequests) {
  Driver d(config(64, 4, 100, 2));
  for (int64_t h = 1; h <= 3; ++h) d.s.add_request(h, iota(3, 10 * static_cast<int32_t>(h)), params(2, h));
  d.step();
  EXPECT_EQ(d.plans[0].size(), 2u);
  EXPECT_EQ(d.s.stats().num_waiting, 1);
  d.run_to_completion();
  EXPECT_EQ(d.finished.size(), 3u);
}

// ---- preemption and resume -----------------------------------------------------------------

TEST(Scheduler, PreemptionAndResumeReproduceThePlansAndOutputs) {
  // Reference: plenty of blocks, no preemption.
  auto run = [](int32_t num_blocks, Driver& d) {
    d.s.add_request(1, iota(8, 1), params(12, 1));
    d.s.add_request(2, iota(8, 100), params(12, 2));
    d.run_to_completion();
    (void)num_blocks;
  };
  Driver ample(config(64, 4, 64, 8, 64));
  run(64, ample);
  EXPECT_EQ(ample.s.stats().num_preemptions, 0);

  // 9 usable blocks: each request grows to 20 tokens = 5 blocks, so request 2 is preempted.
  Driver tight(config(10, 4, 64, 8, 64));
  run(10, tight);
  ASSERT_GT(tight.s.stats().num_preemptions, 0);
  EXPECT_EQ(tight.outputs, ample.outputs);  // same tokens, same order
  EXPECT_EQ(tight.finished, ample.finished);

  // Find request 2's preemption, and its resume step.
  size_t pre = 0;
  while (pre < tight.preempted.size() && tight.preempted[pre] != Ids{2}) ++pre;
  ASSERT_LT(pre, tight.preempted.size());
  for (const Row& r : tight.plans[pre]) EXPECT_NE(r.handle, 2) << "a preempted request is not in its step's plan";
  const Row* before = nullptr;
  for (const Row& r : tight.plans[pre - 1]) if (r.handle == 2) before = &r;
  ASSERT_NE(before, nullptr);
  size_t resume = pre + 1;
  const Row* after = nullptr;
  for (; resume < tight.plans.size() && after == nullptr; ++resume) {
    for (const Row& r : tight.plans[resume]) if (r.handle == 2) after = &r;
  }
  ASSERT_NE(after, nullptr);
  // Resumed with its prefix-cache hits: the cached full blocks are the very same block ids.
  EXPECT_GT(after->num_computed, 0);
  EXPECT_EQ(after->num_computed % 4, 0);
  ASSERT_GE(before->blocks.size(), static_cast<size_t>(after->num_computed / 4));
  EXPECT_EQ(Ids(after->blocks.begin(), after->blocks.begin() + after->num_computed / 4),
            Ids(before->blocks.begin(), before->blocks.begin() + after->num_computed / 4));
  EXPECT_TRUE(after->sampled);
  // And the recomputed positions/tokens are exactly the ones it had.
  for (size_t k = 0; k < after->positions.size(); ++k) EXPECT_EQ(after->positions[k], after->num_computed + static_cast<int32_t>(k));

  // Without any preemption since, the decode rows of the resumed request equal the reference run's rows
  // at the same sequence length (tokens and positions; blocks may differ).
  for (size_t i = resume; i < tight.plans.size(); ++i) {
    for (const Row& r : tight.plans[i]) {
      if (r.handle != 2) continue;
      for (const auto& plan : ample.plans) {
        for (const Row& a : plan) {
          if (a.handle == 2 && a.seq_len == r.seq_len && a.num_computed == r.num_computed) {
            EXPECT_EQ(a.input_ids, r.input_ids);
            EXPECT_EQ(a.positions, r.positions);
          }
        }
      }
    }
  }
}

TEST(Scheduler, PreemptionReproducesIdenticalPlanArraysOnReplay) {
  // The same workload twice gives bit-identical plans: scheduling is deterministic.
  auto run = [] {
    Driver d(config(10, 4, 64, 8, 64));
    d.s.add_request(1, iota(8, 1), params(12, 1));
    d.s.add_request(2, iota(8, 100), params(12, 2));
    d.s.add_request(3, iota(8, 1), params(5, 3));
    d.run_to_completion();
    return d.plans;
  };
  EXPECT_EQ(run(), run());
}

TEST(Scheduler, PriorityPolicyPreemptsTheLowestPriorityRequest) {
  SchedulerConfig cfg = config(10, 4, 64, 8, 64);
  cfg.policy = SchedulingPolicy::kPriority;
  Driver d(cfg);
  d.s.add_request(1, iota(8, 1), params(12, /*arrival=*/2, /*priority=*/0));
  d.s.add_request(2, iota(8, 100), params(12, /*arrival=*/1, /*priority=*/5));
  d.run_to_completion();
  ASSERT_GT(d.s.stats().num_preemptions, 0);
  for (const Ids& p : d.preempted) for (int32_t h : p) EXPECT_EQ(h, 2);
  // Admission follows priority too: request 1 (priority 0) gets row 0 despite arriving later.
  EXPECT_EQ(d.plans[0][0].handle, 1);
}

TEST(Scheduler, WaitingRequestsAreAdmittedInArrivalOrder) {
  Driver d(config(64, 4, 4, 8));
  d.s.add_request(7, iota(4), params(1, /*arrival=*/3.0));
  d.s.add_request(8, iota(4, 10), params(1, /*arrival=*/1.0));
  d.step();
  ASSERT_EQ(d.plans[0].size(), 1u);
  EXPECT_EQ(d.plans[0][0].handle, 8);
}

// ---- abort -----------------------------------------------------------------------------------

TEST(Scheduler, AbortMidPrefillAndMidDecodeFreesEveryBlock) {
  Driver d(config(32, 4, 6));
  d.s.add_request(1, iota(20), params(8, 1));    // prefilled in 6-token chunks
  d.s.add_request(2, iota(3, 50), params(8, 2));
  d.step();
  d.step();
  const Request* r1 = d.s.find_request(1);
  ASSERT_NE(r1, nullptr);
  ASSERT_LT(r1->num_computed_tokens, 20);  // mid-prefill
  EXPECT_GT(d.s.stats().num_blocks_used, 0);
  EXPECT_TRUE(d.s.abort_request(1));
  d.s.check_invariants();
  for (int i = 0; i < 3; ++i) d.step();
  ASSERT_GT(d.outputs[2].size(), 0u);  // mid-decode
  EXPECT_FALSE(d.finished.count(2));
  EXPECT_TRUE(d.s.abort_request(2));
  EXPECT_FALSE(d.s.abort_request(2));
  d.s.check_invariants();
  EXPECT_EQ(d.s.stats().num_blocks_used, 0);
  EXPECT_EQ(d.s.stats().num_blocks_free, 31);
  EXPECT_FALSE(d.s.has_unfinished_requests());
  EXPECT_EQ(d.s.schedule()->num_seqs, 0);
}

TEST(Scheduler, AbortBetweenScheduleAndUpdateIsSkippedAndForgetsUncomputedCacheEntries) {
  Scheduler s(config(32, 4, 64));
  s.add_request(1, iota(12), params(4));
  s.add_request(2, iota(6, 40), params(4));
  auto plan = s.schedule();
  ASSERT_EQ(plan->num_sampled, 2);
  EXPECT_TRUE(s.abort_request(1));
  const int32_t toks[2] = {5, 6};
  StepOutputs out;
  s.update(*plan, toks, 2, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out.handles[0], 2);
  // Request 1's blocks were registered when planned but never known to be computed: no hits.
  s.add_request(3, iota(12), params(4));
  auto next = s.schedule();
  bool found = false;
  for (int32_t k = 0; k < next->num_seqs; ++k) {
    if (next->handles[static_cast<size_t>(k)] == 3) {
      found = true;
      EXPECT_EQ(next->num_computed[static_cast<size_t>(k)], 0);
    }
  }
  EXPECT_TRUE(found);
  s.check_invariants();
}

// ---- stop conditions -------------------------------------------------------------------------

struct StopCase {
  const char* name;
  int32_t max_tokens, min_tokens;
  bool ignore_eos;
  int32_t eos;
  Ids stop_ids;
  Ids sampled;           // tokens the model produces, in order
  int32_t max_model_len;
  size_t expected_outputs;
  FinishReason reason;
  int32_t stop_token;
};

void PrintTo(const StopCase& c, std::ostream* os) { *os << c.name; }

class StopConditions : public ::testing::TestWithParam<StopCase> {};

TEST_P(StopConditions, FinishAsSpecified) {
  const StopCase c = GetParam();
  Driver d(config(64, 4, 64, 4, c.max_model_len));
  RequestParams p = params(c.max_tokens);
  p.min_tokens = c.min_tokens;
  p.ignore_eos = c.ignore_eos;
  p.eos_token_id = c.eos;
  p.stop_token_ids = c.stop_ids;
  d.s.add_request(1, iota(4, 20), p);
  for (size_t i = 0; i < c.sampled.size() && d.s.has_unfinished_requests(); ++i) d.step({{1, c.sampled[i]}});
  ASSERT_TRUE(d.finished.count(1)) << c.name;
  EXPECT_EQ(d.finished[1], c.reason) << c.name;
  EXPECT_EQ(d.outputs[1].size(), c.expected_outputs) << c.name;
  EXPECT_EQ(d.stop_tokens[1], c.stop_token) << c.name;
  EXPECT_EQ(d.s.stats().num_blocks_used, 0) << c.name;
}

INSTANTIATE_TEST_SUITE_P(
    Table, StopConditions,
    ::testing::Values(
        StopCase{"max_tokens", 3, 0, false, 2, {}, {5, 6, 7, 8}, 64, 3, FinishReason::kLength, -1},
        StopCase{"eos", 10, 0, false, 2, {}, {5, 2, 7}, 64, 2, FinishReason::kStop, 2},
        StopCase{"eos first token", 10, 0, false, 2, {}, {2}, 64, 1, FinishReason::kStop, 2},
        StopCase{"ignore_eos", 4, 0, true, 2, {}, {2, 2, 2, 2}, 64, 4, FinishReason::kLength, -1},
        StopCase{"eos before min_tokens", 10, 2, false, 2, {}, {2, 2, 2}, 64, 3, FinishReason::kStop, 2},
        StopCase{"stop_token_ids", 10, 0, false, -1, {9, 11}, {5, 11, 9}, 64, 2, FinishReason::kStop, 11},
        StopCase{"stop token before min_tokens", 10, 3, false, -1, {9}, {9, 9, 9, 9, 9}, 64, 4, FinishReason::kStop, 9},
        StopCase{"max_model_len", 50, 0, false, -1, {}, {1, 1, 1, 1, 1, 1, 1}, 7, 3, FinishReason::kLength, -1},
        StopCase{"stop beats length on the last token", 2, 0, false, 3, {}, {1, 3}, 64, 2, FinishReason::kStop, 3},
        StopCase{"prompt only", 0, 0, false, -1, {}, {1}, 64, 0, FinishReason::kLength, -1}),
    [](const ::testing::TestParamInfo<StopCase>& info) {
      std::string n = info.param.name;
      for (char& ch : n) if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });

// ---- add-time rejection and errors -----------------------------------------------------------

TEST(Scheduler, RejectsAtAddTimeWhatCanNeverRun) {
  Scheduler s(config(5, 4, 64, 4, 32));  // 4 usable blocks = 16 tokens; max_model_len 32
  s.add_request(1, iota(4), params(4));
  EXPECT_THROW(s.add_request(1, iota(4), params(4)), std::invalid_argument);          // handle in use
  EXPECT_THROW(s.add_request(2, {}, params(4)), std::invalid_argument);               // empty
  EXPECT_THROW(s.add_request(3, {1, -2}, params(4)), std::invalid_argument);          // negative id
  EXPECT_THROW(s.add_request(4, iota(32), params(1)), std::invalid_argument);         // no room to sample
  EXPECT_THROW(s.add_request(5, iota(12), params(8)), std::invalid_argument);         // 20 tokens > cache
  EXPECT_THROW(s.add_request(6, iota(4), params(-1)), std::invalid_argument);         // bad max_tokens
  RequestParams bad_min = params(2);
  bad_min.min_tokens = 3;
  EXPECT_THROW(s.add_request(7, iota(4), bad_min), std::invalid_argument);
  s.add_request(8, iota(16), params(0));                                              // prompt only, fits
  EXPECT_EQ(s.num_unfinished_requests(), 2);
  s.check_invariants();
}

TEST(Scheduler, InvalidConfigNamesTheField) {
  SchedulerConfig c = config(1, 16, 64);
  try {
    Scheduler s(c);
    FAIL() << "accepted num_blocks=1";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("num_blocks"), std::string::npos);
  }
  c = config(16, 16, 64, 8, 128);
  c.enable_chunked_prefill = false;  // budget 64 < max_model_len 128
  EXPECT_THROW(Scheduler{c}, std::invalid_argument);
}

TEST(Scheduler, UpdateRejectsStaleOrMismatchedInput) {
  Scheduler s(config(16, 4, 64));
  s.add_request(1, iota(4), params(4));
  auto plan = s.schedule();
  StepOutputs out;
  const int32_t two[2] = {1, 2};
  EXPECT_THROW(s.update(*plan, two, 2, out), std::invalid_argument);  // wrong count
  const int32_t neg[1] = {-5};
  EXPECT_THROW(s.update(*plan, neg, 1, out), std::invalid_argument);
  Scheduler other(config(16, 4, 64));
  EXPECT_THROW(other.update(*plan, two, 1, out), std::invalid_argument);  // not its plan
  s.update(*plan, two, 1, out);
  EXPECT_THROW(s.update(*plan, two, 1, out), CoreError);  // applied twice
  auto p2 = s.schedule();
  auto p3 = s.schedule();  // p2 never applied (a failed step): rolled back, planned again
  ASSERT_EQ(p3->num_seqs, 1);
  EXPECT_EQ(p3->num_computed[0], p2->num_computed[0]);
  EXPECT_EQ(p3->input_ids[0], p2->input_ids[0]);
  EXPECT_THROW(s.update(*p2, two, 1, out), CoreError);
  s.check_invariants();
  s.update(*p3, two, 1, out);
  EXPECT_TRUE(s.abort_request(1));
  s.check_invariants();
}

TEST(Scheduler, AnUnappliedPlanIsRolledBackWithItsBlocksAndCacheEntries) {
  Scheduler s(config(32, 4, 10));
  s.add_request(1, iota(10), params(4));
  auto failed = s.schedule();  // never applied: blocks 1 2 3, with 1 2 registered in the cache
  ASSERT_EQ(failed->num_tokens, 10);
  EXPECT_EQ(s.stats().num_blocks_used, 3);
  EXPECT_TRUE(s.kv_cache_manager().pool().block(1).has_hash);
  auto retry = s.schedule();
  ASSERT_EQ(retry->num_seqs, 1);
  EXPECT_EQ(retry->num_computed[0], 0);
  EXPECT_EQ(retry->num_tokens, 10);
  EXPECT_EQ(s.stats().num_blocks_used, 3);  // the failed step's blocks went back
  // Blocks 1 2 3 returned tail-first behind 4..31, so the retry got 4 5 6; only they are cached.
  EXPECT_EQ(Ids(retry->block_table.begin(), retry->block_table.begin() + 3), (Ids{4, 5, 6}));
  EXPECT_FALSE(s.kv_cache_manager().pool().block(1).has_hash);
  EXPECT_FALSE(s.kv_cache_manager().pool().block(2).has_hash);
  EXPECT_TRUE(s.kv_cache_manager().pool().block(4).has_hash);
  EXPECT_EQ(s.kv_cache_manager().prefix_cache().size(), 2u);
  s.check_invariants();
}

TEST(Scheduler, PlansHeldByTheCallerAreNeverRewritten) {
  Scheduler s(config(64, 4, 64));
  s.add_request(1, iota(6), params(10));
  auto p1 = s.schedule();
  const Ids ids1(p1->input_ids.begin(), p1->input_ids.begin() + p1->num_tokens);
  const int32_t tok = 9;
  StepOutputs out;
  s.update(*p1, &tok, 1, out);
  auto p2 = s.schedule();
  EXPECT_NE(p1.get(), p2.get());
  EXPECT_EQ(Ids(p1->input_ids.begin(), p1->input_ids.begin() + p1->num_tokens), ids1);
  s.update(*p2, &tok, 1, out);
  p1.reset();  // released: its buffer may be reused
  auto p3 = s.schedule();
  EXPECT_EQ(p3->num_tokens, 1);
  EXPECT_EQ(p3->input_ids[0], 9);
}

TEST(Scheduler, PrefixCacheCountersAndCachedTokens) {
  Driver d(config(64, 4, 64));
  d.s.add_request(1, iota(10), params(2, 1));
  d.run_to_completion();
  d.s.add_request(2, iota(10), params(2, 2));
  const StepOutputs out = d.step();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out.num_cached_tokens[0], 8);
  EXPECT_EQ(d.plans.back()[0].num_computed, 8);
  EXPECT_EQ(d.s.stats().prefix_cache_queries, 20);
  EXPECT_EQ(d.s.stats().prefix_cache_hits, 8);
  EXPECT_TRUE(d.s.abort_request(2));
  EXPECT_TRUE(d.s.reset_prefix_cache());
}

// ---- one step ahead (schedule_ahead) ------------------------------------------------------

TEST(Scheduler, ScheduleAheadDefersTheInFlightTokenAndAppliesPlansInOrder) {
  Scheduler s(config(16, 4, 64));
  s.add_request(1, iota(5, 1), params(3));
  auto p1 = s.schedule();
  ASSERT_EQ(p1->num_sampled, 1);
  EXPECT_EQ(p1->num_deferred, 0);
  auto p2 = s.schedule_ahead();
  ASSERT_TRUE(p2);
  const std::vector<Row> rows = rows_of(*p2);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].num_computed, 5);
  EXPECT_EQ(rows[0].input_ids, Ids({-1}));  // the token p1 samples, not known yet
  EXPECT_EQ(rows[0].positions, Ids({5}));
  EXPECT_TRUE(rows[0].sampled);
  ASSERT_EQ(p2->num_deferred, 1);
  EXPECT_EQ(p2->deferred_rows[0], 0);
  EXPECT_EQ(p2->deferred_sources[0], 0);
  s.check_invariants();
  EXPECT_THROW(s.schedule_ahead(), CoreError);  // one step ahead at most
  StepOutputs out;
  const int32_t t7 = 7, t8 = 8, t9 = 9;
  EXPECT_THROW(s.update(*p2, &t7, 1, out), CoreError);  // p1 first
  s.update(*p1, &t7, 1, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out.new_token_ids[0], 7);
  auto p3 = s.schedule_ahead();
  ASSERT_TRUE(p3);
  EXPECT_EQ(rows_of(*p3)[0].positions, Ids({6}));
  s.update(*p2, &t8, 1, out);
  EXPECT_EQ(out.finish_reasons[0], 0);
  // p3's token is the third and last output: nothing is planned past it.
  auto p4 = s.schedule_ahead();
  ASSERT_TRUE(p4);
  EXPECT_EQ(p4->num_seqs, 0);
  s.update(*p3, &t9, 1, out);
  EXPECT_EQ(out.finish_reasons[0], static_cast<int32_t>(FinishReason::kLength));
  EXPECT_FALSE(s.has_unfinished_requests());
  s.check_invariants();
}

TEST(Scheduler, ScheduleRollsBackBothPlansAwaitingUpdate) {
  Scheduler s(config(16, 4, 64));
  s.add_request(1, iota(6, 1), params(8));
  s.add_request(2, iota(3, 1), params(8));
  const std::vector<Row> first = rows_of(*s.schedule());
  ASSERT_TRUE(s.schedule_ahead());
  s.check_invariants();
  // Neither step happened: both plans are dropped and the prompts are planned again.
  auto again = s.schedule();
  const std::vector<Row> rows = rows_of(*again);
  ASSERT_EQ(rows.size(), first.size());
  for (size_t i = 0; i < rows.size(); ++i) {  // block ids may differ: they were freed and retaken
    EXPECT_EQ(rows[i].handle, first[i].handle);
    EXPECT_EQ(rows[i].num_computed, 0);
    EXPECT_EQ(rows[i].input_ids, first[i].input_ids);
    EXPECT_EQ(rows[i].positions, first[i].positions);
  }
  EXPECT_EQ(again->num_deferred, 0);
  s.check_invariants();
}

TEST(Scheduler, ScheduleAheadNeverPreempts) {
  // 3 usable blocks of 2 tokens: two requests of 2 + 1 tokens fill them after one step; the
  // next tokens need a fourth block, which only a preemption could free.
  Scheduler s(config(4, 2, 64));
  s.add_request(1, iota(2, 1), params(4));
  s.add_request(2, iota(2, 1), params(4, 1.0));
  auto p1 = s.schedule();
  ASSERT_EQ(p1->num_seqs, 2);
  const auto before = s.stats();
  EXPECT_EQ(s.schedule_ahead(), nullptr);
  EXPECT_EQ(s.stats().num_blocks_used, before.num_blocks_used);  // what it took is given back
  EXPECT_EQ(s.stats().num_preemptions, 0);
  s.check_invariants();
  StepOutputs out;
  const int32_t tokens[2] = {5, 6};
  s.update(*p1, tokens, 2, out);  // the plain way on: update, then schedule (which preempts)
  EXPECT_EQ(out.size(), 2u);
  auto p2 = s.schedule();
  EXPECT_EQ(p2->num_preempted, 1);
  s.check_invariants();
}

}  // namespace
}  // namespace pagedllm::core
