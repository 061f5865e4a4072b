// The step scheduler: vLLM v1's unified token budget over a paged, prefix-cached KV pool.
//
// One step is schedule() -> (the model runs the plan) -> update(plan, sampled tokens).
// There are no prefill and decode phases: each step gives every request enough new tokens for
// its num_computed_tokens to catch up with num_tokens, running requests first (in running
// order), then waiting ones in served order, within max_num_batched_tokens and max_num_seqs.
// Prompts longer than the budget are chunked (or wait for a whole-prompt slot when chunked
// prefill is off). When blocks run out, the running request served last is preempted by
// recompute: its blocks are freed and it waits again, to resume with its prefix-cache hits.
//
// num_computed_tokens advances in schedule(): the plan's tokens count as computed from then on.
// Blocks become prefix-cache entries when allocated, so the runner must write a layer's K/V
// for the whole plan before that layer's attention reads the cache (the usual order).
// If a step fails, either abort its requests (an abort before update() also forgets the cache
// entries that step created, so no one reuses blocks whose K/V were never written) or just call
// schedule() again: a plan never applied by update() is rolled back first (its requests return
// to their num_computed_tokens before it, its cache entries and new blocks are dropped), so its
// tokens are planned again.
//
// n > 1 (parallel sampling) is not handled here: the engine adds n requests with the same
// prompt, and the prefix cache shares their full prompt blocks once computed.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <unordered_map>
#include <vector>

#include "core/batch_plan.h"
#include "core/kv_cache_manager.h"
#include "core/request.h"
#include "core/scheduler_config.h"
#include "core/step_output.h"

namespace pagedllm::core {

struct SchedulerStats {
  int32_t num_running = 0;
  int32_t num_waiting = 0;          // includes preempted requests waiting to resume
  int32_t num_blocks_total = 0;     // usable blocks (excludes the null block)
  int32_t num_blocks_used = 0;
  int32_t num_blocks_free = 0;      // includes cached-but-evictable blocks
  int64_t prefix_cache_queries = 0; // tokens
  int64_t prefix_cache_hits = 0;    // tokens
  int64_t num_preemptions = 0;
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& config);  // throws std::invalid_argument
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  const SchedulerConfig& config() const { return config_; }

  // Queues a request. Throws std::invalid_argument (naming the field) for a handle in use, an
  // empty prompt, a negative token id, bad params, or a request that can never run.
  void add_request(int64_t handle, std::vector<int32_t> prompt_token_ids, RequestParams params);

  // Drops a request wherever it is and frees its blocks. False if the handle is unknown.
  bool abort_request(int64_t handle);

  // Plans the next step. The plan stays unchanged while the caller holds it.
  std::shared_ptr<const BatchPlan> schedule();

  // Applies the tokens sampled for `plan` ([plan.num_sampled], aligned with logits_indices).
  // Throws CoreError if `plan` is not the latest schedule() result or was already applied,
  // std::invalid_argument for another Scheduler's plan, a wrong count or a negative token id.
  void update(const BatchPlan& plan, const int32_t* sampled_token_ids, size_t num_sampled, StepOutputs& out);

  bool has_unfinished_requests() const { return !handle_to_slot_.empty(); }
  int32_t num_unfinished_requests() const { return static_cast<int32_t>(handle_to_slot_.size()); }
  SchedulerStats stats() const;
  bool reset_prefix_cache() { return kv_.reset_prefix_cache(); }

  // Throws CoreError if any request/block/ref-count/table invariant is broken.
  void check_invariants() const;

  // For tests and debugging.
  const KVCacheManager& kv_cache_manager() const { return kv_; }
  const Request* find_request(int64_t handle) const;
  const std::vector<Request*>& running() const { return running_; }

 private:
  struct ServedOrder {
    SchedulingPolicy policy;
    bool operator()(const Request* a, const Request* b) const { return Request::served_before(*a, *b, policy); }
  };

  std::shared_ptr<BatchPlan> acquire_plan();
  Request* pick_victim() const;
  void preempt(Request* r, BatchPlan& plan, int32_t& budget);
  void release(Request* r);  // frees blocks and the request itself
  void forget_uncomputed_cache_entries(Request& r);
  void roll_back(const BatchPlan& plan);

  const uint64_t id_;  // distinguishes this Scheduler's plans from any other's
  SchedulerConfig config_;
  KVCacheManager kv_;

  std::vector<std::unique_ptr<Request>> slots_;  // request table; nullptr = free slot
  std::vector<int32_t> free_slots_;
  std::unordered_map<int64_t, int32_t> handle_to_slot_;
  uint64_t next_serial_ = 1;

  std::vector<Request*> running_;               // running order = admission order
  std::set<Request*, ServedOrder> waiting_;     // waiting + preempted, in served order
  std::vector<Request*> scheduled_;             // scratch: rows of the plan being built

  std::vector<std::shared_ptr<BatchPlan>> plans_;  // reusable plan buffers
  uint64_t next_step_id_ = 1;
  uint64_t pending_step_id_ = 0;                // plan awaiting update(), 0 = none
  std::shared_ptr<BatchPlan> pending_plan_;     // that plan (held, so its buffer is not reused)
  int64_t num_preemptions_ = 0;
};

}  // namespace pagedllm::core
