# Sources of the core library (C++ standard library only).
set(PAGEDLLM_CORE_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/block_hash.cc
  ${CMAKE_CURRENT_LIST_DIR}/block_pool.cc
  ${CMAKE_CURRENT_LIST_DIR}/prefix_cache.cc
  ${CMAKE_CURRENT_LIST_DIR}/kv_cache_manager.cc
  ${CMAKE_CURRENT_LIST_DIR}/request.cc
  ${CMAKE_CURRENT_LIST_DIR}/scheduler_config.cc
  ${CMAKE_CURRENT_LIST_DIR}/batch_plan.cc
  ${CMAKE_CURRENT_LIST_DIR}/scheduler.cc
)
