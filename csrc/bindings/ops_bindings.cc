// _C.ops: one .def per kernel. Tensors arrive as descriptors (data_ptr, shape, strides,
// dtype_code, device_index); ops_checks.h validates them (ValueError) and runs the kernel.
// `stream` is the integer value of a cudaStream_t (torch.cuda.current_stream().cuda_stream).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/ops_checks.h"

namespace py = pybind11;
namespace b = pagedllm::bindings;

void init_ops_bindings(py::module_& m) {
  m.def("reshape_and_cache", &b::reshape_and_cache, py::arg("key"), py::arg("value"), py::arg("kv_cache"),
        py::arg("slot_mapping"), py::arg("stream") = 0,
        "Write K/V of each token into the paged cache at its slot (slot < 0: skip).");
  m.def("paged_attention_workspace_bytes", &b::paged_attention_workspace_bytes, py::arg("out"), py::arg("query"),
        py::arg("kv_cache"), py::arg("block_table"), py::arg("query_start_loc"), py::arg("seq_lens"),
        py::arg("scale"), py::arg("max_query_len"), py::arg("max_seq_len"), py::arg("sliding_window") = -1,
        "Scratch bytes paged_attention needs for these arguments on CUDA (0 on the CPU).");
  m.def("paged_attention", &b::paged_attention, py::arg("out"), py::arg("query"), py::arg("kv_cache"),
        py::arg("block_table"), py::arg("query_start_loc"), py::arg("seq_lens"), py::arg("scale"),
        py::arg("max_query_len"), py::arg("max_seq_len"), py::arg("sliding_window") = -1,
        py::arg("workspace") = 0, py::arg("workspace_bytes") = 0, py::arg("stream") = 0,
        py::arg("token_order") = py::none(), py::arg("short_chunk_tokens") = -1,
        py::call_guard<py::gil_scoped_release>(),
        "Causal attention of each sequence's query chunk over its paged context, into out.");
  // Query chunks this long or longer go to the tensor-core kernel on CUDA (fp16/bf16).
  m.attr("PREFILL_KERNEL_MIN_QUERY_LEN") = pagedllm::kernels::kPrefillMmaMinQueryLen;
  m.attr("MAX_NORM_ROTARY_HEAD_SIZE") = pagedllm::kernels::kMaxNormRotaryHeadSize;
  m.def("rms_norm", &b::rms_norm, py::arg("out"), py::arg("x"), py::arg("weight"), py::arg("eps"),
        py::arg("stream") = 0, "out = x / sqrt(mean(x^2) + eps) * weight.");
  m.def("fused_add_rms_norm", &b::fused_add_rms_norm, py::arg("x"), py::arg("residual"), py::arg("weight"),
        py::arg("eps"), py::arg("stream") = 0, py::arg("partials") = py::none(),
        "In place: residual += x; x = rms_norm(residual) * weight. With partials (float32 [S, rows, "
        "hidden], a split-K GEMM's partial products) the added value is their sum rounded to x's "
        "dtype, and x is only written.");
  m.def("rotary_embedding", &b::rotary_embedding, py::arg("positions"), py::arg("query"), py::arg("key"),
        py::arg("head_size"), py::arg("cos_sin_cache"), py::arg("is_neox"), py::arg("stream") = 0,
        py::arg("q_norm_weight") = py::none(), py::arg("k_norm_weight") = py::none(),
        py::arg("norm_eps") = 1e-6, py::arg("value") = py::none(), py::arg("kv_cache") = py::none(),
        py::arg("slot_mapping") = py::none(),
        "Rotate query and key in place (NeoX or GPT-J pairing), each head RMS-normalized first "
        "when norm weights are given (Qwen3's q_norm / k_norm); with value, kv_cache and "
        "slot_mapping the rotated key and the value are also written into the paged cache "
        "(reshape_and_cache in the same pass).");
  m.def("exponential_race_sample", &b::exponential_race_sample, py::arg("out"), py::arg("logits"),
        py::arg("inv_temperature"), py::arg("greedy"), py::arg("seed"), py::arg("step"),
        py::arg("stream") = 0,
        "One token per row: argmax of logits (greedy rows) or of logits / T + Gumbel noise drawn "
        "by Philox from (seed, step, row, token).");
  m.def("silu_and_mul", &b::silu_and_mul, py::arg("out"), py::arg("x"), py::arg("stream") = 0,
        "out = silu(x[:, :d]) * x[:, d:].");
}
