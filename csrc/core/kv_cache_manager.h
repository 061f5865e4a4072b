// Gives requests KV blocks: prefix-cache hits first, fresh blocks for the rest.
// Verbs in pairs: get_computed_blocks / allocate_slots (empty optional = no room) / free.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "core/block_pool.h"
#include "core/prefix_cache.h"
#include "core/request.h"

namespace pagedllm::core {

struct ComputedBlocks {
  std::vector<int32_t> block_ids;  // cached blocks, in order, for the request's first tokens
  int32_t num_tokens = 0;          // block_ids.size() * block_size
};

class KVCacheManager {
 public:
  KVCacheManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching);

  int32_t block_size() const { return block_size_; }
  bool prefix_caching() const { return enable_prefix_caching_; }
  const BlockPool& pool() const { return pool_; }
  const PrefixCache& prefix_cache() const { return prefix_cache_; }
  PrefixCache& prefix_cache() { return prefix_cache_; }

  // Longest chain of cached full blocks matching a request that holds no blocks yet. Never
  // includes the block with the request's last token: that token is recomputed for its logits.
  // Takes no references (allocate_slots does).
  ComputedBlocks get_computed_blocks(Request& r);

  // Makes room for `num_new_tokens` more tokens after r.num_computed_tokens + computed.num_tokens,
  // taking references on `computed` first. Returns the number of blocks taken from the free
  // queue, or nullopt (and changes nothing) when the pool cannot supply them. Full blocks whose
  // tokens are all known are registered in the prefix cache. Does not move num_computed_tokens.
  // `keep_free`: fail unless at least this many blocks stay free afterwards (admission reserve).
  std::optional<int32_t> allocate_slots(Request& r, int32_t num_new_tokens,
                                        const ComputedBlocks& computed = ComputedBlocks{},
                                        int64_t keep_free = 0);

  // Drops the prefix-cache entries of the request's blocks from index `first_block` on, for
  // blocks whose K/V may never have been computed (a step that did not run). Prefix hits sit
  // before `first_block` and stay cached; a request that hit one of these blocks in the same
  // step keeps its reference, the block is just no longer findable.
  void forget_cache_entries(Request& r, int32_t first_block);

  // Shrinks the request back to holding `num_tokens` tokens: forgets the cache entries from the
  // first block no longer complete, returns the blocks past blocks_for(num_tokens), last first.
  void truncate(Request& r, int32_t num_tokens);

  // Releases every block of the request, last block first, so its tail is evicted first.
  void free(Request& r);

  // Blocks a request needs to hold `num_tokens` tokens.
  int32_t blocks_for(int32_t num_tokens) const { return (num_tokens + block_size_ - 1) / block_size_; }

  bool reset_prefix_cache() { return prefix_cache_.reset(pool_); }

  void check_invariants() const;

 private:
  void ensure_block_hashes(Request& r, int32_t num_full_blocks) const;
  void cache_full_blocks(Request& r, int32_t num_tokens_known);

  int32_t block_size_;
  bool enable_prefix_caching_;
  BlockPool pool_;
  PrefixCache prefix_cache_;
};

}  // namespace pagedllm::core
