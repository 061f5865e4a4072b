# CPU twins (always built) and CUDA kernels (built when PAGEDLLM_WITH_CUDA).
set(PAGEDLLM_KERNEL_CPU_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/placeholder.cc
)
set(PAGEDLLM_KERNEL_CUDA_SOURCES
)
