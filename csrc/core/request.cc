#include "core/request.h"

#include <algorithm>
#include <stdexcept>

namespace pagedllm::core {

FinishReason finish_reason_of(RequestStatus s) {
  switch (s) {
    case RequestStatus::kFinishedStopped: return FinishReason::kStop;
    case RequestStatus::kFinishedLength: return FinishReason::kLength;
    case RequestStatus::kFinishedAborted: return FinishReason::kAbort;
    default: return FinishReason::kNone;
  }
}

void RequestParams::validate() const {
  if (max_tokens < 0) throw std::invalid_argument("max_tokens: must be >= 0");
  if (min_tokens < 0) throw std::invalid_argument("min_tokens: must be >= 0");
  if (min_tokens > max_tokens) throw std::invalid_argument("min_tokens: must be <= max_tokens");
  if (eos_token_id < -1) throw std::invalid_argument("eos_token_id: must be >= 0, or -1 for none");
  for (int32_t t : stop_token_ids) {
    if (t < 0) throw std::invalid_argument("stop_token_ids: token ids must be >= 0");
  }
}

bool Request::served_before(const Request& a, const Request& b, SchedulingPolicy policy) {
  if (policy == SchedulingPolicy::kPriority && a.params.priority != b.params.priority) {
    return a.params.priority < b.params.priority;
  }
  if (a.params.arrival_time != b.params.arrival_time) {
    return a.params.arrival_time < b.params.arrival_time;
  }
  return a.serial < b.serial;
}

RequestStatus Request::append_and_check_stop(int32_t token_id, int32_t max_model_len) {
  // Stop tokens count only once min_tokens outputs exist before them (the sampler should
  // already have masked them; this is the core's guarantee).
  const bool may_stop = num_output_tokens() >= params.min_tokens;
  token_ids.push_back(token_id);
  if (may_stop) {
    const bool is_eos = !params.ignore_eos && params.eos_token_id >= 0 && token_id == params.eos_token_id;
    const bool is_stop = is_eos || std::find(params.stop_token_ids.begin(), params.stop_token_ids.end(),
                                             token_id) != params.stop_token_ids.end();
    if (is_stop) {
      stop_token_id = token_id;
      return RequestStatus::kFinishedStopped;
    }
  }
  if (num_output_tokens() >= params.max_tokens || num_tokens() >= max_model_len) {
    return RequestStatus::kFinishedLength;
  }
  return RequestStatus::kRunning;
}

}  // namespace pagedllm::core
