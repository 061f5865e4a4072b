// Python-facing holders for the core's objects (used only by core_bindings.cc).
//
// Lifetime: a BatchPlan / StepOutputs seen from Python holds a shared_ptr to the C++ object.
// Its numpy views have as base a capsule that holds another copy of that shared_ptr, so a view
// keeps its buffer alive on its own, and views never point back at their Python owner (no
// reference cycle). The Scheduler only rewrites a plan buffer nobody else holds.
//
// Threads: every Scheduler call takes the wrapper's mutex; schedule/update release the GIL
// first, so other Python threads run meanwhile and a concurrent add/abort simply waits.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <array>
#include <memory>
#include <mutex>
#include <vector>

#include "core/batch_plan.h"
#include "core/scheduler.h"
#include "core/step_output.h"

namespace pagedllm::bindings {

namespace py = pybind11;

// A read-only 1-D or 2-D numpy view over `data`, kept alive by `base`.
template <typename T>
py::array readonly_view(const T* data, std::vector<py::ssize_t> shape, const py::object& base) {
  py::array a(py::dtype::of<T>(), std::move(shape), std::vector<py::ssize_t>{}, data, base);
  py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

// A capsule that owns one copy of a shared_ptr (the base object of views).
template <typename T>
py::object owner_capsule(const std::shared_ptr<T>& p) {
  auto* copy = new std::shared_ptr<T>(p);
  return py::capsule(copy, [](void* ptr) { delete static_cast<std::shared_ptr<T>*>(ptr); });
}

struct PyBatchPlan {
  enum Field { kInputIds, kPositions, kSlotMapping, kQueryStartLoc, kSeqLens, kNumComputed, kBlockTable,
               kLogitsIndices, kSampledSeqIndices, kHandles, kPreemptedHandles, kDeferredRows,
               kDeferredSources, kNumFields };

  std::shared_ptr<const core::BatchPlan> plan;
  py::object owner;                 // capsule, made on first view
  std::array<py::object, kNumFields> views;

  py::object view(Field f) {
    if (views[f]) return views[f];
    if (!owner) owner = owner_capsule(plan);
    const core::BatchPlan& p = *plan;
    const py::ssize_t S = p.num_seqs, T = p.num_tokens, N = p.num_sampled;
    switch (f) {
      case kInputIds: views[f] = readonly_view(p.input_ids.data(), {T}, owner); break;
      case kPositions: views[f] = readonly_view(p.positions.data(), {T}, owner); break;
      case kSlotMapping: views[f] = readonly_view(p.slot_mapping.data(), {T}, owner); break;
      case kQueryStartLoc: views[f] = readonly_view(p.query_start_loc.data(), {S + 1}, owner); break;
      case kSeqLens: views[f] = readonly_view(p.seq_lens.data(), {S}, owner); break;
      case kNumComputed: views[f] = readonly_view(p.num_computed.data(), {S}, owner); break;
      case kBlockTable:
        views[f] = readonly_view(p.block_table.data(), {S, static_cast<py::ssize_t>(p.max_blocks_per_seq)}, owner);
        break;
      case kLogitsIndices: views[f] = readonly_view(p.logits_indices.data(), {N}, owner); break;
      case kSampledSeqIndices: views[f] = readonly_view(p.sampled_seq_indices.data(), {N}, owner); break;
      case kHandles: views[f] = readonly_view(p.handles.data(), {S}, owner); break;
      case kPreemptedHandles:
        views[f] = readonly_view(p.preempted_handles.data(), {static_cast<py::ssize_t>(p.num_preempted)}, owner);
        break;
      case kDeferredRows:
        views[f] = readonly_view(p.deferred_rows.data(), {static_cast<py::ssize_t>(p.num_deferred)}, owner);
        break;
      case kDeferredSources:
        views[f] = readonly_view(p.deferred_sources.data(), {static_cast<py::ssize_t>(p.num_deferred)}, owner);
        break;
      default: break;
    }
    return views[f];
  }
};

struct PyStepOutputs {
  enum Field { kHandles, kNewTokenIds, kFinishReasons, kStopTokenIds, kNumCachedTokens, kNumFields };

  std::shared_ptr<const core::StepOutputs> outputs;
  py::object owner;
  std::array<py::object, kNumFields> views;

  py::object view(Field f) {
    if (views[f]) return views[f];
    if (!owner) owner = owner_capsule(outputs);
    const core::StepOutputs& o = *outputs;
    const py::ssize_t n = static_cast<py::ssize_t>(o.size());
    switch (f) {
      case kHandles: views[f] = readonly_view(o.handles.data(), {n}, owner); break;
      case kNewTokenIds: views[f] = readonly_view(o.new_token_ids.data(), {n}, owner); break;
      case kFinishReasons: views[f] = readonly_view(o.finish_reasons.data(), {n}, owner); break;
      case kStopTokenIds: views[f] = readonly_view(o.stop_token_ids.data(), {n}, owner); break;
      case kNumCachedTokens: views[f] = readonly_view(o.num_cached_tokens.data(), {n}, owner); break;
      default: break;
    }
    return views[f];
  }
};

// One entry of StepOutputs as a small Python object.
struct PyStepOutput {
  int64_t handle = 0;
  std::vector<int32_t> new_token_ids;
  core::FinishReason finish_reason = core::FinishReason::kNone;
  int32_t stop_token_id = -1;
  int32_t num_cached_tokens = 0;
};

struct PyScheduler {
  explicit PyScheduler(const core::SchedulerConfig& config) : scheduler(config) {}
  core::Scheduler scheduler;
  std::mutex mu;
};

}  // namespace pagedllm::bindings
