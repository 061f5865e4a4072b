// One step's work, in flat int32 arrays the model runner reads directly (numpy views in Python).
//
// Buffers are sized once for the config's maxima and reused: the Scheduler only rewrites a
// plan nobody else holds (shared_ptr use_count() == 1), so a plan stays unchanged for as long
// as a caller keeps it. The block table is written incrementally: each row remembers which
// request (serial, block epoch) it last held and how many ids it wrote, so a step only copies
// the blocks a request gained since this buffer last carried it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pagedllm::core {

struct Request;

struct BatchPlan {
  BatchPlan(int32_t max_num_seqs, int32_t max_num_tokens, int32_t max_blocks_per_seq, int32_t block_size);

  uint64_t scheduler_id = 0;    // which Scheduler produced it (unique per process)
  uint64_t step_id = 0;         // which schedule() produced it; update() checks both
  int32_t num_seqs = 0;         // S
  int32_t num_tokens = 0;       // T
  int32_t num_sampled = 0;      // N
  int32_t max_query_len = 0;
  int32_t max_seq_len = 0;
  int32_t max_blocks_per_seq;   // block table width
  int32_t block_size;

  std::vector<int32_t> input_ids;           // [T] (capacity max_num_tokens)
  std::vector<int32_t> positions;           // [T]
  std::vector<int32_t> slot_mapping;        // [T] block_id * block_size + offset
  std::vector<int32_t> query_start_loc;     // [S + 1]
  std::vector<int32_t> seq_lens;            // [S] context length after this step
  std::vector<int32_t> num_computed;        // [S] tokens in the cache before this step
  std::vector<int32_t> block_table;         // [S, max_blocks_per_seq], padded with block 0
  std::vector<int32_t> logits_indices;      // [N] token rows to sample
  std::vector<int32_t> sampled_seq_indices; // [N] sequence row of each sampled token
  std::vector<int64_t> handles;             // [S]
  std::vector<int64_t> preempted_handles;   // [P] (capacity max_num_seqs)
  int32_t num_preempted = 0;                // P
  // Plans made by schedule_ahead(): token rows whose id is the token the previous plan samples
  // (not known when this plan was made; input_ids holds -1 there). The runner copies
  // previous_sampled[deferred_sources[i]] into input_ids[deferred_rows[i]] on the device.
  std::vector<int32_t> deferred_rows;       // [D] token rows of this plan (capacity max_num_seqs)
  std::vector<int32_t> deferred_sources;    // [D] indices into the previous plan's sampled tokens
  int32_t num_deferred = 0;                 // D

  // Internal: identity of each row's request, for update() and the incremental block table.
  std::vector<int32_t> row_slot;            // [S] request table slot
  std::vector<uint64_t> row_serial;         // [S] request serial

  void clear();
  // Appends one sequence row: `num_new` tokens of `r` starting at `num_computed_before`.
  // r.block_ids must already cover the new tokens. A row reaching r's in-flight token
  // (r.inflight_sample_index) ends with a deferred token.
  void add_sequence(const Request& r, int32_t num_computed_before, int32_t num_new);
  void add_preempted(int64_t handle) { preempted_handles[static_cast<size_t>(num_preempted++)] = handle; }

 private:
  void write_block_table_row(int32_t row, const Request& r);
  // Per row of the block table: who it held and how far the ids written so far reach.
  std::vector<uint64_t> table_owner_;       // serial * 2^20 + epoch, 0 = none
  std::vector<int32_t> table_written_;      // valid ids at the row start
  std::vector<int32_t> table_extent_;       // beyond this index the row is all zeros
};

}  // namespace pagedllm::core
