# Packaging test driver: cmake -DMODE=<mode> -DPRENORM_SOURCE_DIR=... -DWORK_DIR=... -P run.cmake
#
# MODE is one of
#   find_package      install prenorm to WORK_DIR/prefix, then build the consumer in
#                     find_package/ against it (twice: as is, and with nlohmann_json
#                     hidden, to show that prenorm::prenorm never needs it)
#   add_subdirectory  build the consumer in add_subdirectory/ with the source tree
#   fetchcontent      pack the source tree into a tarball and build the consumer in
#                     fetchcontent/ with FetchContent_Declare(URL <tarball>)
# Nothing is downloaded. Every consumer executable is run and must print its line.
# Optional: GENERATOR, CXX_COMPILER, BUILD_TYPE, EXPECT_IO (1: prenorm::io must exist).

cmake_minimum_required(VERSION 3.25)

foreach(var MODE PRENORM_SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Release)
endif()
if(NOT DEFINED EXPECT_IO OR EXPECT_IO STREQUAL "")
  set(EXPECT_IO 0)
endif()

set(here "${CMAKE_CURRENT_LIST_DIR}")
set(common_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
if(GENERATOR)
  list(PREPEND common_args -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND common_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()

function(run_step what)
  message(STATUS "[package.${MODE}] ${what}: ${ARGN}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rv)
  if(NOT rv EQUAL 0)
    message(FATAL_ERROR "[package.${MODE}] ${what} failed (${rv})")
  endif()
endfunction()

# Configures, builds and runs the consumer in ${here}/${consumer_dir}.
function(build_and_run_consumer consumer_dir build_dir expect_io)
  run_step("configure consumer" "${CMAKE_COMMAND}"
    -S "${here}/${consumer_dir}" -B "${build_dir}" ${common_args}
    "-DPRENORM_EXPECT_IO=${expect_io}" ${ARGN})
  run_step("build consumer" "${CMAKE_COMMAND}" --build "${build_dir}" -j 2)
  # Single-config generators put the executable in the build directory,
  # multi-config ones in a per-configuration subdirectory.
  set(exe "${build_dir}/consumer${CMAKE_EXECUTABLE_SUFFIX}")
  if(NOT EXISTS "${exe}")
    set(exe "${build_dir}/${BUILD_TYPE}/consumer${CMAKE_EXECUTABLE_SUFFIX}")
  endif()
  execute_process(COMMAND "${exe}" RESULT_VARIABLE rv OUTPUT_VARIABLE out)
  message(STATUS "[package.${MODE}] consumer printed: ${out}")
  if(NOT rv EQUAL 0)
    message(FATAL_ERROR "[package.${MODE}] consumer exited with ${rv}")
  endif()
  if(NOT out MATCHES "main width 767")
    message(FATAL_ERROR "[package.${MODE}] unexpected consumer output")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

if(MODE STREQUAL "find_package")
  set(prefix "${WORK_DIR}/prefix")
  run_step("configure prenorm" "${CMAKE_COMMAND}"
    -S "${PRENORM_SOURCE_DIR}" -B "${WORK_DIR}/prenorm-build" ${common_args}
    -DPRENORM_BUILD_TESTS=OFF -DPRENORM_BUILD_BENCHMARKS=OFF
    -DPRENORM_BUILD_EXAMPLES=OFF -DPRENORM_BUILD_FUZZERS=OFF
    -DPRENORM_INSTALL=ON "-DCMAKE_INSTALL_PREFIX=${prefix}")
  run_step("build prenorm" "${CMAKE_COMMAND}" --build "${WORK_DIR}/prenorm-build")
  run_step("install prenorm" "${CMAKE_COMMAND}" --install "${WORK_DIR}/prenorm-build"
    --config "${BUILD_TYPE}")
  foreach(f prenorm/prenorm.hpp prenorm/core.hpp prenorm/core/arch.hpp)
    if(NOT EXISTS "${prefix}/include/${f}")
      message(FATAL_ERROR "[package.find_package] ${f} was not installed")
    endif()
  endforeach()
  build_and_run_consumer(find_package "${WORK_DIR}/consumer" ${EXPECT_IO}
    "-DCMAKE_PREFIX_PATH=${prefix}")
  # Without nlohmann_json, prenorm::prenorm must still be found.
  build_and_run_consumer(find_package "${WORK_DIR}/consumer-no-json" 0
    "-DCMAKE_PREFIX_PATH=${prefix}" -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON)

elseif(MODE STREQUAL "add_subdirectory")
  build_and_run_consumer(add_subdirectory "${WORK_DIR}/consumer" ${EXPECT_IO}
    "-DPRENORM_SOURCE_DIR=${PRENORM_SOURCE_DIR}")

elseif(MODE STREQUAL "fetchcontent")
  # A source tarball as a release would ship it: the files needed to consume
  # prenorm (tests, benchmarks and examples are off in a subproject).
  set(tarball "${WORK_DIR}/prenorm-src.tar.gz")
  set(members CMakeLists.txt cmake include LICENSE)
  run_step("pack sources" "${CMAKE_COMMAND}" -E chdir "${PRENORM_SOURCE_DIR}"
    "${CMAKE_COMMAND}" -E tar czf "${tarball}" ${members})
  file(SHA256 "${tarball}" sha256)
  build_and_run_consumer(fetchcontent "${WORK_DIR}/consumer" ${EXPECT_IO}
    "-DPRENORM_URL=${tarball}" "-DPRENORM_URL_HASH=SHA256=${sha256}")

else()
  message(FATAL_ERROR "run.cmake: unknown MODE '${MODE}'")
endif()

message(STATUS "[package.${MODE}] OK")
