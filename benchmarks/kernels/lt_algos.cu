// Decode-step GEMMs under every cuBLASLt algorithm its heuristic offers (and split-K variants of
// each): how far the default pick is from the best one for the skinny shapes of a decode step.
// torch's matmul takes cuBLAS's default; linear_shapes.py times that. A standalone program, so
// that a question about cuBLASLt is answered before any of it enters the engine.
//
// Also times cublasGemmEx (torch's call) and cuBLASLt's first pick with a 1 MiB workspace.
// Build and run on the GPU machine (headers and library from the nvidia-cublas wheel torch uses,
// CUBLAS=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")):
//   nvcc -O2 -std=c++17 -arch=sm_90 -I$CUBLAS/include benchmarks/kernels/lt_algos.cu \
//        -L$CUBLAS/lib -l:libcublasLt.so.13 -l:libcublas.so.13 -Xlinker -rpath=$CUBLAS/lib -o /tmp/lt_algos
//   /tmp/lt_algos 32 144 244                          # Qwen3-0.6B's linears
//   /tmp/lt_algos --8b --read-gbs 3020 128 192 256    # Qwen3-8B's, floor at an H100's read rate
// Layout: torch's x [M, K] @ w[N, K]^T = out [M, N], row-major, i.e. column-major
// out^T [N, M] = op_T(w as [K, N]) x (x^T as [K, M]). bf16 data, fp32 accumulation.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#define CHECK_CUDA(x)                                                          \
  do {                                                                         \
    cudaError_t e_ = (x);                                                      \
    if (e_ != cudaSuccess) {                                                   \
      std::printf("CUDA %s at line %d\n", cudaGetErrorString(e_), __LINE__); \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)
#define CHECK_LT(x)                                               \
  do {                                                            \
    cublasStatus_t st_ = (x);                                     \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                           \
      std::printf("cuBLASLt %d at line %d\n", int(st_), __LINE__); \
      std::exit(1);                                               \
    }                                                             \
  } while (0)

namespace {

struct Shape { const char* name; int n, k; };
// Qwen3-0.6B's layer linears (hidden 1024, 16 x 128 query heads, 8 key/value heads, MLP 3072).
const std::vector<Shape> kShapes06b = {{"qkv", 4096, 1024}, {"o", 1024, 2048}, {"gate_up", 6144, 1024},
                                       {"down", 1024, 3072}};
// Qwen3-8B's (hidden 4096, 32 x 128 query heads, 8 key/value heads, MLP 12288).
const std::vector<Shape> kShapes8b = {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 24576, 4096},
                                      {"down", 4096, 12288}};
constexpr size_t kWorkspace = 32u << 20;
constexpr size_t kCycleBytes = 160u << 20;  // more than the L2: weights come from HBM

__global__ void fill(__nv_bfloat16* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
    p[i] = __float2bfloat16((float(h & 0xFFFF) / 65536.0f - 0.5f) * 0.1f);
  }
}

struct Problem {
  cublasHandle_t blas;  // cublasGemmEx, the call torch's matmul makes for bf16
  cublasLtHandle_t lt;
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t a, b, c;
  std::vector<__nv_bfloat16*> weights;
  __nv_bfloat16 *x, *out;
  void* workspace;
  cudaStream_t stream;
};

bool run(const Problem& p, const cublasLtMatmulAlgo_t& algo, int copy) {
  const float one = 1.0f, zero = 0.0f;
  return cublasLtMatmul(p.lt, p.op, &one, p.weights[copy], p.a, p.x, p.b, &zero, p.out, p.c, p.out, p.c, &algo,
                        p.workspace, kWorkspace, p.stream) == CUBLAS_STATUS_SUCCESS;
}

// torch's path: cublasGemmEx, fp32 compute, default tensor-op algorithm, 32 MiB workspace.
bool run_gemm_ex(const Problem& p, int copy, int m, int n, int k) {
  const float one = 1.0f, zero = 0.0f;
  return cublasGemmEx(p.blas, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &one, p.weights[copy], CUDA_R_16BF, k, p.x,
                      CUDA_R_16BF, k, &zero, p.out, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F,
                      CUBLAS_GEMM_DEFAULT_TENSOR_OP) == CUBLAS_STATUS_SUCCESS;
}

// Median µs per call of a CUDA graph of `calls` back-to-back matmuls cycling the weight copies.
float time_calls(const Problem& p, const std::function<bool(int)>& call) {
  const int copies = int(p.weights.size()), calls = std::max(20, copies);
  cudaGraph_t graph;
  CHECK_CUDA(cudaStreamBeginCapture(p.stream, cudaStreamCaptureModeThreadLocal));
  bool ok = true;
  for (int i = 0; i < calls; ++i) ok = call(i % copies) && ok;
  CHECK_CUDA(cudaStreamEndCapture(p.stream, &graph));
  if (!ok) { cudaGraphDestroy(graph); return -1; }
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t t0, t1;
  cudaEventCreate(&t0); cudaEventCreate(&t1);
  CHECK_CUDA(cudaGraphLaunch(exec, p.stream));
  std::vector<float> times;
  for (int r = 0; r < 7; ++r) {
    cudaEventRecord(t0, p.stream);
    cudaGraphLaunch(exec, p.stream);
    cudaEventRecord(t1, p.stream);
    CHECK_CUDA(cudaEventSynchronize(t1));
    float ms; cudaEventElapsedTime(&ms, t0, t1);
    times.push_back(ms * 1e3f / calls);
  }
  cudaEventDestroy(t0); cudaEventDestroy(t1);
  cudaGraphExecDestroy(exec); cudaGraphDestroy(graph);
  std::sort(times.begin(), times.end());
  return times[3];
}

float time_algo(const Problem& p, const cublasLtMatmulAlgo_t& algo) {
  return time_calls(p, [&](int copy) { return run(p, algo, copy); });
}

int attr(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t which) {
  int v = 0; size_t got = 0;
  uint32_t u = 0;
  if (which == CUBLASLT_ALGO_CONFIG_TILE_ID || which == CUBLASLT_ALGO_CONFIG_STAGES_ID ||
      which == CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME || which == CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID) {
    cublasLtMatmulAlgoConfigGetAttribute(&algo, which, &u, sizeof(u), &got);
    return int(u);
  }
  cublasLtMatmulAlgoConfigGetAttribute(&algo, which, &v, sizeof(v), &got);
  return v;
}

// Largest |difference| between this algorithm's output and the reference, on weight copy 0.
float max_diff(const Problem& p, const cublasLtMatmulAlgo_t& algo, const std::vector<float>& ref, int m, int n) {
  if (!run(p, algo, 0)) return INFINITY;
  std::vector<__nv_bfloat16> host(size_t(m) * n);
  CHECK_CUDA(cudaMemcpyAsync(host.data(), p.out, host.size() * 2, cudaMemcpyDeviceToHost, p.stream));
  CHECK_CUDA(cudaStreamSynchronize(p.stream));
  float worst = 0;
  for (size_t i = 0; i < host.size(); ++i) worst = std::max(worst, std::fabs(__bfloat162float(host[i]) - ref[i]));
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> ms;
  const std::vector<Shape>* shapes = &kShapes06b;
  float read_gbs = 4100.0f;  // the floor's read rate: the H200's measured figure unless given
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--8b") {
      shapes = &kShapes8b;
    } else if (arg == "--read-gbs" && i + 1 < argc) {
      read_gbs = std::strtof(argv[++i], nullptr);
    } else if (std::atoi(argv[i]) > 0) {
      ms.push_back(std::atoi(argv[i]));
    } else {
      std::printf("usage: %s [--8b] [--read-gbs GB/s] M...\n", argv[0]);
      return 2;
    }
  }
  if (ms.empty()) ms = {32, 144, 244};
  Problem p{};
  CHECK_LT(cublasLtCreate(&p.lt));
  CHECK_CUDA(cudaStreamCreateWithFlags(&p.stream, cudaStreamNonBlocking));
  CHECK_CUDA(cudaMalloc(&p.workspace, kWorkspace));
  void* blas_workspace;
  CHECK_CUDA(cudaMalloc(&blas_workspace, kWorkspace));
  CHECK_LT(cublasCreate(&p.blas));
  CHECK_LT(cublasSetStream(p.blas, p.stream));
  CHECK_LT(cublasSetWorkspace(p.blas, blas_workspace, kWorkspace));
  for (const Shape& s : *shapes) {
    const size_t wbytes = size_t(s.n) * s.k * 2;
    const int copies = int(std::max<size_t>(1, (kCycleBytes + wbytes - 1) / wbytes));
    p.weights.assign(copies, nullptr);
    for (int i = 0; i < copies; ++i) {
      CHECK_CUDA(cudaMalloc(&p.weights[i], wbytes));
      fill<<<512, 256, 0, p.stream>>>(p.weights[i], size_t(s.n) * s.k, 17u + i);
    }
    for (int m : ms) {
      CHECK_CUDA(cudaMalloc(&p.x, size_t(m) * s.k * 2));
      CHECK_CUDA(cudaMalloc(&p.out, size_t(m) * s.n * 2));
      fill<<<512, 256, 0, p.stream>>>(p.x, size_t(m) * s.k, 99u);
      CHECK_LT(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      CHECK_LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
      CHECK_LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
      CHECK_LT(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, s.k, s.n, s.k));
      CHECK_LT(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, s.k, m, s.k));
      CHECK_LT(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_16BF, s.n, m, s.n));
      cublasLtMatmulPreference_t pref;
      CHECK_LT(cublasLtMatmulPreferenceCreate(&pref));
      const size_t ws = kWorkspace;
      CHECK_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
      cublasLtMatmulHeuristicResult_t found[64];
      int count = 0;
      CHECK_LT(cublasLtMatmulAlgoGetHeuristic(p.lt, p.op, p.a, p.b, p.c, p.c, pref, 64, found, &count));
      // Reference: the heuristic's first pick, read back as float.
      std::vector<float> ref(size_t(m) * s.n);
      {
        run(p, found[0].algo, 0);
        std::vector<__nv_bfloat16> host(ref.size());
        CHECK_CUDA(cudaMemcpyAsync(host.data(), p.out, host.size() * 2, cudaMemcpyDeviceToHost, p.stream));
        CHECK_CUDA(cudaStreamSynchronize(p.stream));
        for (size_t i = 0; i < ref.size(); ++i) ref[i] = __bfloat162float(host[i]);
      }
      struct Row { float us; int heur, id, tile, stages, splitk, red, cluster; float diff; };
      std::vector<Row> rows;
      const int splits[] = {0, 2, 3, 4, 6, 8, 12, 16};  // 0: as the heuristic returned it
      for (int h = 0; h < count; ++h) {
        for (int sk : splits) {
          cublasLtMatmulAlgo_t algo = found[h].algo;
          if (sk) {
            if (attr(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) == sk) continue;
            const uint32_t red = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
            if (cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &sk, sizeof(sk)) !=
                    CUBLAS_STATUS_SUCCESS ||
                cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof(red)) !=
                    CUBLAS_STATUS_SUCCESS)
              continue;
            cublasLtMatmulHeuristicResult_t checked{};
            if (cublasLtMatmulAlgoCheck(p.lt, p.op, p.a, p.b, p.c, p.c, &algo, &checked) != CUBLAS_STATUS_SUCCESS ||
                checked.workspaceSize > kWorkspace)
              continue;
          }
          const float us = time_algo(p, algo);
          if (us < 0) continue;
          rows.push_back({us, h, attr(algo, CUBLASLT_ALGO_CONFIG_ID), attr(algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
                          attr(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID), attr(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                          attr(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
                          attr(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID), max_diff(p, algo, ref, m, s.n)});
        }
      }
      const float gemm_ex_us = time_calls(p, [&](int copy) { return run_gemm_ex(p, copy, m, s.n, s.k); });
      // The heuristic's first pick when the workspace is small (torch's cuBLASLt calls pass ~1 MiB).
      const size_t small_ws = 1u << 20;
      CHECK_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &small_ws,
                                                    sizeof(small_ws)));
      cublasLtMatmulHeuristicResult_t small_pick;
      int small_count = 0;
      CHECK_LT(cublasLtMatmulAlgoGetHeuristic(p.lt, p.op, p.a, p.b, p.c, p.c, pref, 1, &small_pick, &small_count));
      const float small_ws_us = small_count ? time_algo(p, small_pick.algo) : -1.0f;
      // Weight and activation bytes at the read rate.
      const float floor_us = float(wbytes + size_t(m) * (s.k + s.n) * 2) / (read_gbs * 1e3f);
      const Row first = rows.empty() ? Row{} : rows[0];
      std::sort(rows.begin(), rows.end(), [](const Row& l, const Row& r) { return l.us < r.us; });
      std::printf("%-8s M=%4d N=%5d K=%5d floor %5.1f us | heuristic #0 %6.2f us | best %6.2f us (%.2fx) of %zu "
                  "(%d from the heuristic)\n",
                  s.name, m, s.n, s.k, floor_us, first.us, rows[0].us, first.us / rows[0].us, rows.size(), count);
      std::printf("    cublasGemmEx (torch's call) %6.2f us | cuBLASLt first pick with a 1 MiB workspace %6.2f us\n",
                  gemm_ex_us, small_ws_us);
      for (size_t i = 0; i < rows.size() && i < 5; ++i) {
        const Row& r = rows[i];
        std::printf("    %6.2f us  heur #%-2d algo %3d tile %3d stages %3d splitK %2d red %d cluster %2d  max|diff| %.3g\n",
                    r.us, r.heur, r.id, r.tile, r.stages, r.splitk, r.red, r.cluster, r.diff);
      }
      std::fflush(stdout);
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(p.a); cublasLtMatrixLayoutDestroy(p.b); cublasLtMatrixLayoutDestroy(p.c);
      cublasLtMatmulDescDestroy(p.op);
      cudaFree(p.x); cudaFree(p.out);
    }
    for (auto* w : p.weights) cudaFree(w);
  }
  return 0;
}
