// Fixed pool of KV blocks with reference counts and a free queue in eviction order.
//
// Block 0 is the null block: it pads block tables, is never handed out and never freed.
// Invariant (checked by check_invariants): a usable block is in the free queue iff its
// ref_cnt is 0. A free block may still hold a prefix-cache entry; popping it from the head
// evicts that entry (the caller asks the PrefixCache to forget it). Every operation is O(1):
// the queue is an intrusive doubly linked list over the block array.
#pragma once

#include <cstdint>
#include <vector>

#include "core/block_hash.h"

namespace pagedllm::core {

inline constexpr int32_t kNullBlock = 0;

struct Block {
  int32_t ref_cnt = 0;
  int32_t prev_free = -1;   // neighbours in the free queue, -1 at the ends / when not queued
  int32_t next_free = -1;
  bool in_free_queue = false;
  bool has_hash = false;    // registered in the prefix cache under `hash`
  BlockHash hash;
};

class BlockPool {
 public:
  explicit BlockPool(int32_t num_blocks);  // num_blocks includes the null block; >= 2

  int32_t num_blocks() const { return static_cast<int32_t>(blocks_.size()); }
  int32_t num_usable() const { return num_blocks() - 1; }
  int32_t num_free() const { return num_free_; }   // includes cached-but-evictable blocks
  int32_t num_used() const { return num_usable() - num_free_; }

  const Block& block(int32_t id) const { return blocks_[static_cast<size_t>(id)]; }
  Block& block(int32_t id) { return blocks_[static_cast<size_t>(id)]; }

  // Head of the free queue (next to evict), or -1 when empty.
  int32_t free_head() const { return head_; }
  int32_t next_free(int32_t id) const { return blocks_[static_cast<size_t>(id)].next_free; }

  // Takes the head of the free queue and gives it ref_cnt 1. Requires num_free() > 0.
  // The caller must drop the block's prefix-cache entry if it has one (it is being reused).
  int32_t pop_free();

  // One more reference; a block at ref 0 leaves the free queue (a prefix-cache hit).
  void incref(int32_t id);

  // One reference less; at ref 0 the block joins the tail of the free queue (evicted last).
  void decref(int32_t id);

  // Ids of the free queue from head (evicted first) to tail. O(num_free), for tests.
  std::vector<int32_t> free_queue() const;

  // Throws CoreError if the queue or the ref counts are inconsistent.
  void check_invariants() const;

 private:
  void unlink(int32_t id);
  void push_tail(int32_t id);

  std::vector<Block> blocks_;
  int32_t head_ = -1;
  int32_t tail_ = -1;
  int32_t num_free_ = 0;
};

}  // namespace pagedllm::core
