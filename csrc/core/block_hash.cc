#include "core/block_hash.h"

namespace pagedllm::core {
namespace {

// Two independent 64-bit lanes, each a multiply-xorshift finalizer with its own constants.
inline uint64_t mix_lo(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline uint64_t mix_hi(uint64_t z) {
  z = (z ^ (z >> 33)) * 0xFF51AFD7ED558CCDULL;
  z = (z ^ (z >> 33)) * 0xC4CEB9FE1A85EC53ULL;
  return z ^ (z >> 33);
}

}  // namespace

BlockHash root_block_hash(const std::string& extra_key) {
  BlockHash h{0x243F6A8885A308D3ULL, 0x13198A2E03707344ULL};
  for (unsigned char c : extra_key) {
    h.lo = mix_lo(h.lo ^ (c + 0x100ULL));
    h.hi = mix_hi(h.hi + (c + 0x100ULL) * 0x9E3779B97F4A7C15ULL);
  }
  h.lo = mix_lo(h.lo ^ extra_key.size());
  h.hi = mix_hi(h.hi ^ (extra_key.size() * 0xD6E8FEB86659FD93ULL));
  return h;
}

BlockHash hash_block(const BlockHash& parent, const int32_t* token_ids, int num_tokens) {
  uint64_t lo = parent.lo ^ 0xA0761D6478BD642FULL;
  uint64_t hi = parent.hi ^ 0xE7037ED1A0B428DBULL;
  for (int i = 0; i < num_tokens; ++i) {
    const uint64_t t = static_cast<uint32_t>(token_ids[i]);
    lo = mix_lo(lo ^ t);
    hi = mix_hi(hi + t * 0x8EBC6AF09C88C6E3ULL);
  }
  lo = mix_lo(lo ^ static_cast<uint64_t>(num_tokens));
  hi = mix_hi(hi ^ (static_cast<uint64_t>(num_tokens) << 32));
  return BlockHash{lo, hi};
}

}  // namespace pagedllm::core
