// Scheduler limits; validate() throws std::invalid_argument naming the field.
#pragma once

#include <cstdint>

#include "core/request.h"

namespace pagedllm::core {

struct SchedulerConfig {
  int32_t num_blocks = 0;              // KV blocks in the pool, including the null block 0
  int32_t block_size = 16;
  int32_t max_num_seqs = 256;
  int32_t max_num_batched_tokens = 8192;
  int32_t max_model_len = 2048;
  bool enable_prefix_caching = true;
  bool enable_chunked_prefill = true;  // false: a prompt is scheduled whole or not at all
  SchedulingPolicy policy = SchedulingPolicy::kFcfs;
  // Admission reserve: a waiting request is admitted only if, after its blocks are taken, at
  // least this many free blocks per running request remain for their growth. 0 = admit whenever
  // the blocks fit (vLLM's rule). 1 stops a preempted request from being readmitted into the
  // space the next preemption just freed (benchmarks/scheduler_sim.py: W-8B recompute -38%).
  int32_t admission_reserve_blocks_per_running = 0;

  int32_t max_blocks_per_seq() const { return (max_model_len + block_size - 1) / block_size; }
  void validate() const;
};

}  // namespace pagedllm::core
