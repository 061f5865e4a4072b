#include "core/block_pool.h"

#include <stdexcept>
#include <string>

#include "core/core_error.h"

namespace pagedllm::core {

BlockPool::BlockPool(int32_t num_blocks) {
  if (num_blocks < 2) throw std::invalid_argument("num_blocks: must be >= 2 (block 0 is the null block)");
  blocks_.resize(static_cast<size_t>(num_blocks));
  for (int32_t id = 1; id < num_blocks; ++id) push_tail(id);
}

int32_t BlockPool::pop_free() {
  if (head_ < 0) throw CoreError("BlockPool::pop_free on an empty free queue");
  const int32_t id = head_;
  unlink(id);
  blocks_[static_cast<size_t>(id)].ref_cnt = 1;
  return id;
}

void BlockPool::incref(int32_t id) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (id == kNullBlock) throw CoreError("incref of the null block");
  if (b.ref_cnt == 0) unlink(id);
  ++b.ref_cnt;
}

void BlockPool::decref(int32_t id) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (id == kNullBlock || b.ref_cnt <= 0) {
    throw CoreError("decref of block " + std::to_string(id) + " with ref_cnt " + std::to_string(b.ref_cnt));
  }
  if (--b.ref_cnt == 0) push_tail(id);
}

void BlockPool::unlink(int32_t id) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (b.prev_free >= 0) blocks_[static_cast<size_t>(b.prev_free)].next_free = b.next_free; else head_ = b.next_free;
  if (b.next_free >= 0) blocks_[static_cast<size_t>(b.next_free)].prev_free = b.prev_free; else tail_ = b.prev_free;
  b.prev_free = b.next_free = -1;
  b.in_free_queue = false;
  --num_free_;
}

void BlockPool::push_tail(int32_t id) {
  Block& b = blocks_[static_cast<size_t>(id)];
  b.prev_free = tail_;
  b.next_free = -1;
  if (tail_ >= 0) blocks_[static_cast<size_t>(tail_)].next_free = id; else head_ = id;
  tail_ = id;
  b.in_free_queue = true;
  ++num_free_;
}

std::vector<int32_t> BlockPool::free_queue() const {
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(num_free_));
  for (int32_t id = head_; id >= 0; id = blocks_[static_cast<size_t>(id)].next_free) ids.push_back(id);
  return ids;
}

void BlockPool::check_invariants() const {
  const Block& null_block = blocks_[kNullBlock];
  if (null_block.ref_cnt != 0 || null_block.in_free_queue || null_block.has_hash) {
    throw CoreError("null block was handed out, queued or cached");
  }
  int32_t count = 0;
  int32_t prev = -1;
  for (int32_t id = head_; id >= 0; id = blocks_[static_cast<size_t>(id)].next_free) {
    const Block& b = blocks_[static_cast<size_t>(id)];
    if (!b.in_free_queue || b.ref_cnt != 0 || b.prev_free != prev) {
      throw CoreError("free queue corrupt at block " + std::to_string(id));
    }
    if (++count > num_usable()) throw CoreError("free queue has a cycle");
    prev = id;
  }
  if (prev != tail_ || count != num_free_) throw CoreError("free queue length/tail mismatch");
  for (int32_t id = 1; id < num_blocks(); ++id) {
    const Block& b = blocks_[static_cast<size_t>(id)];
    if (b.ref_cnt < 0) throw CoreError("negative ref_cnt on block " + std::to_string(id));
    if (b.in_free_queue != (b.ref_cnt == 0)) {
      throw CoreError("block " + std::to_string(id) + " is free xor referenced violated");
    }
  }
}

}  // namespace pagedllm::core
