# Sources of the core library (C++ standard library only).
set(PAGEDLLM_CORE_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/placeholder.cc
)
