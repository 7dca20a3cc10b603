// A program that uses prenorm the way a downstream project would. Built by the
// packaging tests (tests/package/run.cmake) through find_package,
// add_subdirectory and FetchContent.
#include <prenorm/prenorm.hpp>  // everything but io
#include <prenorm/core.hpp>

#if PRENORM_CONSUMER_IO && __has_include(<prenorm/io.hpp>)
#include <prenorm/io.hpp>  // needs prenorm::io (nlohmann_json)
#endif

#include <iostream>

static_assert(prenorm::main_width(prenorm::Arch::PreCRMSNorm, 768) == 767,
              "Pre-CRMSNorm compresses the main branch to d-1");

int main() {
  constexpr auto arch = prenorm::Arch::PreCRMSNorm;
  std::cout << "prenorm consumer (" PRENORM_CONSUMER_KIND "): " << prenorm::arch_name(arch)
            << " at d=768 has main width " << prenorm::main_width(arch, 768)
            << (PRENORM_CONSUMER_IO ? ", with prenorm::io" : ", without prenorm::io") << '\n';
  return 0;
}
