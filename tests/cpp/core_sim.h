// Randomized simulation of the scheduler against an independent model of what every plan must
// contain, shared by the property test (core_property_test.cc) and the stress executable
// (core_stress.cc). Throws std::runtime_error on the first violation.
//
// Beyond Scheduler::check_invariants() after every operation, it simulates the KV cache: each
// slot a plan writes receives a digest of the request's tokens up to that position, and then
// every position every scheduled row can attend to must hold its own request's digest. That
// catches a prefix-cache hit on wrong content and blocks shared or clobbered by mistake.
//
// Half of the simulations plan one step ahead as the engine's async scheduling does:
// schedule_ahead() while the last plan awaits update(), its deferred rows checked against the
// token that plan samples for the same request.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/scheduler.h"

namespace pagedllm::core::testing {

// The fake model: the token sampled after `position` tokens of request `handle`.
inline int32_t fake_next_token(int64_t handle, int32_t position) {
  uint64_t z = static_cast<uint64_t>(handle) * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(position) + 1;
  z = (z ^ (z >> 31)) * 0xBF58476D1CE4E5B9ULL;
  z ^= z >> 29;
  return static_cast<int32_t>(z % 64);
}

struct SimStats {
  int64_t ops = 0, steps = 0, added = 0, rejected = 0, finished = 0, aborted = 0, preemptions = 0;
  int64_t tokens_scheduled = 0, prefix_hits = 0, prefix_queries = 0, failed_steps = 0;
  int64_t ahead_steps = 0, ahead_refused = 0, deferred_tokens = 0;
  void operator+=(const SimStats& o) {
    ahead_steps += o.ahead_steps; ahead_refused += o.ahead_refused; deferred_tokens += o.deferred_tokens;
    ops += o.ops; steps += o.steps; added += o.added; rejected += o.rejected; finished += o.finished;
    aborted += o.aborted; preemptions += o.preemptions; tokens_scheduled += o.tokens_scheduled;
    prefix_hits += o.prefix_hits; prefix_queries += o.prefix_queries; failed_steps += o.failed_steps;
  }
};

class SchedulerSim {
 public:
  explicit SchedulerSim(uint64_t seed) : rng_(seed), seed_(seed) {
    cfg_.block_size = pick({1, 2, 4, 8, 16});
    cfg_.max_model_len = uniform(4, 96);
    const int32_t per_seq = (cfg_.max_model_len + cfg_.block_size - 1) / cfg_.block_size;
    // Sometimes too small for the longest sequence (add must reject those), usually enough.
    cfg_.num_blocks = 1 + std::max(1, uniform(per_seq / 2, per_seq * 3));
    cfg_.max_num_seqs = uniform(1, 8);
    cfg_.enable_chunked_prefill = uniform(0, 3) != 0;
    cfg_.max_num_batched_tokens =
        cfg_.enable_chunked_prefill ? uniform(1, 64) : uniform(cfg_.max_model_len, cfg_.max_model_len + 32);
    cfg_.enable_prefix_caching = uniform(0, 3) != 0;
    cfg_.policy = uniform(0, 1) ? SchedulingPolicy::kPriority : SchedulingPolicy::kFcfs;
    cfg_.admission_reserve_blocks_per_running = uniform(0, 3) == 0 ? uniform(1, 2) : 0;
    ahead_ = uniform(0, 1) == 1;
    sched_ = std::make_unique<Scheduler>(cfg_);
    kv_.assign(static_cast<size_t>(cfg_.num_blocks) * cfg_.block_size, 0);
    for (auto& prefix : prefixes_) {
      prefix.resize(static_cast<size_t>(uniform(1, cfg_.max_model_len)));
      for (auto& t : prefix) t = uniform(0, 63);
    }
  }

  const SchedulerConfig& config() const { return cfg_; }

  // `num_ops` random add/step/abort operations, then steps until every request is done.
  SimStats run(int num_ops) {
    for (int i = 0; i < num_ops; ++i) {
      const int op = uniform(0, 99);
      if (op < 30) add_random();
      else if (op < 38) abort_random();
      else step();
      ++stats_.ops;
      check_invariants();
    }
    int guard = 0;
    while (sched_->has_unfinished_requests() || pending_) {
      step();
      check_invariants();
      if (++guard > 200000) fail("requests never finish (livelock)");
    }
    if (!live_.empty()) fail("requests left that the scheduler forgot");
    if (sched_->stats().num_blocks_used != 0) fail("blocks still in use after every request finished");
    const SchedulerStats s = sched_->stats();
    stats_.preemptions = s.num_preemptions;
    stats_.prefix_hits = s.prefix_cache_hits;
    stats_.prefix_queries = s.prefix_cache_queries;
    return stats_;
  }

 private:
  struct Tracked {
    RequestParams params;
    std::vector<int32_t> tokens;     // prompt + outputs
    std::vector<uint64_t> digests;   // digest of tokens[0..p] for each position p
    int32_t num_prompt = 0;
    int32_t computed = 0;            // our model of num_computed_tokens; -1: after a failed step
    int32_t before_failed_step = 0;  // num_computed_tokens before that failed step
    std::vector<int32_t> inflight;   // sampled by launched plans, not applied by update() yet

    int32_t num_known() const { return static_cast<int32_t>(tokens.size() + inflight.size()); }
    uint64_t digest_at(int32_t pos) const {
      if (pos < static_cast<int32_t>(tokens.size())) return digests[static_cast<size_t>(pos)];
      uint64_t d = digests.back();
      for (size_t i = 0; i <= static_cast<size_t>(pos) - tokens.size(); ++i) d = extend_digest(d, inflight[i]);
      return d;
    }
  };

  // A plan the simulated model has run: its sampled tokens, not yet given to update().
  struct Launched {
    std::shared_ptr<const BatchPlan> plan;
    std::vector<int32_t> tokens;  // [num_sampled]
    bool failed = false;          // the runner wrote garbage; never applied
  };

  void check_invariants() {
    try {
      sched_->check_invariants();
    } catch (const std::exception& e) {
      fail(std::string("check_invariants: ") + e.what());
    }
  }

  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error("seed " + std::to_string(seed_) + " step " + std::to_string(stats_.steps) + ": " + why);
  }

  int32_t uniform(int32_t lo, int32_t hi) { return std::uniform_int_distribution<int32_t>(lo, hi)(rng_); }
  int32_t pick(std::initializer_list<int32_t> v) { return *(v.begin() + uniform(0, static_cast<int32_t>(v.size()) - 1)); }

  static uint64_t extend_digest(uint64_t prev, int32_t token) {
    uint64_t z = (prev ^ static_cast<uint64_t>(token + 1)) * 0x100000001B3ULL;
    return z ^ (z >> 29);
  }

  void add_random() {
    const int64_t handle = next_handle_++;
    Tracked t;
    const auto& prefix = prefixes_[static_cast<size_t>(uniform(0, 3))];
    const int32_t len = uniform(1, cfg_.max_model_len + 2);
    for (int32_t i = 0; i < len; ++i) {
      t.tokens.push_back(i < static_cast<int32_t>(prefix.size()) && uniform(0, 9) != 0 ? prefix[static_cast<size_t>(i)]
                                                                                       : uniform(0, 63));
    }
    t.params.max_tokens = uniform(0, 12) == 0 ? 0 : uniform(1, 24);
    t.params.min_tokens = uniform(0, 3) == 0 ? uniform(0, t.params.max_tokens) : 0;
    t.params.eos_token_id = uniform(0, 2) == 0 ? -1 : uniform(0, 63);
    t.params.ignore_eos = uniform(0, 4) == 0;
    if (uniform(0, 3) == 0) t.params.stop_token_ids = {uniform(0, 63), uniform(0, 63)};
    t.params.priority = uniform(0, 3);
    t.params.arrival_time = uniform(0, 2) == 0 ? static_cast<double>(uniform(0, 100)) : static_cast<double>(handle);
    t.params.cache_salt = uniform(0, 4) == 0 ? "salt" : "";
    t.params.skip_prefix_cache = uniform(0, 9) == 0;
    t.num_prompt = len;

    const int32_t longest_prompt = t.params.max_tokens > 0 ? cfg_.max_model_len - 1 : cfg_.max_model_len;
    const int32_t longest_seq = std::min(len + t.params.max_tokens, cfg_.max_model_len);
    const bool must_reject = len > longest_prompt ||
                             (longest_seq + cfg_.block_size - 1) / cfg_.block_size > cfg_.num_blocks - 1;
    bool rejected = false;
    try {
      sched_->add_request(handle, t.tokens, t.params);
    } catch (const std::invalid_argument&) {
      rejected = true;
    }
    if (rejected != must_reject) fail(must_reject ? "accepted a request that can never run" : "rejected a valid request");
    if (rejected) {
      ++stats_.rejected;
      return;
    }
    uint64_t d = 0;
    for (int32_t tok : t.tokens) t.digests.push_back(d = extend_digest(d, tok));
    live_.emplace(handle, std::move(t));
    handles_.push_back(handle);
    ++stats_.added;
  }

  void abort_random() {
    // Sometimes a handle that is unknown (finished or never added): must answer false.
    if (handles_.empty() || uniform(0, 9) == 0) {
      if (sched_->abort_request(-1 - uniform(0, 5))) fail("abort of an unknown handle returned true");
      return;
    }
    const size_t i = static_cast<size_t>(uniform(0, static_cast<int32_t>(handles_.size()) - 1));
    const int64_t h = handles_[i];
    if (!sched_->abort_request(h)) fail("abort of a live request returned false");
    if (sched_->abort_request(h)) fail("second abort returned true");
    forget(h);
    ++stats_.aborted;
  }

  void forget(int64_t h) {
    live_.erase(h);
    for (size_t i = 0; i < handles_.size(); ++i) {
      if (handles_[i] == h) {
        handles_[i] = handles_.back();
        handles_.pop_back();
        break;
      }
    }
  }

  void step() {
    if (!ahead_) {
      Launched l = launch(sched_->schedule(), nullptr);
      // A failed step: update() is never called, the next schedule() rolls the plan back.
      if (!l.failed) apply(l);
      return;
    }
    if (!pending_) {
      Launched l = launch(sched_->schedule(), nullptr);
      if (!l.failed && l.plan->num_seqs > 0) pending_ = std::move(l);
      return;
    }
    // One step ahead: plan and run n+1 before n's tokens are applied.
    std::optional<Launched> next;
    if (auto plan = sched_->schedule_ahead()) {
      ++stats_.ahead_steps;
      next = launch(std::move(plan), &*pending_);
    } else {
      ++stats_.ahead_refused;
    }
    apply(*pending_);
    pending_.reset();
    // A failed or empty plan is left awaiting update(): the next schedule() rolls it back.
    if (next && !next->failed && next->plan->num_seqs > 0) pending_ = std::move(next);
  }

  // Checks a fresh plan against the model and runs it: writes its K/V digests, reads back every
  // attended position, samples with the fake model. `prev`: the plan it was scheduled ahead of.
  Launched launch(std::shared_ptr<const BatchPlan> plan_ptr, const Launched* prev) {
    Launched launched;
    launched.plan = plan_ptr;
    const BatchPlan& p = *plan_ptr;
    ++stats_.steps;
    const int32_t bs = cfg_.block_size;
    if (p.num_tokens > cfg_.max_num_batched_tokens) fail("token budget exceeded");
    if (p.num_seqs > cfg_.max_num_seqs) fail("max_num_seqs exceeded");
    if (p.query_start_loc[0] != 0 || p.query_start_loc[static_cast<size_t>(p.num_seqs)] != p.num_tokens) {
      fail("query_start_loc does not span the tokens");
    }
    for (int32_t k = 0; k < p.num_preempted; ++k) {
      auto it = live_.find(p.preempted_handles[static_cast<size_t>(k)]);
      if (it == live_.end()) fail("preempted an unknown request");
      it->second.computed = 0;
    }
    if (!sched_->has_unfinished_requests() && p.num_seqs != 0) fail("scheduled work with no requests");
    if (p.num_seqs == 0 && sched_->stats().num_running + sched_->stats().num_waiting > 0 &&
        sched_->stats().num_running == 0 && p.num_preempted == 0 && sched_->stats().num_blocks_used == 0) {
      fail("idle step although waiting requests fit an empty cache");
    }
    int32_t sampled = 0;
    std::vector<const Tracked*> rows(static_cast<size_t>(p.num_seqs));
    // A failed step: the runner wrote garbage. Nobody may ever read it through the prefix cache.
    const bool failed_step = uniform(0, 32) == 0;
    launched.failed = failed_step;
    if (!prev && p.num_deferred != 0) fail("deferred rows in a plan not scheduled ahead");
    int32_t deferred_seen = 0;
    // 1. Check each row and "run" it: write its tokens' digests into the simulated KV cache.
    for (int32_t s = 0; s < p.num_seqs; ++s) {
      const size_t si = static_cast<size_t>(s);
      auto it = live_.find(p.handles[si]);
      if (it == live_.end()) fail("plan row for an unknown request");
      Tracked& t = it->second;
      rows[si] = &t;
      const int32_t q0 = p.query_start_loc[si], q1 = p.query_start_loc[si + 1];
      const int32_t nc = p.num_computed[si], len = p.seq_lens[si];
      if (q1 <= q0 || len != nc + (q1 - q0)) fail("row lengths inconsistent");
      if (len > t.num_known()) fail("scheduled past the known tokens");
      if (t.computed < 0) {
        // Rolled back: resumes where it was, or (if that step admitted it) from its prefix hits.
        if (nc != t.before_failed_step && (nc % bs != 0 || nc >= static_cast<int32_t>(t.tokens.size()))) {
          fail("bad restart after a failed step");
        }
      } else if (t.computed == 0) {
        if (nc % bs != 0 || nc >= static_cast<int32_t>(t.tokens.size())) fail("prefix hit of a bad length");
        if (nc > 0 && (!cfg_.enable_prefix_caching || t.params.skip_prefix_cache)) fail("prefix hit while disabled");
      } else if (nc != t.computed) {
        fail("num_computed " + std::to_string(nc) + " but expected " + std::to_string(t.computed));
      }
      if (failed_step) {
        t.before_failed_step = nc;
        t.computed = -1;
      } else {
        t.computed = len;
      }
      const int32_t* table = &p.block_table[si * static_cast<size_t>(p.max_blocks_per_seq)];
      const int32_t nblocks = (len + bs - 1) / bs;
      for (int32_t b = 0; b < p.max_blocks_per_seq; ++b) {
        const bool used = b < nblocks;
        if (used != (table[b] != kNullBlock) || table[b] < 0 || table[b] >= cfg_.num_blocks) {
          fail("block table row malformed");
        }
      }
      for (int32_t q = q0; q < q1; ++q) {
        const int32_t pos = nc + (q - q0);
        const size_t qi = static_cast<size_t>(q);
        if (p.positions[qi] != pos) fail("token row wrong");
        if (pos < static_cast<int32_t>(t.tokens.size())) {
          if (p.input_ids[qi] != t.tokens[static_cast<size_t>(pos)]) fail("token row wrong");
        } else {
          // The in-flight token: a deferred row naming the previous plan's sample for this request.
          const size_t d = static_cast<size_t>(deferred_seen++);
          if (p.input_ids[qi] != -1 || d >= static_cast<size_t>(p.num_deferred) || p.deferred_rows[d] != q) {
            fail("in-flight token not deferred");
          }
          const int32_t k = p.deferred_sources[d];
          if (k < 0 || k >= prev->plan->num_sampled ||
              prev->plan->handles[static_cast<size_t>(prev->plan->sampled_seq_indices[static_cast<size_t>(k)])] !=
                  p.handles[si] ||
              t.inflight.size() != 1 || prev->tokens[static_cast<size_t>(k)] != t.inflight.front()) {
            fail("deferred row takes another request's token");
          }
          // Nothing is planned past a finish the count alone decides (max_tokens, max_model_len).
          const int32_t with_token = static_cast<int32_t>(t.tokens.size()) + 1;
          if (with_token - t.num_prompt >= t.params.max_tokens || with_token >= cfg_.max_model_len) {
            fail("planned ahead past a length finish");
          }
          ++stats_.deferred_tokens;
        }
        const int32_t slot = table[pos / bs] * bs + pos % bs;
        if (p.slot_mapping[qi] != slot) fail("slot_mapping disagrees with the block table");
        kv_[static_cast<size_t>(slot)] = failed_step ? 0xBADULL + rng_() : t.digest_at(pos);
      }
      const bool should_sample = len == t.num_known();
      if (should_sample) {
        if (sampled >= p.num_sampled || p.sampled_seq_indices[static_cast<size_t>(sampled)] != s ||
            p.logits_indices[static_cast<size_t>(sampled)] != q1 - 1) {
          fail("sampled rows wrong");
        }
        ++sampled;
      }
      stats_.tokens_scheduled += q1 - q0;
    }
    if (sampled != p.num_sampled) fail("sampled a partial prefill");
    if (deferred_seen != p.num_deferred) fail("deferred rows that are not in-flight tokens");
    if (failed_step) {
      ++stats_.failed_steps;
      return launched;
    }
    // 2. Attention reads: every position of every row must hold its own request's content.
    for (int32_t s = 0; s < p.num_seqs; ++s) {
      const size_t si = static_cast<size_t>(s);
      const int32_t* table = &p.block_table[si * static_cast<size_t>(p.max_blocks_per_seq)];
      for (int32_t pos = 0; pos < p.seq_lens[si]; ++pos) {
        if (kv_[static_cast<size_t>(table[pos / bs] * bs + pos % bs)] != rows[si]->digest_at(pos)) {
          fail("KV content of request " + std::to_string(p.handles[si]) + " wrong at position " + std::to_string(pos));
        }
      }
    }
    // 3. Sample with the fake model; the token is in flight until update() applies it.
    std::vector<int32_t>& tokens = launched.tokens;
    tokens.resize(static_cast<size_t>(p.num_sampled));
    for (int32_t k = 0; k < p.num_sampled; ++k) {
      const size_t row = static_cast<size_t>(p.sampled_seq_indices[static_cast<size_t>(k)]);
      tokens[static_cast<size_t>(k)] = fake_next_token(p.handles[row], p.seq_lens[row]);
      Tracked& t = live_.find(p.handles[row])->second;  // rows were checked live above
      if (t.params.max_tokens > 0) t.inflight.push_back(tokens[static_cast<size_t>(k)]);
    }
    return launched;
  }

  // update() with a launched plan's tokens (sometimes after an abort), outputs checked.
  void apply(const Launched& launched) {
    const BatchPlan& p = *launched.plan;
    const std::vector<int32_t>& tokens = launched.tokens;
    if (!handles_.empty() && uniform(0, 19) == 0) abort_random();
    StepOutputs out;
    sched_->update(p, tokens.data(), tokens.size(), out);
    size_t o = 0;
    for (int32_t k = 0; k < p.num_sampled; ++k) {
      const size_t row = static_cast<size_t>(p.sampled_seq_indices[static_cast<size_t>(k)]);
      auto it = live_.find(p.handles[row]);
      if (it == live_.end()) continue;  // aborted after schedule(): no output expected
      if (o >= out.size() || out.handles[o] != p.handles[row]) fail("outputs not aligned with sampled rows");
      expect_output(it->second, tokens[static_cast<size_t>(k)], out, o);
      if (out.finish_reasons[o] != static_cast<int32_t>(FinishReason::kNone)) {
        forget(p.handles[row]);
        ++stats_.finished;
      }
      ++o;
    }
    if (o != out.size()) fail("extra outputs");
  }

  // The stop rules, written independently of Request::append_and_check_stop.
  void expect_output(Tracked& t, int32_t token, const StepOutputs& out, size_t o) {
    FinishReason want = FinishReason::kNone;
    int32_t want_token = -1, want_stop = -1;
    if (t.params.max_tokens == 0) {
      want = FinishReason::kLength;
    } else {
      want_token = token;
      if (t.inflight.empty() || t.inflight.front() != token) fail("applied a token the model did not sample");
      t.inflight.erase(t.inflight.begin());
      const int32_t outputs_before = static_cast<int32_t>(t.tokens.size()) - t.num_prompt;
      t.tokens.push_back(token);
      t.digests.push_back(extend_digest(t.digests.back(), token));
      bool stop = false;
      if (outputs_before >= t.params.min_tokens) {
        if (!t.params.ignore_eos && token == t.params.eos_token_id) stop = true;
        for (int32_t s : t.params.stop_token_ids) stop = stop || s == token;
      }
      if (stop) {
        want = FinishReason::kStop;
        want_stop = token;
      } else if (outputs_before + 1 >= t.params.max_tokens ||
                 static_cast<int32_t>(t.tokens.size()) >= cfg_.max_model_len) {
        want = FinishReason::kLength;
      }
    }
    if (out.new_token_ids[o] != want_token || out.finish_reasons[o] != static_cast<int32_t>(want) ||
        out.stop_token_ids[o] != want_stop) {
      fail("output of request " + std::to_string(out.handles[o]) + ": got reason " +
           std::to_string(out.finish_reasons[o]) + " want " + std::to_string(static_cast<int>(want)));
    }
  }

  std::mt19937_64 rng_;
  uint64_t seed_;
  SchedulerConfig cfg_;
  std::unique_ptr<Scheduler> sched_;
  bool ahead_ = false;               // plan one step ahead (schedule_ahead)
  std::optional<Launched> pending_;  // ahead mode: the launched plan awaiting update()
  std::vector<uint64_t> kv_;  // [num_blocks * block_size] digest held by each slot
  std::vector<int32_t> prefixes_[4];
  std::unordered_map<int64_t, Tracked> live_;
  std::vector<int64_t> handles_;
  int64_t next_handle_ = 1;
  SimStats stats_;
};

}  // namespace pagedllm::core::testing
