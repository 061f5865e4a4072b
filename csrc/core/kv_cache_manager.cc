#include "core/kv_cache_manager.h"

#include <algorithm>
#include <stdexcept>

#include "core/core_error.h"

namespace pagedllm::core {

KVCacheManager::KVCacheManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching)
    : block_size_(block_size), enable_prefix_caching_(enable_prefix_caching),
      pool_(num_blocks),
      prefix_cache_(enable_prefix_caching ? num_blocks : 0) {
  if (block_size < 1) throw std::invalid_argument("block_size: must be >= 1");
}

void KVCacheManager::ensure_block_hashes(Request& r, int32_t num_full_blocks) const {
  auto& hashes = r.block_hashes;
  if (static_cast<int32_t>(hashes.size()) >= num_full_blocks) return;
  BlockHash parent = hashes.empty() ? root_block_hash(r.params.cache_salt) : hashes.back();
  for (int32_t i = static_cast<int32_t>(hashes.size()); i < num_full_blocks; ++i) {
    parent = hash_block(parent, r.token_ids.data() + static_cast<size_t>(i) * block_size_, block_size_);
    hashes.push_back(parent);
  }
}

ComputedBlocks KVCacheManager::get_computed_blocks(Request& r) {
  ComputedBlocks out;
  if (!enable_prefix_caching_ || r.params.skip_prefix_cache || !r.block_ids.empty()) return out;
  // (num_tokens - 1) / block_size: full blocks strictly before the one holding the last token.
  const int32_t max_blocks = (r.num_tokens() - 1) / block_size_;
  ensure_block_hashes(r, max_blocks);
  for (int32_t i = 0; i < max_blocks; ++i) {
    const int32_t id = prefix_cache_.lookup(r.block_hashes[static_cast<size_t>(i)]);
    if (id < 0) break;
    out.block_ids.push_back(id);
  }
  out.num_tokens = static_cast<int32_t>(out.block_ids.size()) * block_size_;
  return out;
}

std::optional<int32_t> KVCacheManager::allocate_slots(Request& r, int32_t num_new_tokens,
                                                      const ComputedBlocks& computed,
                                                      int64_t keep_free) {
  const int32_t total_tokens = r.num_computed_tokens + computed.num_tokens + num_new_tokens;
  const int32_t held = static_cast<int32_t>(r.block_ids.size() + computed.block_ids.size());
  const int32_t num_new_blocks = std::max(0, blocks_for(total_tokens) - held);
  // Hits on blocks at ref 0 take them out of the free queue, so they cannot also be supplied fresh.
  int32_t hits_from_free_queue = 0;
  for (int32_t id : computed.block_ids) hits_from_free_queue += pool_.block(id).ref_cnt == 0 ? 1 : 0;
  if (num_new_blocks > pool_.num_free() - hits_from_free_queue - keep_free) return std::nullopt;

  for (int32_t id : computed.block_ids) {
    pool_.incref(id);
    r.block_ids.push_back(id);
  }
  for (int32_t i = 0; i < num_new_blocks; ++i) {
    const int32_t id = pool_.pop_free();
    prefix_cache_.evict(id, pool_);  // its old content is about to be overwritten
    r.block_ids.push_back(id);
  }
  if (enable_prefix_caching_) cache_full_blocks(r, std::min(total_tokens, r.num_tokens()));
  return num_new_blocks;
}

void KVCacheManager::cache_full_blocks(Request& r, int32_t num_tokens_known) {
  const int32_t num_full = num_tokens_known / block_size_;
  if (num_full <= r.num_hashed_blocks) return;
  ensure_block_hashes(r, num_full);
  for (int32_t i = r.num_hashed_blocks; i < num_full; ++i) {
    prefix_cache_.insert(r.block_hashes[static_cast<size_t>(i)], r.block_ids[static_cast<size_t>(i)], pool_);
  }
  r.num_hashed_blocks = num_full;
}

void KVCacheManager::forget_cache_entries(Request& r, int32_t first_block) {
  for (int32_t i = std::max(first_block, 0); i < r.num_hashed_blocks; ++i) {
    const int32_t id = r.block_ids[static_cast<size_t>(i)];
    prefix_cache_.evict(id, pool_);
  }
  r.num_hashed_blocks = std::min(r.num_hashed_blocks, std::max(first_block, 0));
}

void KVCacheManager::truncate(Request& r, int32_t num_tokens) {
  forget_cache_entries(r, num_tokens / block_size_);
  const size_t keep = static_cast<size_t>(blocks_for(num_tokens));
  if (r.block_ids.size() <= keep) return;
  while (r.block_ids.size() > keep) {
    pool_.decref(r.block_ids.back());
    r.block_ids.pop_back();
  }
  ++r.block_epoch;  // ids at these indices will differ when it grows again
}

void KVCacheManager::free(Request& r) {
  for (auto it = r.block_ids.rbegin(); it != r.block_ids.rend(); ++it) pool_.decref(*it);
  r.block_ids.clear();
  r.num_hashed_blocks = 0;
  ++r.block_epoch;
}

void KVCacheManager::check_invariants() const {
  pool_.check_invariants();
  prefix_cache_.check_invariants(pool_);
}

}  // namespace pagedllm::core
