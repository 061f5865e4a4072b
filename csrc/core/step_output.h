// What update() reports: one entry per sampled sequence, as parallel arrays (struct of arrays,
// so the bindings can hand them to Python without one object per request).
#pragma once

#include <cstdint>
#include <vector>

namespace pagedllm::core {

struct StepOutputs {
  std::vector<int64_t> handles;            // [N] request handle
  std::vector<int32_t> new_token_ids;      // [N] token appended this step, -1 if none (max_tokens == 0)
  std::vector<int32_t> finish_reasons;     // [N] FinishReason values; 0 = still running
  std::vector<int32_t> stop_token_ids;     // [N] the EOS/stop token that finished it, else -1
  std::vector<int32_t> num_cached_tokens;  // [N] prompt tokens served from the prefix cache

  size_t size() const { return handles.size(); }
  void clear() {
    handles.clear();
    new_token_ids.clear();
    finish_reasons.clear();
    stop_token_ids.clear();
    num_cached_tokens.clear();
  }
  void push(int64_t handle, int32_t token, int32_t reason, int32_t stop_token, int32_t cached) {
    handles.push_back(handle);
    new_token_ids.push_back(token);
    finish_reasons.push_back(reason);
    stop_token_ids.push_back(stop_token);
    num_cached_tokens.push_back(cached);
  }
};

}  // namespace pagedllm::core
