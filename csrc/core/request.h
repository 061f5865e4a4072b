// One generation request as the core sees it: token ids, progress, limits and its KV blocks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/block_hash.h"

namespace pagedllm::core {

// Ordered so that is_finished() is one comparison; the finished kinds come last.
enum class RequestStatus : uint8_t {
  kWaiting = 0,
  kRunning = 1,
  kPreempted = 2,  // waiting again, to be recomputed
  kFinishedStopped = 3,
  kFinishedLength = 4,
  kFinishedAborted = 5,
};

inline bool is_finished(RequestStatus s) { return s >= RequestStatus::kFinishedStopped; }

// Values match pagedllm._C.core.FinishReason.
enum class FinishReason : uint8_t { kNone = 0, kStop = 1, kLength = 2, kAbort = 3 };

FinishReason finish_reason_of(RequestStatus s);

enum class SchedulingPolicy : uint8_t { kFcfs = 0, kPriority = 1 };

// The sampling limits the core enforces (everything else about sampling stays in Python).
struct RequestParams {
  int32_t max_tokens = 16;        // >= 0; 0 = prompt only (finishes right after prefill)
  int32_t min_tokens = 0;         // EOS / stop tokens ignored while fewer outputs exist
  bool ignore_eos = false;
  int32_t eos_token_id = -1;      // -1: none
  std::vector<int32_t> stop_token_ids;
  int32_t priority = 0;           // PRIORITY policy: lower value first
  double arrival_time = 0.0;      // orders requests of equal priority
  std::string cache_salt;         // extra prefix-cache key
  bool skip_prefix_cache = false; // never read cached blocks (still writes them)

  // Throws std::invalid_argument naming the field.
  void validate() const;
};

struct Request {
  int64_t handle = 0;
  uint64_t serial = 0;            // unique per Scheduler, breaks ordering ties, tags plan rows
  int32_t slot = -1;              // index in the Scheduler's request table
  RequestParams params;
  RequestStatus status = RequestStatus::kWaiting;

  std::vector<int32_t> token_ids; // prompt then outputs
  int32_t num_prompt_tokens = 0;
  int32_t num_computed_tokens = 0;  // tokens whose K/V are (or are being, this step) in the cache
  int32_t num_cached_tokens = -1;   // prompt tokens served by the prefix cache at first admission

  // Invariant while running: block_ids.size() == ceil(num_computed_tokens / block_size).
  std::vector<int32_t> block_ids;
  uint32_t block_epoch = 0;         // bumped whenever block_ids is dropped (preemption)
  int32_t num_hashed_blocks = 0;    // block_ids[0, this) are registered in the prefix cache
  std::vector<BlockHash> block_hashes;  // keys of the full blocks of token_ids, filled lazily

  // Scheduling one step ahead (Scheduler::schedule_ahead): the token sampled for it by the plan
  // still awaiting update() is counted before its id is known (not in token_ids yet). This is
  // that token's index in the plan's sampled tokens; -1: no token in flight.
  int32_t inflight_sample_index = -1;

  int32_t stop_token_id = -1;       // the token that finished it (STOP), else -1
  int32_t scheduled_tokens = 0;     // tokens given in the plan being built (scratch)
  bool in_plan = false;             // listed in the plan being built (scratch)
  uint64_t pending_step_id = 0;     // last plan that scheduled it
  uint64_t admitted_step_id = 0;    // plan that last moved it from waiting to running
  // num_computed_tokens before the oldest plan awaiting update() that scheduled it (the point a
  // roll-back returns to; cache entries past it may hold K/V that is not written yet).
  int32_t computed_before_step = 0;

  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
  int32_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  bool has_inflight_token() const { return inflight_sample_index >= 0; }
  // Tokens counting the one in flight: what schedule_ahead() plans up to.
  int32_t num_planned_tokens() const { return num_tokens() + (has_inflight_token() ? 1 : 0); }

  // Strict order in which requests are served: FCFS by (arrival_time, serial), PRIORITY by
  // (priority, arrival_time, serial). Waiting requests are admitted in this order and the
  // running request that sorts last is the first to be preempted.
  static bool served_before(const Request& a, const Request& b, SchedulingPolicy policy);

  // Appends one sampled token and runs the stop checks; returns the new status
  // (kRunning when it goes on). max_model_len bounds num_tokens.
  RequestStatus append_and_check_stop(int32_t token_id, int32_t max_model_len);
};

}  // namespace pagedllm::core
