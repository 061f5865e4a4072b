// 128-bit content key of a full KV block: hash(parent key, the block's token ids).
// Extra keys (the cache salt) enter through the root key of the chain, so they separate
// every block of a request, not only the first. 128 bits make a collision negligible
// (~2^-64 after 2^32 distinct blocks), so hits are not re-verified token by token.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pagedllm::core {

struct BlockHash {
  uint64_t lo = 0;
  uint64_t hi = 0;
  bool operator==(const BlockHash& o) const { return lo == o.lo && hi == o.hi; }
  bool operator!=(const BlockHash& o) const { return !(*this == o); }
};

struct BlockHashHasher {
  size_t operator()(const BlockHash& h) const { return static_cast<size_t>(h.lo ^ (h.hi * 0x9E3779B97F4A7C15ULL)); }
};

// Key of the (virtual) block before a request's first block; different salts give different roots.
BlockHash root_block_hash(const std::string& extra_key);

// Key of a full block of `num_tokens` token ids following the block keyed `parent`.
BlockHash hash_block(const BlockHash& parent, const int32_t* token_ids, int num_tokens);

}  // namespace pagedllm::core
