// Map from full-block content keys to the block holding that content.
//
// Invariant: map_[h] == id  <=>  pool.block(id).has_hash && pool.block(id).hash == h.
// At most one block per key: a second block computing the same content stays unregistered.
// Cached blocks whose ref_cnt drops to 0 stay here until the pool hands them out again
// (LRU order = the pool's free queue), so later requests can still hit them.
#pragma once

#include <cstdint>
#include <unordered_map>

#include "core/block_hash.h"
#include "core/block_pool.h"

namespace pagedllm::core {

class PrefixCache {
 public:
  // At most one entry per block: reserving that many up front keeps rehashing out of steps.
  explicit PrefixCache(int32_t num_blocks) { map_.reserve(static_cast<size_t>(num_blocks)); }

  // The block cached under `h`, or -1.
  int32_t lookup(const BlockHash& h) const {
    auto it = map_.find(h);
    return it == map_.end() ? -1 : it->second;
  }

  // Registers block `id` under `h` unless the key is taken or the block already has a key.
  // Returns whether it was registered.
  bool insert(const BlockHash& h, int32_t id, BlockPool& pool);

  // Forgets block `id` (it is about to hold other content). No-op if it has no key.
  void evict(int32_t id, BlockPool& pool);

  // Drops every entry; only allowed when no block is referenced. Returns false otherwise.
  bool reset(BlockPool& pool);

  size_t size() const { return map_.size(); }

  // Counters in tokens, cumulative.
  void record_lookup(int64_t queried_tokens, int64_t hit_tokens) {
    queries_ += queried_tokens;
    hits_ += hit_tokens;
  }
  int64_t queries() const { return queries_; }
  int64_t hits() const { return hits_; }

  void check_invariants(const BlockPool& pool) const;

 private:
  std::unordered_map<BlockHash, int32_t, BlockHashHasher> map_;
  int64_t queries_ = 0;
  int64_t hits_ = 0;
};

}  // namespace pagedllm::core
