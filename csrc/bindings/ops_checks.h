// Validation for the _C.ops bindings: turns Python tensor descriptors into the kernels' plain
// argument structs, checking dtype, device, contiguity and shapes first. A failed check throws
// std::invalid_argument, which pybind11 raises as ValueError, before anything is launched.
//
// A tensor descriptor is the tuple (data_ptr, shape, strides, dtype_code, device_index) with
// strides in elements, dtype codes of kernels::DType and device_index -1 for the CPU
// (python/pagedllm/ops/__init__.py builds them from torch tensors).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/activation.h"
#include "kernels/kernel_args.h"
#include "kernels/paged_attention.h"
#include "kernels/reshape_and_cache.h"
#include "kernels/rms_norm.h"
#include "kernels/rotary_embedding.h"
#include "kernels/sampling.h"

namespace pagedllm::bindings {

using kernels::DType;
using TensorTuple = std::tuple<uintptr_t, std::vector<int64_t>, std::vector<int64_t>, int, int>;

struct TensorRef {
  std::string name;
  uintptr_t ptr = 0;
  std::vector<int64_t> shape, strides;
  DType dtype = DType::kFloat32;
  int device = -1;  // -1: CPU

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  int64_t dim(int i) const { return shape[static_cast<size_t>(i)]; }
  int64_t stride(int i) const { return strides[static_cast<size_t>(i)]; }
};

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

inline TensorRef to_ref(const char* name, const TensorTuple& t) {
  TensorRef r;
  r.name = name;
  r.ptr = std::get<0>(t);
  r.shape = std::get<1>(t);
  r.strides = std::get<2>(t);
  const int code = std::get<3>(t);
  if (code < 0 || code > 4) fail(std::string(name) + ": unknown dtype code " + std::to_string(code));
  r.dtype = static_cast<DType>(code);
  r.device = std::get<4>(t);
  if (r.shape.size() != r.strides.size()) fail(std::string(name) + ": shape and strides differ in rank");
  if (r.ptr == 0 && r.numel() > 0) fail(std::string(name) + ": null data pointer");
  return r;
}

inline std::string shape_str(const TensorRef& t) {
  std::string s = "[";
  for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + "]";
}

inline void check_rank(const TensorRef& t, size_t rank) {
  if (t.shape.size() != rank) {
    fail(t.name + ": expected " + std::to_string(rank) + " dimensions, got shape " + shape_str(t));
  }
}

inline void check_dtype(const TensorRef& t, DType want) {
  if (t.dtype != want) {
    fail(t.name + ": expected dtype " + kernels::dtype_name(want) + ", got " + kernels::dtype_name(t.dtype));
  }
}

inline void check_float(const TensorRef& t) {
  if (t.dtype != DType::kFloat32 && t.dtype != DType::kFloat16 && t.dtype != DType::kBFloat16) {
    fail(t.name + ": expected float32, float16 or bfloat16, got " + kernels::dtype_name(t.dtype));
  }
}

// Dimensions from `from` on are contiguous (row-major).
inline void check_contiguous_from(const TensorRef& t, size_t from) {
  int64_t expect = 1;
  for (size_t i = t.shape.size(); i-- > from;) {
    if (t.shape[i] != 1 && t.strides[i] != expect) {
      fail(t.name + ": must be contiguous" + (from ? " in its inner dimensions" : "") + " (shape " +
           shape_str(t) + ")");
    }
    expect *= t.shape[i];
  }
}

inline void check_contiguous(const TensorRef& t) { check_contiguous_from(t, 0); }

inline void check_dim(const TensorRef& t, int i, int64_t want, const char* what) {
  if (t.dim(i) != want) {
    fail(t.name + ": dimension " + std::to_string(i) + " (" + what + ") is " + std::to_string(t.dim(i)) +
         ", expected " + std::to_string(want));
  }
}

inline int common_device(std::initializer_list<const TensorRef*> ts) {
  const int dev = (*ts.begin())->device;
  for (const TensorRef* t : ts) {
    if (t->device != dev) fail(t->name + ": all tensors must be on the same device");
  }
  return dev;
}

[[noreturn]] inline void no_cuda(const char* op) {
  throw std::runtime_error(std::string(op) +
                           ": CUDA tensors given, but pagedllm._C was built without CUDA kernels");
}

inline void* as_ptr(const TensorRef& t) { return reinterpret_cast<void*>(t.ptr); }
inline void* as_stream(uintptr_t s) { return reinterpret_cast<void*>(s); }

// ---------------------------------------------------------------------------------------------
// Each op: validate, fill the argument struct, run the CPU twin or the CUDA launcher.

// key and value [T, Hkv, D] (rows dense), kv_cache [2, NB, BS, Hkv, D], slots [T] int32: checked
// and described for reshape_and_cache (also the cache write fused into rotary_embedding).
inline kernels::ReshapeAndCacheArgs cache_write_args(const TensorRef& key, const TensorRef& value,
                                                     const TensorRef& cache, const TensorRef& slots,
                                                     uintptr_t stream) {
  check_rank(key, 3);
  check_rank(value, 3);
  check_rank(cache, 5);
  check_rank(slots, 1);
  check_float(cache);
  check_dtype(key, cache.dtype);
  check_dtype(value, cache.dtype);
  check_dtype(slots, DType::kInt32);
  check_contiguous(cache);
  check_contiguous(slots);
  check_contiguous_from(key, 1);
  check_contiguous_from(value, 1);
  check_dim(cache, 0, 2, "K and V planes");
  check_dim(key, 1, cache.dim(3), "num_kv_heads");
  check_dim(key, 2, cache.dim(4), "head_dim");
  check_dim(value, 0, key.dim(0), "num_tokens");
  check_dim(value, 1, cache.dim(3), "num_kv_heads");
  check_dim(value, 2, cache.dim(4), "head_dim");
  check_dim(slots, 0, key.dim(0), "num_tokens");
  kernels::ReshapeAndCacheArgs a{};
  a.key = as_ptr(key);
  a.value = as_ptr(value);
  a.kv_cache = as_ptr(cache);
  a.slot_mapping = static_cast<const int32_t*>(as_ptr(slots));
  a.num_tokens = key.dim(0);
  a.key_stride = key.stride(0);
  a.value_stride = value.stride(0);
  a.num_blocks = cache.dim(1);
  a.block_size = static_cast<int>(cache.dim(2));
  a.num_kv_heads = static_cast<int>(cache.dim(3));
  a.head_dim = static_cast<int>(cache.dim(4));
  a.dtype = cache.dtype;
  a.stream = as_stream(stream);
  return a;
}

// CPU only (reading a CUDA slot_mapping would cost a sync): every slot inside the cache.
inline void check_slots_in_cache(const kernels::ReshapeAndCacheArgs& a) {
  const int64_t num_slots = a.num_blocks * a.block_size;
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    if (a.slot_mapping[t] >= num_slots) {
      fail("slot_mapping: slot " + std::to_string(a.slot_mapping[t]) + " of token " + std::to_string(t) +
           " is outside the cache (" + std::to_string(num_slots) + " slots)");
    }
  }
}

inline void reshape_and_cache(const TensorTuple& key_t, const TensorTuple& value_t,
                              const TensorTuple& cache_t, const TensorTuple& slots_t, uintptr_t stream) {
  const TensorRef key = to_ref("key", key_t), value = to_ref("value", value_t);
  const TensorRef cache = to_ref("kv_cache", cache_t), slots = to_ref("slot_mapping", slots_t);
  const int dev = common_device({&key, &value, &cache, &slots});
  const kernels::ReshapeAndCacheArgs a = cache_write_args(key, value, cache, slots, stream);
  if (dev < 0) {
    check_slots_in_cache(a);
    kernels::reshape_and_cache_cpu(a);
    return;
  }
#ifdef PAGEDLLM_WITH_CUDA
  kernels::reshape_and_cache_cuda(a);
#else
  no_cuda("reshape_and_cache");
#endif
}

inline kernels::PagedAttentionArgs attention_args(
    const TensorTuple& out_t, const TensorTuple& query_t, const TensorTuple& cache_t,
    const TensorTuple& table_t, const TensorTuple& qsl_t, const TensorTuple& lens_t, double scale,
    int max_query_len, int max_seq_len, int sliding_window, int* device) {
  const TensorRef out = to_ref("out", out_t), query = to_ref("query", query_t);
  const TensorRef cache = to_ref("kv_cache", cache_t), table = to_ref("block_table", table_t);
  const TensorRef qsl = to_ref("query_start_loc", qsl_t), lens = to_ref("seq_lens", lens_t);
  *device = common_device({&out, &query, &cache, &table, &qsl, &lens});
  check_rank(out, 3);
  check_rank(query, 3);
  check_rank(cache, 5);
  check_rank(table, 2);
  check_rank(qsl, 1);
  check_rank(lens, 1);
  check_float(cache);
  check_dtype(query, cache.dtype);
  check_dtype(out, cache.dtype);
  for (const TensorRef* t : {&table, &qsl, &lens}) {
    check_dtype(*t, DType::kInt32);
    check_contiguous(*t);
  }
  check_contiguous(cache);
  check_contiguous(out);
  check_contiguous_from(query, 1);
  check_dim(cache, 0, 2, "K and V planes");
  const int64_t num_kv_heads = cache.dim(3), head_dim = cache.dim(4), block_size = cache.dim(2);
  check_dim(query, 2, head_dim, "head_dim");
  if (query.dim(1) % num_kv_heads != 0 || query.dim(1) == 0) {
    fail("query: num_q_heads (" + std::to_string(query.dim(1)) + ") must be a positive multiple of num_kv_heads (" +
         std::to_string(num_kv_heads) + ")");
  }
  check_dim(out, 0, query.dim(0), "num_tokens");
  check_dim(out, 1, query.dim(1), "num_q_heads");
  check_dim(out, 2, head_dim, "head_dim");
  const int64_t num_seqs = lens.dim(0);
  check_dim(qsl, 0, num_seqs + 1, "num_seqs + 1");
  check_dim(table, 0, num_seqs, "num_seqs");
  if (block_size <= 0 || (block_size & (block_size - 1)) != 0) {
    fail("kv_cache: block_size (" + std::to_string(block_size) + ") must be a power of two");
  }
  if (!(scale > 0.0)) fail("scale: must be positive");
  kernels::PagedAttentionArgs a{};
  a.out = as_ptr(out);
  a.query = as_ptr(query);
  a.kv_cache = as_ptr(cache);
  a.block_table = static_cast<const int32_t*>(as_ptr(table));
  a.query_start_loc = static_cast<const int32_t*>(as_ptr(qsl));
  a.seq_lens = static_cast<const int32_t*>(as_ptr(lens));
  a.q_stride = query.stride(0);
  a.num_tokens = query.dim(0);
  a.num_blocks = cache.dim(1);
  a.num_seqs = static_cast<int>(num_seqs);
  a.max_blocks_per_seq = static_cast<int>(table.dim(1));
  a.num_q_heads = static_cast<int>(query.dim(1));
  a.num_kv_heads = static_cast<int>(num_kv_heads);
  a.head_dim = static_cast<int>(head_dim);
  a.block_size = static_cast<int>(block_size);
  a.scale = static_cast<float>(scale);
  a.max_query_len = max_query_len;
  a.max_seq_len = max_seq_len;
  a.sliding_window = sliding_window;
  a.dtype = cache.dtype;
  a.short_chunk_tokens = -1;
  return a;
}

// token_order must be a permutation of the tokens (on CUDA a token left out would never be
// computed; device memory is not read there, so the CPU path is where this is checked).
inline void check_token_order_cpu(const kernels::PagedAttentionArgs& a) {
  if (a.token_order == nullptr) return;
  std::vector<char> seen(static_cast<size_t>(a.num_tokens), 0);
  for (int64_t i = 0; i < a.num_tokens; ++i) {
    const int32_t t = a.token_order[i];
    if (t < 0 || t >= a.num_tokens || seen[static_cast<size_t>(t)]) {
      fail("token_order: must be a permutation of 0.." + std::to_string(a.num_tokens - 1));
    }
    seen[static_cast<size_t>(t)] = 1;
  }
}

// short_chunk_tokens = n must put every token of a chunk shorter than kPrefillMmaMinQueryLen
// among ranks [0, n) of token_order (on CUDA a token past them would never be computed).
inline void check_short_chunk_tokens_cpu(const kernels::PagedAttentionArgs& a) {
  if (a.short_chunk_tokens < 0) return;
  std::vector<int64_t> rank_of(static_cast<size_t>(a.num_tokens));
  for (int64_t r = 0; r < a.num_tokens; ++r) {
    rank_of[static_cast<size_t>(a.token_order != nullptr ? a.token_order[r] : r)] = r;
  }
  for (int s = 0; s < a.num_seqs; ++s) {
    const int32_t begin = a.query_start_loc[s], end = a.query_start_loc[s + 1];
    if (end - begin >= kernels::kPrefillMmaMinQueryLen) continue;
    for (int32_t t = begin; t < end; ++t) {
      if (rank_of[static_cast<size_t>(t)] >= a.short_chunk_tokens) {
        fail("short_chunk_tokens: token " + std::to_string(t) + " of a " + std::to_string(end - begin) +
             "-token chunk has rank " + std::to_string(rank_of[static_cast<size_t>(t)]) + " in token_order, not below " +
             std::to_string(a.short_chunk_tokens));
      }
    }
  }
}

// Host-side contract checks on the CPU path (device memory is not read on the CUDA path).
inline void check_attention_metadata_cpu(const kernels::PagedAttentionArgs& a) {
  if (a.query_start_loc[0] != 0) fail("query_start_loc: must start at 0");
  if (a.query_start_loc[a.num_seqs] > a.num_tokens) fail("query_start_loc: last entry exceeds num_tokens");
  for (int s = 0; s < a.num_seqs; ++s) {
    const int q_len = a.query_start_loc[s + 1] - a.query_start_loc[s];
    if (q_len < 0) fail("query_start_loc: must be non-decreasing");
    const int ctx = a.seq_lens[s];
    if (q_len > 0 && ctx < q_len) {
      fail("seq_lens: sequence " + std::to_string(s) + " has " + std::to_string(ctx) +
           " tokens but " + std::to_string(q_len) + " queries");
    }
    const int64_t blocks = (static_cast<int64_t>(ctx) + a.block_size - 1) / a.block_size;
    if (q_len > 0 && blocks > a.max_blocks_per_seq) {
      fail("block_table: sequence " + std::to_string(s) + " needs " + std::to_string(blocks) + " blocks, the table has " +
           std::to_string(a.max_blocks_per_seq));
    }
    if (q_len == 0) continue;
    const int32_t* row = a.block_table + static_cast<int64_t>(s) * a.max_blocks_per_seq;
    for (int64_t b = 0; b < blocks; ++b) {
      if (row[b] < 0 || row[b] >= a.num_blocks) {
        fail("block_table: block id " + std::to_string(row[b]) + " out of range");
      }
    }
  }
}

inline int64_t paged_attention_workspace_bytes(
    const TensorTuple& out_t, const TensorTuple& query_t, const TensorTuple& cache_t,
    const TensorTuple& table_t, const TensorTuple& qsl_t, const TensorTuple& lens_t, double scale,
    int max_query_len, int max_seq_len, int sliding_window) {
  int dev = -1;
  const kernels::PagedAttentionArgs a = attention_args(out_t, query_t, cache_t, table_t, qsl_t, lens_t, scale,
                                                       max_query_len, max_seq_len, sliding_window, &dev);
  if (dev < 0) return 0;
#ifdef PAGEDLLM_WITH_CUDA
  return kernels::paged_attention_workspace_bytes(a);
#else
  no_cuda("paged_attention_workspace_bytes");
#endif
}

inline void paged_attention(const TensorTuple& out_t, const TensorTuple& query_t, const TensorTuple& cache_t,
                            const TensorTuple& table_t, const TensorTuple& qsl_t, const TensorTuple& lens_t,
                            double scale, int max_query_len, int max_seq_len, int sliding_window,
                            uintptr_t workspace, int64_t workspace_bytes, uintptr_t stream,
                            const std::optional<TensorTuple>& order_t, int64_t short_chunk_tokens) {
  int dev = -1;
  kernels::PagedAttentionArgs a = attention_args(out_t, query_t, cache_t, table_t, qsl_t, lens_t, scale,
                                                 max_query_len, max_seq_len, sliding_window, &dev);
  a.workspace = reinterpret_cast<void*>(workspace);
  a.stream = as_stream(stream);
  if (order_t) {
    const TensorRef order = to_ref("token_order", *order_t);
    if (order.device != dev) fail("token_order: must be on the device of query");
    check_rank(order, 1);
    check_dtype(order, DType::kInt32);
    check_contiguous(order);
    check_dim(order, 0, a.num_tokens, "num_tokens");
    a.token_order = static_cast<const int32_t*>(as_ptr(order));
  }
  if (short_chunk_tokens < -1 || short_chunk_tokens > a.num_tokens) {
    fail("short_chunk_tokens: must be -1 (unknown) or in [0, num_tokens = " + std::to_string(a.num_tokens) +
         "], got " + std::to_string(short_chunk_tokens));
  }
  a.short_chunk_tokens = short_chunk_tokens;
  if (dev < 0) {
    check_attention_metadata_cpu(a);
    check_token_order_cpu(a);
    check_short_chunk_tokens_cpu(a);
    kernels::paged_attention_cpu(a);
    return;
  }
#ifdef PAGEDLLM_WITH_CUDA
  if (!kernels::paged_attention_cuda_supports_head_dim(a.head_dim)) {
    fail("kv_cache: head_dim " + std::to_string(a.head_dim) + " has no CUDA kernel (64, 80, 96, 128, 256)");
  }
  if (max_query_len <= 0 || max_seq_len <= 0) {
    fail("max_query_len and max_seq_len must be positive upper bounds on the CUDA path");
  }
  // The CUDA kernels move query, K/V and output rows in 16-byte words.
  const int64_t elem = kernels::dtype_size(a.dtype);
  const std::pair<const char*, const void*> rows[] = {{"query", a.query}, {"kv_cache", a.kv_cache}, {"out", a.out}};
  for (const auto& [name, ptr] : rows) {
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) fail(std::string(name) + ": data must be 16-byte aligned on CUDA");
  }
  if (a.q_stride * elem % 16 != 0) fail("query: token stride must be a multiple of 16 bytes on CUDA");
  const int64_t need = kernels::paged_attention_workspace_bytes(a);
  if (workspace_bytes < need || (need > 0 && workspace == 0)) {
    fail("workspace: " + std::to_string(need) + " bytes needed, " + std::to_string(workspace_bytes) + " given");
  }
  if (workspace % 16 != 0) fail("workspace: must be 16-byte aligned");
  kernels::paged_attention_cuda(a);
#else
  (void)workspace_bytes;
  no_cuda("paged_attention");
#endif
}

inline void check_norm_weight(const TensorRef& w, const TensorRef& x) {
  check_rank(w, 1);
  check_dtype(w, x.dtype);
  check_contiguous(w);
  check_dim(w, 0, x.dim(1), "hidden");
}

inline void rms_norm(const TensorTuple& out_t, const TensorTuple& x_t, const TensorTuple& w_t, double eps,
                     uintptr_t stream) {
  const TensorRef out = to_ref("out", out_t), x = to_ref("x", x_t), w = to_ref("weight", w_t);
  const int dev = common_device({&out, &x, &w});
  check_rank(x, 2);
  check_rank(out, 2);
  check_float(x);
  check_dtype(out, x.dtype);
  check_contiguous_from(x, 1);
  check_contiguous_from(out, 1);
  check_dim(out, 0, x.dim(0), "num_rows");
  check_dim(out, 1, x.dim(1), "hidden");
  check_norm_weight(w, x);
  kernels::RmsNormArgs a{};
  a.out = as_ptr(out);
  a.x = as_ptr(x);
  a.weight = as_ptr(w);
  a.num_rows = x.dim(0);
  a.x_stride = x.stride(0);
  a.out_stride = out.stride(0);
  a.hidden = static_cast<int>(x.dim(1));
  a.eps = static_cast<float>(eps);
  a.dtype = x.dtype;
  a.stream = as_stream(stream);
  if (dev < 0) return kernels::rms_norm_cpu(a);
#ifdef PAGEDLLM_WITH_CUDA
  kernels::rms_norm_cuda(a);
#else
  no_cuda("rms_norm");
#endif
}

inline void fused_add_rms_norm(const TensorTuple& x_t, const TensorTuple& res_t, const TensorTuple& w_t,
                               double eps, uintptr_t stream,
                               const std::optional<TensorTuple>& partials_t) {
  const TensorRef x = to_ref("x", x_t), res = to_ref("residual", res_t), w = to_ref("weight", w_t);
  const int dev = common_device({&x, &res, &w});
  check_rank(x, 2);
  check_rank(res, 2);
  check_float(x);
  check_dtype(res, x.dtype);
  check_contiguous_from(x, 1);
  check_contiguous_from(res, 1);
  check_dim(res, 0, x.dim(0), "num_rows");
  check_dim(res, 1, x.dim(1), "hidden");
  check_norm_weight(w, x);
  kernels::FusedAddRmsNormArgs a{};
  a.x = as_ptr(x);
  a.residual = as_ptr(res);
  a.weight = as_ptr(w);
  a.num_rows = x.dim(0);
  a.x_stride = x.stride(0);
  a.residual_stride = res.stride(0);
  a.hidden = static_cast<int>(x.dim(1));
  a.eps = static_cast<float>(eps);
  a.dtype = x.dtype;
  a.stream = as_stream(stream);
  if (partials_t) {  // [S, num_rows, hidden] float32: x becomes an output only
    const TensorRef p = to_ref("partials", *partials_t);
    if (p.device != dev) fail("partials: all tensors must be on the same device");
    check_rank(p, 3);
    if (p.dtype != DType::kFloat32) fail("partials: expected float32");
    check_contiguous(p);
    if (p.dim(0) < 1) fail("partials: need at least one partial product");
    check_dim(p, 1, x.dim(0), "num_rows");
    check_dim(p, 2, x.dim(1), "hidden");
    a.partials = static_cast<const float*>(as_ptr(p));
    a.num_partials = static_cast<int>(p.dim(0));
  }
  if (dev < 0) return kernels::fused_add_rms_norm_cpu(a);
#ifdef PAGEDLLM_WITH_CUDA
  kernels::fused_add_rms_norm_cuda(a);
#else
  no_cuda("fused_add_rms_norm");
#endif
}

// [T, H * head_size] rows (dense) seen as [T, H, head_size].
inline TensorRef as_heads(const TensorRef& rows, int64_t head_size) {
  TensorRef heads = rows;
  heads.shape = {rows.dim(0), rows.dim(1) / head_size, head_size};
  heads.strides = {rows.stride(0), head_size, 1};
  return heads;
}

inline void rotary_embedding(const TensorTuple& pos_t, const TensorTuple& q_t, const TensorTuple& k_t,
                             int head_size, const TensorTuple& cache_t, bool is_neox, uintptr_t stream,
                             const std::optional<TensorTuple>& q_norm_t,
                             const std::optional<TensorTuple>& k_norm_t, double norm_eps,
                             const std::optional<TensorTuple>& value_t,
                             const std::optional<TensorTuple>& kv_cache_t,
                             const std::optional<TensorTuple>& slots_t) {
  const TensorRef pos = to_ref("positions", pos_t), q = to_ref("query", q_t), k = to_ref("key", k_t);
  const TensorRef cache = to_ref("cos_sin_cache", cache_t);
  const int dev = common_device({&pos, &q, &k, &cache});
  check_rank(pos, 1);
  check_rank(q, 2);
  check_rank(k, 2);
  check_rank(cache, 2);
  if (pos.dtype != DType::kInt32 && pos.dtype != DType::kInt64) fail("positions: expected int32 or int64");
  check_contiguous(pos);
  check_float(q);
  check_dtype(k, q.dtype);
  if (cache.dtype != DType::kFloat32 && cache.dtype != q.dtype) {
    fail("cos_sin_cache: expected float32 or the query's dtype");
  }
  check_contiguous(cache);
  check_contiguous_from(q, 1);
  check_contiguous_from(k, 1);
  if (head_size <= 0 || q.dim(1) % head_size != 0 || k.dim(1) % head_size != 0) {
    fail("head_size: must divide the query and key widths");
  }
  check_dim(q, 0, pos.dim(0), "num_tokens");
  check_dim(k, 0, pos.dim(0), "num_tokens");
  const int64_t rot_dim = cache.dim(1);
  if (rot_dim <= 0 || rot_dim % 2 != 0 || rot_dim > head_size) {
    fail("cos_sin_cache: rot_dim (" + std::to_string(rot_dim) + ") must be even and at most head_size");
  }
  kernels::RotaryEmbeddingArgs a{};
  a.positions = as_ptr(pos);
  a.query = as_ptr(q);
  a.key = as_ptr(k);
  a.cos_sin_cache = as_ptr(cache);
  a.num_tokens = pos.dim(0);
  a.query_stride = q.stride(0);
  a.key_stride = k.stride(0);
  a.max_position = cache.dim(0);
  a.num_q_heads = static_cast<int>(q.dim(1) / head_size);
  a.num_kv_heads = static_cast<int>(k.dim(1) / head_size);
  a.head_size = head_size;
  a.rot_dim = static_cast<int>(rot_dim);
  a.is_neox = is_neox;
  a.dtype = q.dtype;
  a.cache_dtype = cache.dtype;
  a.positions_dtype = pos.dtype;
  a.stream = as_stream(stream);
  if (q_norm_t.has_value() != k_norm_t.has_value()) {
    fail("q_norm_weight and k_norm_weight: give both or neither");
  }
  if (q_norm_t) {
    for (const auto& [name, t] : {std::pair<const char*, const TensorTuple*>{"q_norm_weight", &*q_norm_t},
                                  {"k_norm_weight", &*k_norm_t}}) {
      const TensorRef w = to_ref(name, *t);
      if (w.device != dev) fail(w.name + ": all tensors must be on the same device");
      check_rank(w, 1);
      check_dtype(w, q.dtype);
      check_contiguous(w);
      check_dim(w, 0, head_size, "head_size");
    }
    if (!(norm_eps >= 0.0)) fail("norm_eps: must be >= 0");
    if (head_size > kernels::kMaxNormRotaryHeadSize) {
      fail("head_size: with q_norm_weight / k_norm_weight at most " +
           std::to_string(kernels::kMaxNormRotaryHeadSize) + ", got " + std::to_string(head_size));
    }
    a.q_norm_weight = reinterpret_cast<const void*>(std::get<0>(*q_norm_t));
    a.k_norm_weight = reinterpret_cast<const void*>(std::get<0>(*k_norm_t));
    a.norm_eps = static_cast<float>(norm_eps);
  }
  if (value_t.has_value() != kv_cache_t.has_value() || slots_t.has_value() != kv_cache_t.has_value()) {
    fail("value, kv_cache and slot_mapping: give all three or none");
  }
  if (kv_cache_t) {
    const TensorRef value = to_ref("value", *value_t), kv_cache = to_ref("kv_cache", *kv_cache_t);
    const TensorRef slots = to_ref("slot_mapping", *slots_t);
    common_device({&q, &value, &kv_cache, &slots});
    check_rank(value, 2);
    check_contiguous_from(value, 1);
    check_dim(value, 1, k.dim(1), "num_kv_heads * head_size");
    a.kv_write = cache_write_args(as_heads(k, head_size), as_heads(value, head_size), kv_cache, slots, stream);
    if (dev < 0) check_slots_in_cache(a.kv_write);
  }
  if (dev < 0) {
    for (int64_t t = 0; t < a.num_tokens; ++t) {
      const int64_t p = pos.dtype == DType::kInt64 ? static_cast<const int64_t*>(a.positions)[t]
                                                  : static_cast<const int32_t*>(a.positions)[t];
      if (p < 0 || p >= a.max_position) {
        fail("positions: " + std::to_string(p) + " outside cos_sin_cache [0, " + std::to_string(a.max_position) + ")");
      }
    }
    return kernels::rotary_embedding_cpu(a);
  }
#ifdef PAGEDLLM_WITH_CUDA
  kernels::rotary_embedding_cuda(a);
#else
  no_cuda("rotary_embedding");
#endif
}

inline void exponential_race_sample(const TensorTuple& out_t, const TensorTuple& logits_t,
                                    const TensorTuple& inv_t_t, const TensorTuple& greedy_t, uint64_t seed,
                                    uint64_t step, uintptr_t stream) {
  const TensorRef out = to_ref("out", out_t), logits = to_ref("logits", logits_t);
  const TensorRef inv_t = to_ref("inv_temperature", inv_t_t), greedy = to_ref("greedy", greedy_t);
  const int dev = common_device({&out, &logits, &inv_t, &greedy});
  check_rank(logits, 2);
  check_float(logits);
  check_contiguous_from(logits, 1);
  if (logits.dim(1) <= 0) fail("logits: the vocabulary must not be empty");
  if (logits.dim(1) > kernels::kMaxRaceVocab) {
    fail("logits: a vocabulary of " + std::to_string(logits.dim(1)) + " is larger than the sampler takes (" +
         std::to_string(kernels::kMaxRaceVocab) + ")");
  }
  for (const TensorRef* t : {&out, &inv_t, &greedy}) {
    check_rank(*t, 1);
    check_contiguous(*t);
    check_dim(*t, 0, logits.dim(0), "num_rows");
  }
  check_dtype(out, DType::kInt64);
  check_dtype(inv_t, DType::kFloat32);
  check_dtype(greedy, DType::kInt32);
  kernels::ExponentialRaceArgs a{};
  a.out = static_cast<int64_t*>(as_ptr(out));
  a.logits = as_ptr(logits);
  a.inv_temperature = static_cast<const float*>(as_ptr(inv_t));
  a.greedy = static_cast<const int32_t*>(as_ptr(greedy));
  a.num_rows = logits.dim(0);
  a.logits_stride = logits.stride(0);
  a.vocab = logits.dim(1);
  a.seed = seed;
  a.step = step;
  a.dtype = logits.dtype;
  a.stream = as_stream(stream);
  if (dev < 0) return kernels::exponential_race_sample_cpu(a);
#ifdef PAGEDLLM_WITH_CUDA
  kernels::exponential_race_sample_cuda(a);
#else
  no_cuda("exponential_race_sample");
#endif
}

inline void silu_and_mul(const TensorTuple& out_t, const TensorTuple& x_t, uintptr_t stream) {
  const TensorRef out = to_ref("out", out_t), x = to_ref("x", x_t);
  const int dev = common_device({&out, &x});
  check_rank(x, 2);
  check_rank(out, 2);
  check_float(x);
  check_dtype(out, x.dtype);
  check_contiguous(x);
  check_contiguous(out);
  if (x.dim(1) % 2 != 0) fail("x: last dimension must be even (gate | up)");
  check_dim(out, 0, x.dim(0), "num_rows");
  check_dim(out, 1, x.dim(1) / 2, "d");
  kernels::SiluAndMulArgs a{};
  a.out = as_ptr(out);
  a.x = as_ptr(x);
  a.num_rows = x.dim(0);
  a.d = x.dim(1) / 2;
  a.dtype = x.dtype;
  a.stream = as_stream(stream);
  if (dev < 0) return kernels::silu_and_mul_cpu(a);
#ifdef PAGEDLLM_WITH_CUDA
  kernels::silu_and_mul_cuda(a);
#else
  no_cuda("silu_and_mul");
#endif
}

}  // namespace pagedllm::bindings
