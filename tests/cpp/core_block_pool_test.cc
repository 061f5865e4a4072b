// Block pool: exact block ids, eviction order, reference counts, the null block.
#include <gtest/gtest.h>

#include "core/block_pool.h"
#include "core/core_error.h"
#include "core/kv_cache_manager.h"

namespace pagedllm::core {
namespace {

using Ids = std::vector<int32_t>;

TEST(BlockPool, StartsWithEveryBlockButTheNullBlockFreeInIdOrder) {
  BlockPool pool(6);
  EXPECT_EQ(pool.num_usable(), 5);
  EXPECT_EQ(pool.num_free(), 5);
  EXPECT_EQ(pool.free_queue(), (Ids{1, 2, 3, 4, 5}));
  EXPECT_THROW(BlockPool(1), std::invalid_argument);
}

TEST(BlockPool, PopsFromTheHeadAndFreedBlocksGoToTheTail) {
  BlockPool pool(6);
  EXPECT_EQ(pool.pop_free(), 1);
  EXPECT_EQ(pool.pop_free(), 2);
  EXPECT_EQ(pool.pop_free(), 3);
  EXPECT_EQ(pool.block(2).ref_cnt, 1);
  EXPECT_EQ(pool.num_used(), 3);
  // Freed tail-first (as KVCacheManager::free does for blocks [1, 2, 3]).
  pool.decref(3);
  pool.decref(2);
  pool.decref(1);
  EXPECT_EQ(pool.free_queue(), (Ids{4, 5, 3, 2, 1}));
  const Ids expected_order{4, 5, 3, 2, 1};
  for (int32_t id : expected_order) EXPECT_EQ(pool.pop_free(), id);
  EXPECT_EQ(pool.num_free(), 0);
  EXPECT_THROW(pool.pop_free(), CoreError);
  pool.check_invariants();
}

TEST(BlockPool, RefCountsKeepSharedBlocksOutOfTheFreeQueue) {
  BlockPool pool(4);
  const int32_t a = pool.pop_free();  // 1
  pool.incref(a);
  EXPECT_EQ(pool.block(a).ref_cnt, 2);
  pool.decref(a);
  EXPECT_EQ(pool.free_queue(), (Ids{2, 3}));
  pool.decref(a);
  EXPECT_EQ(pool.free_queue(), (Ids{2, 3, 1}));
  // A hit on a free block takes it out of the middle of the queue.
  pool.incref(3);
  EXPECT_EQ(pool.free_queue(), (Ids{2, 1}));
  EXPECT_EQ(pool.block(3).ref_cnt, 1);
  EXPECT_THROW(pool.decref(2), CoreError);  // already free: a double free
  pool.check_invariants();
}

TEST(BlockPool, NullBlockIsNeverHandedOutOrFreed) {
  BlockPool pool(3);
  EXPECT_EQ(pool.pop_free(), 1);
  EXPECT_EQ(pool.pop_free(), 2);
  EXPECT_EQ(pool.num_free(), 0);
  EXPECT_THROW(pool.decref(kNullBlock), CoreError);
  EXPECT_THROW(pool.incref(kNullBlock), CoreError);
  pool.check_invariants();
}

TEST(KVCacheManager, FreeReturnsARequestsBlocksTailFirst) {
  KVCacheManager kv(8, 4, /*enable_prefix_caching=*/false);
  Request r;
  r.token_ids.assign(10, 7);
  ASSERT_EQ(kv.allocate_slots(r, 10), 3);
  EXPECT_EQ(r.block_ids, (Ids{1, 2, 3}));
  kv.free(r);
  EXPECT_TRUE(r.block_ids.empty());
  EXPECT_EQ(kv.pool().free_queue(), (Ids{4, 5, 6, 7, 3, 2, 1}));
  kv.check_invariants();
}

TEST(KVCacheManager, AllocateSlotsIsAllOrNothing) {
  KVCacheManager kv(4, 4, false);  // 3 usable blocks
  Request a, b;
  a.token_ids.assign(8, 1);
  b.token_ids.assign(8, 2);
  ASSERT_EQ(kv.allocate_slots(a, 8), 2);
  EXPECT_FALSE(kv.allocate_slots(b, 8).has_value());
  EXPECT_TRUE(b.block_ids.empty());
  EXPECT_EQ(kv.pool().num_free(), 1);
  ASSERT_EQ(kv.allocate_slots(b, 4), 1);
  // Growing within the last block needs no new block.
  a.num_computed_tokens = 8;
  a.token_ids.push_back(5);
  EXPECT_FALSE(kv.allocate_slots(a, 1).has_value());
  kv.check_invariants();
}

}  // namespace
}  // namespace pagedllm::core
