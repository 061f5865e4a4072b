// Prefix cache through the KV cache manager: full and partial hits, never the last token's block,
// LRU eviction of freed blocks, cache salt separation, and the content key itself.
#include <gtest/gtest.h>

#include <numeric>

#include "core/block_hash.h"
#include "core/kv_cache_manager.h"

namespace pagedllm::core {
namespace {

using Ids = std::vector<int32_t>;

Request make_request(std::vector<int32_t> tokens, const std::string& salt = "") {
  Request r;
  r.token_ids = std::move(tokens);
  r.num_prompt_tokens = static_cast<int32_t>(r.token_ids.size());
  r.params.cache_salt = salt;
  return r;
}

std::vector<int32_t> iota(int32_t n, int32_t start = 0) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), start);
  return v;
}

// Runs the whole prompt in one allocation, as a first prefill would.
void compute_prompt(KVCacheManager& kv, Request& r) {
  const ComputedBlocks hit = kv.get_computed_blocks(r);
  ASSERT_TRUE(kv.allocate_slots(r, r.num_tokens() - hit.num_tokens, hit).has_value());
  r.num_computed_tokens = r.num_tokens();
}

TEST(BlockHash, DependsOnParentTokensAndSalt) {
  const int32_t toks[4] = {1, 2, 3, 4};
  const int32_t other[4] = {1, 2, 3, 5};
  const BlockHash root = root_block_hash("");
  EXPECT_EQ(hash_block(root, toks, 4), hash_block(root, toks, 4));
  EXPECT_NE(hash_block(root, toks, 4), hash_block(root, other, 4));
  EXPECT_NE(hash_block(root, toks, 4), hash_block(root_block_hash("salt"), toks, 4));
  EXPECT_NE(hash_block(root, toks, 4), hash_block(hash_block(root, toks, 4), toks, 4));
  EXPECT_NE(hash_block(root, toks, 3), hash_block(root, toks, 4));
}

TEST(PrefixCache, FullAndPartialHitsReuseTheSameBlocks) {
  KVCacheManager kv(16, 4, true);
  Request a = make_request(iota(10));  // blocks [1 2 3]; [1 2] are full and cached
  compute_prompt(kv, a);
  EXPECT_EQ(a.block_ids, (Ids{1, 2, 3}));
  EXPECT_EQ(kv.prefix_cache().size(), 2u);

  Request same = make_request(iota(10));
  ComputedBlocks hit = kv.get_computed_blocks(same);
  EXPECT_EQ(hit.block_ids, (Ids{1, 2}));
  EXPECT_EQ(hit.num_tokens, 8);

  std::vector<int32_t> tokens = iota(4);
  tokens.insert(tokens.end(), {50, 51, 52, 53, 54});
  Request partial = make_request(tokens);
  hit = kv.get_computed_blocks(partial);
  EXPECT_EQ(hit.block_ids, (Ids{1}));

  Request miss = make_request(iota(9, 100));
  EXPECT_TRUE(kv.get_computed_blocks(miss).block_ids.empty());
}

TEST(PrefixCache, NeverHitsTheBlockHoldingTheLastPromptToken) {
  KVCacheManager kv(16, 4, true);
  Request a = make_request(iota(12));
  compute_prompt(kv, a);
  EXPECT_EQ(kv.prefix_cache().size(), 3u);
  // Exactly the cached 8 tokens: the second block holds the last token, so it is recomputed.
  Request b = make_request(iota(8));
  EXPECT_EQ(kv.get_computed_blocks(b).block_ids, (Ids{1}));
  Request c = make_request(iota(9));
  EXPECT_EQ(kv.get_computed_blocks(c).block_ids, (Ids{1, 2}));
}

TEST(PrefixCache, SaltSeparatesEntries) {
  KVCacheManager kv(16, 4, true);
  Request a = make_request(iota(10), "tenant-a");
  compute_prompt(kv, a);
  Request b = make_request(iota(10), "tenant-b");
  EXPECT_TRUE(kv.get_computed_blocks(b).block_ids.empty());
  Request unsalted = make_request(iota(10));
  EXPECT_TRUE(kv.get_computed_blocks(unsalted).block_ids.empty());
  Request a2 = make_request(iota(10), "tenant-a");
  EXPECT_EQ(kv.get_computed_blocks(a2).block_ids, (Ids{1, 2}));
}

TEST(PrefixCache, FreedBlocksStayCachedUntilEvictedInLruOrder) {
  KVCacheManager kv(8, 4, true);  // 7 usable blocks
  Request a = make_request(iota(10));
  compute_prompt(kv, a);                     // [1 2 3], cached 1 2
  kv.free(a);                                // queue: 4 5 6 7 3 2 1
  EXPECT_EQ(kv.pool().free_queue(), (Ids{4, 5, 6, 7, 3, 2, 1}));
  Request again = make_request(iota(10));
  EXPECT_EQ(kv.get_computed_blocks(again).block_ids, (Ids{1, 2}));

  // Taking 6 blocks pops 4 5 6 7 3 2: block 2's entry is evicted, block 1 survives.
  Request filler = make_request(iota(24, 500));
  compute_prompt(kv, filler);
  EXPECT_EQ(filler.block_ids, (Ids{4, 5, 6, 7, 3, 2}));
  EXPECT_EQ(kv.get_computed_blocks(again).block_ids, (Ids{1}));
  kv.free(filler);

  // A hit on a free cached block revives it instead of handing it out.
  Request b = make_request(iota(10));
  const ComputedBlocks hit = kv.get_computed_blocks(b);
  ASSERT_EQ(hit.block_ids, (Ids{1}));
  ASSERT_TRUE(kv.allocate_slots(b, 6, hit).has_value());
  EXPECT_EQ(b.block_ids[0], 1);
  EXPECT_EQ(kv.pool().block(1).ref_cnt, 1);
  kv.check_invariants();
}

TEST(PrefixCache, SharedBlocksAreReferenceCounted) {
  KVCacheManager kv(16, 4, true);
  Request a = make_request(iota(10));
  compute_prompt(kv, a);
  Request b = make_request(iota(10));
  compute_prompt(kv, b);
  EXPECT_EQ(b.block_ids, (Ids{1, 2, 4}));
  EXPECT_EQ(kv.pool().block(1).ref_cnt, 2);
  kv.free(a);
  EXPECT_EQ(kv.pool().block(1).ref_cnt, 1);
  EXPECT_EQ(kv.pool().free_queue().back(), 3);  // only a's own last block went back
  kv.free(b);
  EXPECT_EQ(kv.pool().num_used(), 0);
  EXPECT_TRUE(kv.reset_prefix_cache());
  EXPECT_EQ(kv.prefix_cache().size(), 0u);
  kv.check_invariants();
}

TEST(PrefixCache, DisabledOrSkippedMeansNoHits) {
  KVCacheManager off(16, 4, false);
  Request a = make_request(iota(10));
  compute_prompt(off, a);
  Request b = make_request(iota(10));
  EXPECT_TRUE(off.get_computed_blocks(b).block_ids.empty());

  KVCacheManager on(16, 4, true);
  Request c = make_request(iota(10));
  compute_prompt(on, c);
  Request d = make_request(iota(10));
  d.params.skip_prefix_cache = true;
  EXPECT_TRUE(on.get_computed_blocks(d).block_ids.empty());
}

}  // namespace
}  // namespace pagedllm::core
