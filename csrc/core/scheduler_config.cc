#include "core/scheduler_config.h"

#include <stdexcept>

namespace pagedllm::core {

void SchedulerConfig::validate() const {
  if (num_blocks < 2) throw std::invalid_argument("num_blocks: must be >= 2 (block 0 is the null block)");
  if (block_size < 1 || block_size > 4096) throw std::invalid_argument("block_size: must be in [1, 4096]");
  if (max_num_seqs < 1) throw std::invalid_argument("max_num_seqs: must be >= 1");
  if (max_num_batched_tokens < 1) throw std::invalid_argument("max_num_batched_tokens: must be >= 1");
  if (max_model_len < 1) throw std::invalid_argument("max_model_len: must be >= 1");
  if (!enable_chunked_prefill && max_num_batched_tokens < max_model_len) {
    throw std::invalid_argument(
        "max_num_batched_tokens: must be >= max_model_len when chunked prefill is disabled");
  }
  if (admission_reserve_blocks_per_running < 0 || admission_reserve_blocks_per_running > 1024) {
    throw std::invalid_argument("admission_reserve_blocks_per_running: must be in [0, 1024]");
  }
  if (policy != SchedulingPolicy::kFcfs && policy != SchedulingPolicy::kPriority) {
    throw std::invalid_argument("policy: must be FCFS or PRIORITY");
  }
}

}  // namespace pagedllm::core
