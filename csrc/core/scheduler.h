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
// schedule() again: plans never applied by update() are rolled back first (their requests return
// to their num_computed_tokens before them, their cache entries and new blocks are dropped), so
// their tokens are planned again.
//
// One step ahead: schedule_ahead() plans step n+1 while plan n still awaits update(), so the
// device never waits for the host between steps. Every request plan n samples counts one more
// token whose id is not known yet (Request::inflight_sample_index); plan n+1 feeds it as a deferred row
// (BatchPlan::deferred_rows) that the runner fills from step n's sampled tokens on the device.
// A request whose in-flight token must end it (max_tokens, max_model_len) is not planned again;
// one that stops on a sampled stop token was planned for nothing, and update(n+1) skips it.
// Updates stay in order (n, then n+1). schedule_ahead() never preempts: when blocks run out it
// plans nothing (nullptr) and the caller goes the plain way, update(n) then schedule().
// Block hashes need token ids, so a block completed by an in-flight token enters the prefix
// cache at that request's next allocation, once the id is known.
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

  // Plans the step after the one plan awaiting update() (see the header comment); schedule()
  // when none awaits. nullptr when it would have to preempt. Throws CoreError when two plans
  // already await update().
  std::shared_ptr<const BatchPlan> schedule_ahead();

  // Applies the tokens sampled for `plan` ([plan.num_sampled], aligned with logits_indices).
  // Throws CoreError if `plan` is not the oldest plan awaiting update() (plans are applied in
  // the order they were made, each once), std::invalid_argument for another Scheduler's plan,
  // a wrong count or a negative token id.
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
  std::shared_ptr<const BatchPlan> plan_step(bool ahead);
  Request* pick_victim() const;
  void preempt(Request* r, BatchPlan& plan, int32_t& budget);
  void release(Request* r);  // frees blocks and the request itself
  void forget_uncomputed_cache_entries(Request& r);
  bool awaits_update(uint64_t step_id) const;
  Request* live_row_request(const BatchPlan& plan, int32_t row) const;  // nullptr: gone since
  void mark_inflight(const BatchPlan& plan);
  bool inflight_token_ends(const Request& r) const;
  void roll_back_unapplied();

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
  // Plans awaiting update(), oldest first, at most two (held, so their buffers are not reused).
  std::vector<std::shared_ptr<BatchPlan>> unapplied_;
  int64_t num_preemptions_ = 0;
};

}  // namespace pagedllm::core
