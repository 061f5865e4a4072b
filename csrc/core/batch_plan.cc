#include "core/batch_plan.h"

#include <algorithm>
#include <cstring>

#include "core/request.h"

namespace pagedllm::core {

BatchPlan::BatchPlan(int32_t max_num_seqs, int32_t max_num_tokens, int32_t max_blocks, int32_t bs)
    : max_blocks_per_seq(max_blocks),
      block_size(bs),
      input_ids(static_cast<size_t>(max_num_tokens)),
      positions(static_cast<size_t>(max_num_tokens)),
      slot_mapping(static_cast<size_t>(max_num_tokens)),
      query_start_loc(static_cast<size_t>(max_num_seqs) + 1),
      seq_lens(static_cast<size_t>(max_num_seqs)),
      num_computed(static_cast<size_t>(max_num_seqs)),
      block_table(static_cast<size_t>(max_num_seqs) * static_cast<size_t>(max_blocks)),
      logits_indices(static_cast<size_t>(max_num_seqs)),
      sampled_seq_indices(static_cast<size_t>(max_num_seqs)),
      handles(static_cast<size_t>(max_num_seqs)),
      preempted_handles(static_cast<size_t>(max_num_seqs)),
      deferred_rows(static_cast<size_t>(max_num_seqs)),
      deferred_sources(static_cast<size_t>(max_num_seqs)),
      row_slot(static_cast<size_t>(max_num_seqs)),
      row_serial(static_cast<size_t>(max_num_seqs)),
      table_owner_(static_cast<size_t>(max_num_seqs), 0),
      table_written_(static_cast<size_t>(max_num_seqs), 0),
      table_extent_(static_cast<size_t>(max_num_seqs), 0) {}

void BatchPlan::clear() {
  num_seqs = num_tokens = num_sampled = max_query_len = max_seq_len = num_preempted = num_deferred = 0;
  query_start_loc[0] = 0;
}

void BatchPlan::add_sequence(const Request& r, int32_t num_computed_before, int32_t num_new) {
  const int32_t row = num_seqs++;
  const int32_t seq_len = num_computed_before + num_new;
  const size_t t0 = static_cast<size_t>(num_tokens);
  // Ids known now; the scheduler plans at most the one in-flight token past them, last.
  const int32_t known = std::min(num_new, r.num_tokens() - num_computed_before);
  std::memcpy(&input_ids[t0], r.token_ids.data() + num_computed_before, sizeof(int32_t) * static_cast<size_t>(known));
  if (known < num_new) {
    const size_t t = t0 + static_cast<size_t>(known);
    input_ids[t] = -1;
    deferred_rows[static_cast<size_t>(num_deferred)] = static_cast<int32_t>(t);
    deferred_sources[static_cast<size_t>(num_deferred)] = r.inflight_sample_index;
    ++num_deferred;
  }
  for (int32_t i = 0; i < num_new; ++i) {
    const int32_t pos = num_computed_before + i;
    positions[t0 + static_cast<size_t>(i)] = pos;
    slot_mapping[t0 + static_cast<size_t>(i)] =
        r.block_ids[static_cast<size_t>(pos / block_size)] * block_size + pos % block_size;
  }
  num_tokens += num_new;
  query_start_loc[static_cast<size_t>(row) + 1] = num_tokens;
  seq_lens[static_cast<size_t>(row)] = seq_len;
  num_computed[static_cast<size_t>(row)] = num_computed_before;
  handles[static_cast<size_t>(row)] = r.handle;
  row_slot[static_cast<size_t>(row)] = r.slot;
  row_serial[static_cast<size_t>(row)] = r.serial;
  // A sequence is sampled iff this step reaches its last known (or in-flight) token.
  if (seq_len == r.num_planned_tokens()) {
    logits_indices[static_cast<size_t>(num_sampled)] = num_tokens - 1;
    sampled_seq_indices[static_cast<size_t>(num_sampled)] = row;
    ++num_sampled;
  }
  max_query_len = std::max(max_query_len, num_new);
  max_seq_len = std::max(max_seq_len, seq_len);
  write_block_table_row(row, r);
}

void BatchPlan::write_block_table_row(int32_t row, const Request& r) {
  const size_t i = static_cast<size_t>(row);
  int32_t* dst = &block_table[i * static_cast<size_t>(max_blocks_per_seq)];
  const int32_t n = static_cast<int32_t>(r.block_ids.size());
  const uint64_t owner = (r.serial << 20) + (r.block_epoch & 0xFFFFF);
  // Blocks of a running request only ever get appended while its epoch stays the same.
  const int32_t from = table_owner_[i] == owner ? std::min(table_written_[i], n) : 0;
  std::memcpy(dst + from, r.block_ids.data() + from, sizeof(int32_t) * static_cast<size_t>(n - from));
  if (table_extent_[i] > n) {
    std::memset(dst + n, 0, sizeof(int32_t) * static_cast<size_t>(table_extent_[i] - n));
  }
  table_owner_[i] = owner;
  table_written_[i] = n;
  table_extent_[i] = n;
}

}  // namespace pagedllm::core
