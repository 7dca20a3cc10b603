# The consumer executable of a packaging test, shared by its three ways of
# getting prenorm (find_package, add_subdirectory, FetchContent):
# prenorm_consumer(<kind>) builds ../consumer.cpp against prenorm::prenorm, and
# against prenorm::io where that target exists (PRENORM_EXPECT_IO: it must).
#
# Warnings are errors: prenorm's headers must compile cleanly in a user's
# -Wall -Wextra build (consumer.cpp instantiates the models, the converter and
# the KV cache). The add_subdirectory and FetchContent consumers are the ones
# that check it: through find_package, prenorm's headers come from an imported
# target, which CMake includes as system headers, where compilers stay quiet.
# GCC 12's false maybe-uninitialized warnings inside Eigen's AVX-512 code are
# off, as in prenorm's own build.
function(prenorm_consumer kind)
  add_executable(consumer ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/consumer.cpp)
  target_link_libraries(consumer PRIVATE prenorm::prenorm)
  target_compile_definitions(consumer PRIVATE PRENORM_CONSUMER_KIND="${kind}")
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(consumer PRIVATE -Wall -Wextra -Werror)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_compile_options(consumer PRIVATE -Wno-maybe-uninitialized)
    endif()
  endif()

  if(TARGET prenorm::io)
    target_link_libraries(consumer PRIVATE prenorm::io)
    target_compile_definitions(consumer PRIVATE PRENORM_CONSUMER_IO=1)
  elseif(PRENORM_EXPECT_IO)
    message(FATAL_ERROR "prenorm::io was expected but is not defined")
  else()
    target_compile_definitions(consumer PRIVATE PRENORM_CONSUMER_IO=0)
  endif()
endfunction()
