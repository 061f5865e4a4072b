#include "core/scheduler.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <string>

#include "core/core_error.h"

namespace pagedllm::core {

namespace {
constexpr size_t kMaxPooledPlans = 8;
std::atomic<uint64_t> next_scheduler_id{1};
}

Scheduler::Scheduler(const SchedulerConfig& config)
    : id_(next_scheduler_id.fetch_add(1)),
      config_((config.validate(), config)),
      kv_(config.num_blocks, config.block_size, config.enable_prefix_caching),
      waiting_(ServedOrder{config.policy}) {
  running_.reserve(static_cast<size_t>(config.max_num_seqs));
  scheduled_.reserve(static_cast<size_t>(config.max_num_seqs));
  unapplied_.reserve(2);
}

Scheduler::~Scheduler() = default;

void Scheduler::add_request(int64_t handle, std::vector<int32_t> prompt, RequestParams params) {
  if (handle_to_slot_.count(handle)) {
    throw std::invalid_argument("handle: " + std::to_string(handle) + " is already in use");
  }
  if (prompt.empty()) throw std::invalid_argument("prompt_token_ids: must not be empty");
  for (int32_t t : prompt) {
    if (t < 0) throw std::invalid_argument("prompt_token_ids: token ids must be >= 0");
  }
  params.validate();
  const int64_t len = static_cast<int64_t>(prompt.size());
  // A request that samples needs room for at least one more token within max_model_len.
  const int64_t longest_prompt = params.max_tokens > 0 ? config_.max_model_len - 1 : config_.max_model_len;
  if (len > longest_prompt) {
    throw std::invalid_argument("prompt_token_ids: " + std::to_string(len) + " tokens leave no room within max_model_len=" +
                                std::to_string(config_.max_model_len));
  }
  // Its longest possible sequence must fit the whole cache, or it could never finish.
  const int64_t longest_seq = std::min<int64_t>(len + params.max_tokens, config_.max_model_len);
  const int64_t blocks_needed = (longest_seq + config_.block_size - 1) / config_.block_size;
  if (blocks_needed > kv_.pool().num_usable()) {
    throw std::invalid_argument("prompt_token_ids: prompt plus max_tokens needs " + std::to_string(blocks_needed) +
                                " KV blocks but the cache has only " + std::to_string(kv_.pool().num_usable()));
  }

  auto r = std::make_unique<Request>();
  r->handle = handle;
  r->serial = next_serial_++;
  r->num_prompt_tokens = static_cast<int32_t>(len);
  r->token_ids = std::move(prompt);
  // Sized once for the longest sequence, so steps never reallocate them.
  r->token_ids.reserve(static_cast<size_t>(longest_seq));
  r->block_ids.reserve(static_cast<size_t>(blocks_needed));
  if (config_.enable_prefix_caching) r->block_hashes.reserve(static_cast<size_t>(blocks_needed));
  r->params = std::move(params);
  int32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = static_cast<int32_t>(slots_.size());
    slots_.emplace_back();
  }
  r->slot = slot;
  Request* raw = r.get();
  slots_[static_cast<size_t>(slot)] = std::move(r);
  handle_to_slot_.emplace(handle, slot);
  waiting_.insert(raw);
}

const Request* Scheduler::find_request(int64_t handle) const {
  auto it = handle_to_slot_.find(handle);
  return it == handle_to_slot_.end() ? nullptr : slots_[static_cast<size_t>(it->second)].get();
}

bool Scheduler::awaits_update(uint64_t step_id) const {
  for (const auto& p : unapplied_) {
    if (p->step_id == step_id) return true;
  }
  return false;
}

Request* Scheduler::live_row_request(const BatchPlan& plan, int32_t row) const {
  Request* r = slots_[static_cast<size_t>(plan.row_slot[static_cast<size_t>(row)])].get();
  // Aborted (and maybe replaced in its slot) since the plan was made.
  return r != nullptr && r->serial == plan.row_serial[static_cast<size_t>(row)] ? r : nullptr;
}

void Scheduler::forget_uncomputed_cache_entries(Request& r) {
  // Blocks registered by steps awaiting update(), whose K/V may never be written.
  if (r.pending_step_id == 0 || !awaits_update(r.pending_step_id)) return;
  kv_.forget_cache_entries(r, r.computed_before_step / config_.block_size);
}

void Scheduler::release(Request* r) {
  kv_.free(*r);
  handle_to_slot_.erase(r->handle);
  const int32_t slot = r->slot;
  slots_[static_cast<size_t>(slot)].reset();
  free_slots_.push_back(slot);
}

bool Scheduler::abort_request(int64_t handle) {
  auto it = handle_to_slot_.find(handle);
  if (it == handle_to_slot_.end()) return false;
  Request* r = slots_[static_cast<size_t>(it->second)].get();
  if (r->status == RequestStatus::kRunning) {
    running_.erase(std::find(running_.begin(), running_.end(), r));
  } else {
    waiting_.erase(r);
  }
  r->status = RequestStatus::kFinishedAborted;
  forget_uncomputed_cache_entries(*r);
  release(r);
  return true;
}

std::shared_ptr<BatchPlan> Scheduler::acquire_plan() {
  // use_count() == 1: only this pool holds it, so no caller can observe a rewrite.
  for (auto& p : plans_) {
    if (p.use_count() == 1) return p;
  }
  auto p = std::make_shared<BatchPlan>(config_.max_num_seqs, config_.max_num_batched_tokens,
                                       config_.max_blocks_per_seq(), config_.block_size);
  if (plans_.size() < kMaxPooledPlans) plans_.push_back(p);
  return p;
}

Request* Scheduler::pick_victim() const {
  Request* victim = nullptr;
  for (Request* r : running_) {
    if (r->status != RequestStatus::kRunning) continue;
    if (victim == nullptr || Request::served_before(*victim, *r, config_.policy)) victim = r;
  }
  return victim;
}

void Scheduler::preempt(Request* r, BatchPlan& plan, int32_t& budget) {
  if (r->in_plan) {
    // Already given tokens this step (PRIORITY can pick such a victim): take them back, and
    // forget the cache entries its allocation created since their K/V will not be computed.
    budget += r->scheduled_tokens;
    scheduled_.erase(std::find(scheduled_.begin(), scheduled_.end(), r));
    kv_.forget_cache_entries(*r, r->num_computed_tokens / config_.block_size);
    r->in_plan = false;
    r->scheduled_tokens = 0;
  }
  kv_.free(*r);
  r->num_computed_tokens = 0;
  r->status = RequestStatus::kPreempted;
  waiting_.insert(r);
  ++num_preemptions_;
  plan.add_preempted(r->handle);
}

void Scheduler::roll_back_unapplied() {
  // Every request in a plan awaiting update() returns to where it was before the oldest such
  // plan (computed_before_step), newer plans included; in-flight tokens are dropped.
  const uint64_t oldest = unapplied_.front()->step_id;
  bool any_readmitted = false;
  for (const auto& plan : unapplied_) {
    for (int32_t row = 0; row < plan->num_seqs; ++row) {
      Request* r = live_row_request(*plan, row);
      // pending_step_id < oldest: already rolled back (0) or last planned by an applied step.
      if (r == nullptr || r->status != RequestStatus::kRunning || r->pending_step_id < oldest) continue;
      r->pending_step_id = 0;
      r->inflight_sample_index = -1;
      if (r->admitted_step_id >= oldest) {
        // Admitted by one of those steps: its prefix hits may be blocks such a step was to
        // compute, so it goes back to waiting and looks the cache up again (those entries go).
        kv_.forget_cache_entries(*r, r->computed_before_step / config_.block_size);
        kv_.free(*r);
        r->num_computed_tokens = 0;
        r->status = RequestStatus::kWaiting;
        waiting_.insert(r);
        any_readmitted = true;
      } else {
        kv_.truncate(*r, r->computed_before_step);
        r->num_computed_tokens = r->computed_before_step;
      }
    }
  }
  // Requests only marked in flight are rows of the oldest plan, so none is left marked.
  unapplied_.clear();
  if (any_readmitted) {
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [](const Request* q) { return q->status != RequestStatus::kRunning; }),
                   running_.end());
  }
}

void Scheduler::mark_inflight(const BatchPlan& plan) {
  for (int32_t k = 0; k < plan.num_sampled; ++k) {
    Request* r = live_row_request(plan, plan.sampled_seq_indices[static_cast<size_t>(k)]);
    // max_tokens == 0: that step finishes it and appends nothing.
    if (r == nullptr || r->status != RequestStatus::kRunning || r->params.max_tokens == 0) continue;
    r->inflight_sample_index = k;
  }
}

bool Scheduler::inflight_token_ends(const Request& r) const {
  // The rules of append_and_check_stop that do not depend on the token's id.
  return r.num_output_tokens() + 1 >= r.params.max_tokens ||
         r.num_tokens() + 1 >= config_.max_model_len;
}

std::shared_ptr<const BatchPlan> Scheduler::schedule() {
  if (!unapplied_.empty()) roll_back_unapplied();  // those steps did not happen
  return plan_step(false);
}

std::shared_ptr<const BatchPlan> Scheduler::schedule_ahead() {
  if (unapplied_.empty()) return plan_step(false);
  if (unapplied_.size() > 1) throw CoreError("schedule_ahead(): a plan is already scheduled ahead; update() first");
  mark_inflight(*unapplied_.front());
  return plan_step(true);
}

std::shared_ptr<const BatchPlan> Scheduler::plan_step(bool ahead) {
  // Invariants on entry (check_invariants): a running request holds exactly
  // ceil(num_computed_tokens / block_size) blocks; a waiting one holds none; every usable
  // block is either in the free queue (ref 0) or referenced by running requests' tables.
  // `ahead`: unapplied_ holds one plan, whose sampled requests are marked in flight.
  std::shared_ptr<BatchPlan> plan_ptr = acquire_plan();
  BatchPlan& plan = *plan_ptr;
  plan.clear();
  plan.scheduler_id = id_;
  plan.step_id = next_step_id_++;
  scheduled_.clear();

  int32_t budget = config_.max_num_batched_tokens;
  bool preempted_any = false;

  // 1. Running requests, in running order.
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Request* r = running_[i];
    if (r->status != RequestStatus::kRunning) continue;  // preempted earlier in this loop
    if (r->has_inflight_token() && inflight_token_ends(*r)) continue;  // update() will finish it
    int32_t num_new = r->num_planned_tokens() - r->num_computed_tokens;
    if (num_new == 0) continue;  // ahead of a prompt-only request's last step (max_tokens 0)
    if (num_new > budget) {
      if (!config_.enable_chunked_prefill) continue;
      num_new = budget;
    }
    bool scheduled = false;
    for (;;) {
      if (kv_.allocate_slots(*r, num_new)) {
        scheduled = true;
        break;
      }
      if (ahead) {
        // Never preempt ahead (a victim's in-flight token would have nowhere to go): give back
        // what this plan allocated so far; the caller applies the last step and plans again.
        for (Request* q : scheduled_) {
          kv_.truncate(*q, q->num_computed_tokens);
          q->in_plan = false;
          q->scheduled_tokens = 0;
        }
        scheduled_.clear();
        return nullptr;
      }
      Request* victim = pick_victim();
      preempt(victim, plan, budget);
      preempted_any = true;
      if (victim == r) break;
    }
    if (!scheduled) break;  // it preempted itself: nothing later can fit either
    r->scheduled_tokens = num_new;
    r->in_plan = true;
    scheduled_.push_back(r);
    budget -= num_new;
  }
  if (preempted_any) {
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [](const Request* r) { return r->status != RequestStatus::kRunning; }),
                   running_.end());
  }

  // 2. Waiting requests in served order; none while this step had to preempt (no room).
  while (!preempted_any && budget > 0 && !waiting_.empty() &&
         static_cast<int32_t>(running_.size()) < config_.max_num_seqs) {
    Request* r = *waiting_.begin();
    const ComputedBlocks hit = kv_.get_computed_blocks(*r);
    int32_t num_new = r->num_tokens() - hit.num_tokens;
    if (num_new > budget) {
      if (!config_.enable_chunked_prefill) break;  // whole prompts only; keep the order
      num_new = budget;
    }
    // Blocks kept free for the running requests' growth (admission reserve, 0 by default).
    const int64_t reserve = static_cast<int64_t>(config_.admission_reserve_blocks_per_running) *
                            static_cast<int64_t>(running_.size());
    if (!kv_.allocate_slots(*r, num_new, hit, reserve)) break;  // keep the order: none jumps ahead
    waiting_.erase(waiting_.begin());
    if (kv_.prefix_caching() && !r->params.skip_prefix_cache) {
      kv_.prefix_cache().record_lookup(r->num_tokens(), hit.num_tokens);
    }
    if (r->num_cached_tokens < 0) r->num_cached_tokens = hit.num_tokens;
    r->num_computed_tokens = hit.num_tokens;
    r->status = RequestStatus::kRunning;
    r->admitted_step_id = plan.step_id;
    r->scheduled_tokens = num_new;
    r->in_plan = true;
    running_.push_back(r);
    scheduled_.push_back(r);
    budget -= num_new;
  }

  // 3. Write the plan; the scheduled tokens count as computed from here on.
  for (Request* r : scheduled_) {
    const int32_t before = r->num_computed_tokens;
    plan.add_sequence(*r, before, r->scheduled_tokens);
    if (!awaits_update(r->pending_step_id)) r->computed_before_step = before;
    r->pending_step_id = plan.step_id;
    r->num_computed_tokens = before + r->scheduled_tokens;
    r->scheduled_tokens = 0;
    r->in_plan = false;
  }
  unapplied_.push_back(plan_ptr);
  return plan_ptr;
}

void Scheduler::update(const BatchPlan& plan, const int32_t* sampled, size_t num_sampled, StepOutputs& out) {
  if (plan.scheduler_id != id_) throw std::invalid_argument("plan: was made by another Scheduler");
  if (unapplied_.empty() || plan.step_id != unapplied_.front()->step_id) {
    throw CoreError("update(): the plan is not the oldest one awaiting update(), or was already applied");
  }
  if (num_sampled != static_cast<size_t>(plan.num_sampled)) {
    throw std::invalid_argument("sampled_token_ids: expected " + std::to_string(plan.num_sampled) +
                                " token ids (plan.num_sampled), got " + std::to_string(num_sampled));
  }
  for (size_t k = 0; k < num_sampled; ++k) {
    if (sampled[k] < 0) throw std::invalid_argument("sampled_token_ids: token ids must be >= 0");
  }
  const std::shared_ptr<BatchPlan> held = unapplied_.front();  // `plan` itself, kept alive
  unapplied_.erase(unapplied_.begin());
  out.clear();
  if (!unapplied_.empty()) {
    // Rows planned again by the next plan: the oldest plan awaiting update() that holds them is
    // now that one, which started where this plan ends.
    for (int32_t row = 0; row < plan.num_seqs; ++row) {
      Request* r = live_row_request(plan, row);
      if (r != nullptr && r->pending_step_id != plan.step_id) {
        r->computed_before_step = plan.seq_lens[static_cast<size_t>(row)];
      }
    }
  }
  bool any_finished = false;
  for (size_t k = 0; k < num_sampled; ++k) {
    // Skips requests aborted (and maybe replaced in their slot) since schedule().
    Request* r = live_row_request(plan, plan.sampled_seq_indices[k]);
    if (r == nullptr || r->status != RequestStatus::kRunning) continue;
    r->inflight_sample_index = -1;  // its token is known now
    int32_t token = -1;
    RequestStatus status;
    if (r->params.max_tokens == 0) {
      status = RequestStatus::kFinishedLength;  // prompt only: done once the prompt is computed
    } else {
      token = sampled[k];
      status = r->append_and_check_stop(token, config_.max_model_len);
    }
    out.push(r->handle, token, static_cast<int32_t>(finish_reason_of(status)), r->stop_token_id,
             std::max(r->num_cached_tokens, 0));
    if (is_finished(status)) {
      r->status = status;
      any_finished = true;
    }
  }
  if (!any_finished) return;
  size_t kept = 0;
  for (Request* r : running_) {
    if (is_finished(r->status)) {
      release(r);
    } else {
      running_[kept++] = r;
    }
  }
  running_.resize(kept);
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.num_running = static_cast<int32_t>(running_.size());
  s.num_waiting = static_cast<int32_t>(waiting_.size());
  s.num_blocks_total = kv_.pool().num_usable();
  s.num_blocks_used = kv_.pool().num_used();
  s.num_blocks_free = kv_.pool().num_free();
  s.prefix_cache_queries = kv_.prefix_cache().queries();
  s.prefix_cache_hits = kv_.prefix_cache().hits();
  s.num_preemptions = num_preemptions_;
  return s;
}

void Scheduler::check_invariants() const {
  kv_.check_invariants();
  const BlockPool& pool = kv_.pool();
  std::vector<int32_t> refs(static_cast<size_t>(pool.num_blocks()), 0);
  if (static_cast<int32_t>(running_.size()) > config_.max_num_seqs) throw CoreError("more running than max_num_seqs");
  if (unapplied_.size() > 2) throw CoreError("more than two plans await update()");
  if (running_.size() + waiting_.size() != handle_to_slot_.size()) {
    throw CoreError("running + waiting != live requests");
  }
  for (const Request* r : running_) {
    const std::string who = "request " + std::to_string(r->handle) + ": ";
    if (r->status != RequestStatus::kRunning) throw CoreError(who + "in running with another status");
    if (find_request(r->handle) != r) throw CoreError(who + "running but not in the request table");
    if (r->num_computed_tokens > r->num_planned_tokens() || r->num_planned_tokens() > config_.max_model_len) {
      throw CoreError(who + "token counts out of range");
    }
    if (r->has_inflight_token() && (unapplied_.empty() || r->inflight_sample_index >= unapplied_.front()->num_sampled)) {
      throw CoreError(who + "in-flight token without a plan awaiting update()");
    }
    if (static_cast<int32_t>(r->block_ids.size()) != kv_.blocks_for(r->num_computed_tokens)) {
      throw CoreError(who + "holds " + std::to_string(r->block_ids.size()) + " blocks for " +
                      std::to_string(r->num_computed_tokens) + " computed tokens");
    }
    if (r->num_hashed_blocks > static_cast<int32_t>(r->block_ids.size())) throw CoreError(who + "hashed past its blocks");
    for (int32_t id : r->block_ids) {
      if (id <= kNullBlock || id >= pool.num_blocks()) throw CoreError(who + "holds invalid block " + std::to_string(id));
      ++refs[static_cast<size_t>(id)];
    }
  }
  for (const Request* r : waiting_) {
    if (r->status != RequestStatus::kWaiting && r->status != RequestStatus::kPreempted) {
      throw CoreError("request " + std::to_string(r->handle) + ": waiting with another status");
    }
    if (!r->block_ids.empty() || r->num_computed_tokens != 0) {
      throw CoreError("request " + std::to_string(r->handle) + ": waiting but holds blocks");
    }
    if (find_request(r->handle) != r) throw CoreError("waiting request not in the request table");
  }
  for (int32_t id = 1; id < pool.num_blocks(); ++id) {
    if (pool.block(id).ref_cnt != refs[static_cast<size_t>(id)]) {
      throw CoreError("block " + std::to_string(id) + " has ref_cnt " + std::to_string(pool.block(id).ref_cnt) +
                      " but " + std::to_string(refs[static_cast<size_t>(id)]) + " block-table entries");
    }
  }
}

}  // namespace pagedllm::core
