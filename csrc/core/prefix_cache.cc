#include "core/prefix_cache.h"

#include <string>

#include "core/core_error.h"

namespace pagedllm::core {

bool PrefixCache::insert(const BlockHash& h, int32_t id, BlockPool& pool) {
  Block& b = pool.block(id);
  if (b.has_hash) return false;
  if (!map_.emplace(h, id).second) return false;
  b.has_hash = true;
  b.hash = h;
  return true;
}

void PrefixCache::evict(int32_t id, BlockPool& pool) {
  Block& b = pool.block(id);
  if (!b.has_hash) return;
  map_.erase(b.hash);
  b.has_hash = false;
}

bool PrefixCache::reset(BlockPool& pool) {
  if (pool.num_used() != 0) return false;
  for (const auto& entry : map_) pool.block(entry.second).has_hash = false;
  map_.clear();
  return true;
}

void PrefixCache::check_invariants(const BlockPool& pool) const {
  size_t with_hash = 0;
  for (int32_t id = 1; id < pool.num_blocks(); ++id) {
    const Block& b = pool.block(id);
    if (!b.has_hash) continue;
    ++with_hash;
    auto it = map_.find(b.hash);
    if (it == map_.end() || it->second != id) {
      throw CoreError("block " + std::to_string(id) + " has a key the prefix cache does not map to it");
    }
  }
  if (with_hash != map_.size()) throw CoreError("prefix cache maps keys to blocks that do not carry them");
}

}  // namespace pagedllm::core
