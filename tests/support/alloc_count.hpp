#pragma once
// Counting heap allocations in a test program: Eigen's (with
// EIGEN_RUNTIME_NO_MALLOC, reported through eigen_assert and counted here
// instead of aborting; every other Eigen assertion stays on, NDEBUG or not)
// and operator new's. Include it first, before any Eigen header, in at most
// one translation unit of a program: it replaces the global operator new and
// delete.

#ifdef EIGEN_CORE_H
#error "tests/support/alloc_count.hpp must be included before any Eigen header"
#endif

#define EIGEN_RUNTIME_NO_MALLOC
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

namespace alloc_count {
inline std::atomic<long> eigen_mallocs{0};
inline std::atomic<long> news{0};
inline std::atomic<bool> counting{false};
inline void eigen_assert_failed(const char* expr, const char* file, int line) {
  if (std::strstr(expr, "heap allocation is forbidden")) {
    ++eigen_mallocs;
    return;
  }
  std::fprintf(stderr, "%s:%d: Eigen assertion failed: %s\n", file, line, expr);
  std::abort();
}
}  // namespace alloc_count
#define eigen_assert(x) \
  do {                  \
    if (!(x)) ::alloc_count::eigen_assert_failed(#x, __FILE__, __LINE__); \
  } while (false)

// Counts operator new calls while alloc_count::counting is set. (GCC cannot
// see that these operator new / delete pairs both use malloc / free.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) {
  if (alloc_count::counting) ++alloc_count::news;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, std::align_val_t a) {
  if (alloc_count::counting) ++alloc_count::news;
  const std::size_t align = static_cast<std::size_t>(a);
  if (void* p = std::aligned_alloc(align, (n + align - 1) / align * align)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) { return ::operator new(n, a); }
// The nothrow forms too (std::stable_sort's temporary buffer uses them): a
// pair half-replaced would free with free() what the runtime's new allocated.
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  if (alloc_count::counting) ++alloc_count::news;
  return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return ::operator new(n, t); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  if (alloc_count::counting) ++alloc_count::news;
  const std::size_t align = static_cast<std::size_t>(a);
  return std::aligned_alloc(align, (n + align - 1) / align * align);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t& t) noexcept {
  return ::operator new(n, a, t);
}
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

#include <Eigen/Core>

namespace alloc_count {

struct Allocations {
  long eigen = 0, news = 0;
};

// Runs f with Eigen's heap allocation forbidden (counted) and operator new counted.
template <class F>
Allocations count_allocations(F&& f) {
  eigen_mallocs = 0;
  news = 0;
  Eigen::internal::set_is_malloc_allowed(false);
  counting = true;
  f();
  counting = false;
  Eigen::internal::set_is_malloc_allowed(true);
  return {eigen_mallocs.load(), news.load()};
}

}  // namespace alloc_count
