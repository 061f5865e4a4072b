# CPU twins (always built) and CUDA kernels (built when PAGEDLLM_WITH_CUDA).
set(PAGEDLLM_KERNEL_CPU_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/activation.cc
  ${CMAKE_CURRENT_LIST_DIR}/paged_attention.cc
  ${CMAKE_CURRENT_LIST_DIR}/reshape_and_cache.cc
  ${CMAKE_CURRENT_LIST_DIR}/rms_norm.cc
  ${CMAKE_CURRENT_LIST_DIR}/rotary_embedding.cc
)
set(PAGEDLLM_KERNEL_CUDA_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/activation.cu
  ${CMAKE_CURRENT_LIST_DIR}/paged_attention.cu
  ${CMAKE_CURRENT_LIST_DIR}/paged_attention_decode.cu
  ${CMAKE_CURRENT_LIST_DIR}/paged_attention_prefill.cu
  ${CMAKE_CURRENT_LIST_DIR}/reshape_and_cache.cu
  ${CMAKE_CURRENT_LIST_DIR}/rms_norm.cu
  ${CMAKE_CURRENT_LIST_DIR}/rotary_embedding.cu
)
