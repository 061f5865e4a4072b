// pagedllm._C.core: the step API (contract: python/pagedllm/_C/core.pyi). Declarations only;
// argument conversion lives in the small helpers at the top, the logic in csrc/core/.
#include <pybind11/native_enum.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/core_wrappers.h"
#include "core/core_error.h"

namespace py = pybind11;
namespace core = pagedllm::core;
using pagedllm::bindings::PyBatchPlan;
using pagedllm::bindings::PyScheduler;
using pagedllm::bindings::PyStepOutput;
using pagedllm::bindings::PyStepOutputs;

namespace {

// Every Scheduler call holds the wrapper's mutex (see core_wrappers.h).
#define LOCKED(s) std::lock_guard<std::mutex> lock_((s).mu)

// A 1-D sequence of integers as a contiguous int32 array (numpy arrays, lists, tuples, CPU
// tensors); no copy when it already is one. TypeError for non-integer data, ValueError for the
// wrong rank or ids outside int32.
py::array_t<int32_t> as_int32_vector(const py::handle& obj, const char* field) {
  py::array arr;
  try {
    arr = py::array::ensure(obj);
  } catch (const py::error_already_set&) {
    arr = py::array();
  }
  if (!arr) throw py::type_error(std::string(field) + ": expected a sequence of integers");
  const char kind = arr.dtype().kind();
  if (arr.size() > 0 && kind != 'i' && kind != 'u') {
    throw py::type_error(std::string(field) + ": expected integer token ids, got dtype " +
                         py::str(arr.dtype()).cast<std::string>());
  }
  if (arr.ndim() != 1) throw py::value_error(std::string(field) + ": expected a 1-D sequence");
  if (arr.size() == 0 || (kind == 'i' && arr.dtype().itemsize() <= 4) || (kind == 'u' && arr.dtype().itemsize() < 4)) {
    return py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(arr);
  }
  // Wider types: check the range before narrowing, so no id silently wraps.
  if (kind == 'u' && arr.dtype().itemsize() == 8) {
    auto wide = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    for (py::ssize_t i = 0; i < wide.size(); ++i) {
      if (wide.data()[i] > static_cast<uint64_t>(INT32_MAX)) {
        throw py::value_error(std::string(field) + ": token ids must fit in int32");
      }
    }
  } else {
    auto wide = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(arr);
    for (py::ssize_t i = 0; i < wide.size(); ++i) {
      if (wide.data()[i] > INT32_MAX || wide.data()[i] < INT32_MIN) {
        throw py::value_error(std::string(field) + ": token ids must fit in int32");
      }
    }
  }
  return py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(arr);
}

PyBatchPlan schedule(PyScheduler& self) {
  PyBatchPlan out;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(self.mu);
    out.plan = self.scheduler.schedule();
  }
  return out;
}

// None when the scheduler cannot plan ahead (it would have to preempt).
py::object schedule_ahead(PyScheduler& self) {
  std::shared_ptr<const core::BatchPlan> plan;
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(self.mu);
    plan = self.scheduler.schedule_ahead();
  }
  if (!plan) return py::none();
  PyBatchPlan out;
  out.plan = std::move(plan);
  return py::cast(std::move(out));
}

PyStepOutputs update(PyScheduler& self, const PyBatchPlan& plan, const py::handle& sampled_obj) {
  py::array_t<int32_t> sampled = as_int32_vector(sampled_obj, "sampled_token_ids");
  auto outputs = std::make_shared<core::StepOutputs>();
  {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(self.mu);
    self.scheduler.update(*plan.plan, sampled.data(), static_cast<size_t>(sampled.size()), *outputs);
  }
  PyStepOutputs out;
  out.outputs = std::move(outputs);
  return out;
}

void add_request(PyScheduler& self, int64_t handle, const py::handle& prompt, const core::RequestParams& params) {
  py::array_t<int32_t> ids = as_int32_vector(prompt, "prompt_token_ids");
  std::vector<int32_t> tokens(ids.data(), ids.data() + ids.size());
  std::lock_guard<std::mutex> lock(self.mu);
  self.scheduler.add_request(handle, std::move(tokens), params);
}

PyStepOutput step_output_at(const PyStepOutputs& self, py::ssize_t i) {
  const core::StepOutputs& o = *self.outputs;
  const auto n = static_cast<py::ssize_t>(o.size());
  if (i < 0) i += n;
  if (i < 0 || i >= n) throw py::index_error("StepOutputs index out of range");
  const auto k = static_cast<size_t>(i);
  PyStepOutput one;
  one.handle = o.handles[k];
  if (o.new_token_ids[k] >= 0) one.new_token_ids.push_back(o.new_token_ids[k]);
  one.finish_reason = static_cast<core::FinishReason>(o.finish_reasons[k]);
  one.stop_token_id = o.stop_token_ids[k];
  one.num_cached_tokens = o.num_cached_tokens[k];
  return one;
}

}  // namespace

void init_core_bindings(py::module_& m) {
  py::register_exception<core::CoreError>(m, "CoreError", PyExc_RuntimeError);

  py::native_enum<core::SchedulingPolicy>(m, "SchedulingPolicy", "enum.IntEnum")
      .value("FCFS", core::SchedulingPolicy::kFcfs)
      .value("PRIORITY", core::SchedulingPolicy::kPriority)
      .finalize();

  py::native_enum<core::FinishReason>(m, "FinishReason", "enum.IntEnum")
      .value("NONE", core::FinishReason::kNone)
      .value("STOP", core::FinishReason::kStop)
      .value("LENGTH", core::FinishReason::kLength)
      .value("ABORT", core::FinishReason::kAbort)
      .finalize();

  py::class_<core::SchedulerConfig>(m, "SchedulerConfig")
      .def(py::init([](int32_t num_blocks, int32_t block_size, int32_t max_num_seqs, int32_t max_num_batched_tokens,
                       int32_t max_model_len, bool enable_prefix_caching, bool enable_chunked_prefill,
                       core::SchedulingPolicy policy, int32_t admission_reserve_blocks_per_running) {
             core::SchedulerConfig c;
             c.num_blocks = num_blocks;
             c.block_size = block_size;
             c.max_num_seqs = max_num_seqs;
             c.max_num_batched_tokens = max_num_batched_tokens;
             c.max_model_len = max_model_len;
             c.enable_prefix_caching = enable_prefix_caching;
             c.enable_chunked_prefill = enable_chunked_prefill;
             c.policy = policy;
             c.admission_reserve_blocks_per_running = admission_reserve_blocks_per_running;
             c.validate();
             return c;
           }),
           py::kw_only(), py::arg("num_blocks"), py::arg("block_size") = 16, py::arg("max_num_seqs") = 256,
           py::arg("max_num_batched_tokens") = 8192, py::arg("max_model_len") = 2048,
           py::arg("enable_prefix_caching") = true, py::arg("enable_chunked_prefill") = true,
           py::arg("policy") = core::SchedulingPolicy::kFcfs,
           py::arg("admission_reserve_blocks_per_running") = 0)
      .def_readonly("num_blocks", &core::SchedulerConfig::num_blocks)
      .def_readonly("block_size", &core::SchedulerConfig::block_size)
      .def_readonly("max_num_seqs", &core::SchedulerConfig::max_num_seqs)
      .def_readonly("max_num_batched_tokens", &core::SchedulerConfig::max_num_batched_tokens)
      .def_readonly("max_model_len", &core::SchedulerConfig::max_model_len)
      .def_readonly("enable_prefix_caching", &core::SchedulerConfig::enable_prefix_caching)
      .def_readonly("enable_chunked_prefill", &core::SchedulerConfig::enable_chunked_prefill)
      .def_readonly("policy", &core::SchedulerConfig::policy)
      .def_readonly("admission_reserve_blocks_per_running",
                    &core::SchedulerConfig::admission_reserve_blocks_per_running)
      .def_property_readonly("max_blocks_per_seq", &core::SchedulerConfig::max_blocks_per_seq);

  py::class_<core::RequestParams>(m, "RequestParams")
      .def(py::init([](int32_t max_tokens, int32_t min_tokens, bool ignore_eos, int32_t eos_token_id,
                       std::vector<int32_t> stop_token_ids, int32_t priority, double arrival_time,
                       std::string cache_salt, bool skip_prefix_cache) {
             core::RequestParams p;
             p.max_tokens = max_tokens;
             p.min_tokens = min_tokens;
             p.ignore_eos = ignore_eos;
             p.eos_token_id = eos_token_id;
             p.stop_token_ids = std::move(stop_token_ids);
             p.priority = priority;
             p.arrival_time = arrival_time;
             p.cache_salt = std::move(cache_salt);
             p.skip_prefix_cache = skip_prefix_cache;
             p.validate();
             return p;
           }),
           py::kw_only(), py::arg("max_tokens"), py::arg("min_tokens") = 0, py::arg("ignore_eos") = false,
           py::arg("eos_token_id") = -1, py::arg("stop_token_ids") = std::vector<int32_t>{}, py::arg("priority") = 0,
           py::arg("arrival_time") = 0.0, py::arg("cache_salt") = "", py::arg("skip_prefix_cache") = false)
      .def_readonly("max_tokens", &core::RequestParams::max_tokens)
      .def_readonly("min_tokens", &core::RequestParams::min_tokens)
      .def_readonly("ignore_eos", &core::RequestParams::ignore_eos)
      .def_readonly("eos_token_id", &core::RequestParams::eos_token_id)
      .def_readonly("stop_token_ids", &core::RequestParams::stop_token_ids)
      .def_readonly("priority", &core::RequestParams::priority)
      .def_readonly("arrival_time", &core::RequestParams::arrival_time)
      .def_readonly("cache_salt", &core::RequestParams::cache_salt)
      .def_readonly("skip_prefix_cache", &core::RequestParams::skip_prefix_cache);

  py::class_<PyBatchPlan>(m, "BatchPlan")
      .def_property_readonly("num_seqs", [](const PyBatchPlan& p) { return p.plan->num_seqs; })
      .def_property_readonly("num_tokens", [](const PyBatchPlan& p) { return p.plan->num_tokens; })
      .def_property_readonly("num_sampled", [](const PyBatchPlan& p) { return p.plan->num_sampled; })
      .def_property_readonly("max_query_len", [](const PyBatchPlan& p) { return p.plan->max_query_len; })
      .def_property_readonly("max_seq_len", [](const PyBatchPlan& p) { return p.plan->max_seq_len; })
      .def_property_readonly("input_ids", [](PyBatchPlan& p) { return p.view(PyBatchPlan::kInputIds); })
      .def_property_readonly("positions", [](PyBatchPlan& p) { return p.view(PyBatchPlan::kPositions); })
      .def_property_readonly("slot_mapping", [](PyBatchPlan& p) { return p.view(PyBatchPlan::kSlotMapping); })
      .def_property_readonly("query_start_loc", [](PyBatchPlan& p) { return p.view(PyBatchPlan::kQueryStartLoc); })
      .def_property_readonly("seq_lens", [](PyBatchPlan& p) { return p.view(PyBatchPlan::kSeqLens); })
      .def_property_readonly("num_computed", [](PyBatchPlan& p) { return p.view(PyBatchPlan::kNumComputed); })
      .def_property_readonly("block_table", [](PyBatchPlan& p) { return p.view(PyBatchPlan::kBlockTable); })
      .def_property_readonly("logits_indices", [](PyBatchPlan& p) { return p.view(PyBatchPlan::kLogitsIndices); })
      .def_property_readonly("sampled_seq_indices",
                             [](PyBatchPlan& p) { return p.view(PyBatchPlan::kSampledSeqIndices); })
      .def_property_readonly("handles", [](PyBatchPlan& p) { return p.view(PyBatchPlan::kHandles); })
      .def_property_readonly("num_preempted", [](const PyBatchPlan& p) { return p.plan->num_preempted; })
      .def_property_readonly("preempted_handles",
                             [](PyBatchPlan& p) { return p.view(PyBatchPlan::kPreemptedHandles); })
      .def_property_readonly("num_deferred", [](const PyBatchPlan& p) { return p.plan->num_deferred; })
      .def_property_readonly("deferred_rows", [](PyBatchPlan& p) { return p.view(PyBatchPlan::kDeferredRows); })
      .def_property_readonly("deferred_sources",
                             [](PyBatchPlan& p) { return p.view(PyBatchPlan::kDeferredSources); })
      .def("__repr__", [](const PyBatchPlan& p) {
        return "BatchPlan(num_seqs=" + std::to_string(p.plan->num_seqs) + ", num_tokens=" +
               std::to_string(p.plan->num_tokens) + ", num_sampled=" + std::to_string(p.plan->num_sampled) + ")";
      });

  py::class_<PyStepOutput>(m, "StepOutput")
      .def_readonly("handle", &PyStepOutput::handle)
      .def_readonly("new_token_ids", &PyStepOutput::new_token_ids)
      .def_readonly("finish_reason", &PyStepOutput::finish_reason)
      .def_readonly("stop_token_id", &PyStepOutput::stop_token_id)
      .def_readonly("num_cached_tokens", &PyStepOutput::num_cached_tokens)
      .def_property_readonly("finished", [](const PyStepOutput& o) { return o.finish_reason != core::FinishReason::kNone; })
      .def("__repr__", [](const PyStepOutput& o) {
        std::string toks;
        for (int32_t t : o.new_token_ids) toks += (toks.empty() ? "" : ", ") + std::to_string(t);
        return "StepOutput(handle=" + std::to_string(o.handle) + ", new_token_ids=[" + toks +
               "], finish_reason=" + std::to_string(static_cast<int>(o.finish_reason)) +
               ", stop_token_id=" + std::to_string(o.stop_token_id) + ")";
      });

  py::class_<PyStepOutputs>(m, "StepOutputs")
      .def("__len__", [](const PyStepOutputs& o) { return o.outputs->size(); })
      .def("__getitem__", &step_output_at, py::arg("index"))
      .def_property_readonly("handles", [](PyStepOutputs& o) { return o.view(PyStepOutputs::kHandles); })
      .def_property_readonly("new_token_ids", [](PyStepOutputs& o) { return o.view(PyStepOutputs::kNewTokenIds); })
      .def_property_readonly("finish_reasons", [](PyStepOutputs& o) { return o.view(PyStepOutputs::kFinishReasons); })
      .def_property_readonly("stop_token_ids", [](PyStepOutputs& o) { return o.view(PyStepOutputs::kStopTokenIds); })
      .def_property_readonly("num_cached_tokens",
                             [](PyStepOutputs& o) { return o.view(PyStepOutputs::kNumCachedTokens); });

  py::class_<core::SchedulerStats>(m, "SchedulerStats")
      .def_readonly("num_running", &core::SchedulerStats::num_running)
      .def_readonly("num_waiting", &core::SchedulerStats::num_waiting)
      .def_readonly("num_blocks_total", &core::SchedulerStats::num_blocks_total)
      .def_readonly("num_blocks_used", &core::SchedulerStats::num_blocks_used)
      .def_readonly("num_blocks_free", &core::SchedulerStats::num_blocks_free)
      .def_readonly("prefix_cache_queries", &core::SchedulerStats::prefix_cache_queries)
      .def_readonly("prefix_cache_hits", &core::SchedulerStats::prefix_cache_hits)
      .def_readonly("num_preemptions", &core::SchedulerStats::num_preemptions)
      .def_property_readonly("kv_cache_usage", [](const core::SchedulerStats& s) {
        return s.num_blocks_total > 0 ? static_cast<double>(s.num_blocks_used) / s.num_blocks_total : 0.0;
      });

  py::class_<PyScheduler>(m, "Scheduler")
      .def(py::init<const core::SchedulerConfig&>(), py::arg("config"))
      .def_property_readonly("config", [](PyScheduler& s) { return s.scheduler.config(); })
      .def("add_request", &add_request, py::arg("handle"), py::arg("prompt_token_ids"), py::arg("params"))
      .def("abort_request", [](PyScheduler& s, int64_t h) { LOCKED(s); return s.scheduler.abort_request(h); },
           py::arg("handle"))
      .def("schedule", &schedule)
      .def("schedule_ahead", &schedule_ahead)
      .def("update", &update, py::arg("plan"), py::arg("sampled_token_ids"))
      .def("has_unfinished_requests", [](PyScheduler& s) { LOCKED(s); return s.scheduler.has_unfinished_requests(); })
      .def("num_unfinished_requests", [](PyScheduler& s) { LOCKED(s); return s.scheduler.num_unfinished_requests(); })
      .def("stats", [](PyScheduler& s) { LOCKED(s); return s.scheduler.stats(); })
      .def("check_invariants", [](PyScheduler& s) { LOCKED(s); s.scheduler.check_invariants(); })
      .def("reset_prefix_cache", [](PyScheduler& s) { LOCKED(s); return s.scheduler.reset_prefix_cache(); });
}
