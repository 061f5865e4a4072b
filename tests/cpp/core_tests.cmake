# GoogleTest suite and stress executable of the C++ core (included from tests/cpp/CMakeLists.txt).
add_executable(core_tests
  ${CMAKE_CURRENT_LIST_DIR}/core_block_pool_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/core_prefix_cache_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/core_scheduler_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/core_property_test.cc)
target_include_directories(core_tests PRIVATE ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(core_tests PRIVATE pagedllm_core GTest::gtest_main)
gtest_discover_tests(core_tests DISCOVERY_TIMEOUT 60)

add_executable(core_stress ${CMAKE_CURRENT_LIST_DIR}/core_stress.cc)
target_include_directories(core_stress PRIVATE ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(core_stress PRIVATE pagedllm_core)
add_test(NAME core_stress_short COMMAND core_stress --seconds 3)
