#pragma once
// Row reductions with explicit Eigen packets.
//
// GCC does not vectorize a plain floating-point reduction without -ffast-math
// (it may not reorder the additions), and Eigen's whole-matrix rowwise()
// reductions do not vectorize either: both cost 4-7x. So each sum here keeps
// four packet accumulators per quantity, then a scalar tail. The order of the
// additions depends on the row length only, never on the thread or alignment,
// which keeps results bitwise reproducible.

#include <Eigen/Core>

#include <array>
#include <type_traits>

#include "../../core/types.hpp"

namespace prenorm::detail {

template <class Scalar>
using Packet = typename Eigen::internal::packet_traits<Scalar>::type;

template <class Scalar>
inline constexpr Index kPacketSize = Eigen::internal::unpacket_traits<Packet<Scalar>>::size;

// Loads a packet, or one scalar when T is the scalar type (for the tail).
template <class T, class Scalar>
EIGEN_STRONG_INLINE T load(const Scalar* p) {
  if constexpr (std::is_same_v<T, Scalar>) {
    return *p;
  } else {
    return Eigen::internal::ploadu<T>(p);
  }
}

// Stores a packet, or one scalar when T is the scalar type.
template <class T, class Scalar>
EIGEN_STRONG_INLINE void store(Scalar* p, const T& v) {
  if constexpr (std::is_same_v<T, Scalar>) {
    *p = v;
  } else {
    Eigen::internal::pstoreu(p, v);
  }
}

// Calls fn(i, (T*)nullptr) for the packets (T = Packet) and then the scalars
// (T = Scalar) that cover [0, n): an elementwise pass. (A pointer names T: a
// template argument would drop the packet type's alignment attribute.)
template <class Scalar, class Fn>
EIGEN_STRONG_INLINE void for_each_packet(Index n, Fn&& fn) {
  constexpr Index kP = kPacketSize<Scalar>;
  Index i = 0;
  for (; i + kP <= n; i += kP) fn(i, static_cast<Packet<Scalar>*>(nullptr));
  for (; i < n; ++i) fn(i, static_cast<Scalar*>(nullptr));
}

// Returns the NumSums sums over i in [0, n) of the terms that add_terms adds.
// add_terms(i, acc) is a generic callable: it is called with T = Packet (terms
// i..i+P-1 added lane-wise) and with T = Scalar (the tail), and adds term k
// into acc[k] with Eigen's padd/pmadd (which also work on scalars).
template <class Scalar, int NumSums, class AddTerms>
EIGEN_STRONG_INLINE std::array<Scalar, NumSums> packet_sums(Index n, AddTerms add_terms) {
  using P = Packet<Scalar>;
  constexpr Index kP = kPacketSize<Scalar>;
  using Eigen::internal::padd;
  using Eigen::internal::predux;
  using Eigen::internal::pset1;

  // Plain arrays: std::array<__m256> would drop the packet's alignment attribute.
  P acc0[NumSums], acc1[NumSums], acc2[NumSums], acc3[NumSums];
  for (int k = 0; k < NumSums; ++k) acc0[k] = acc1[k] = acc2[k] = acc3[k] = pset1<P>(Scalar(0));
  Index i = 0;
  for (; i + 4 * kP <= n; i += 4 * kP) {
    add_terms(i, acc0);
    add_terms(i + kP, acc1);
    add_terms(i + 2 * kP, acc2);
    add_terms(i + 3 * kP, acc3);
  }
  for (; i + kP <= n; i += kP) add_terms(i, acc0);

  Scalar tail[NumSums] = {};
  for (; i < n; ++i) add_terms(i, tail);

  std::array<Scalar, NumSums> sums;
  for (int k = 0; k < NumSums; ++k)
    sums[k] = predux(padd(padd(acc0[k], acc1[k]), padd(acc2[k], acc3[k]))) + tail[k];
  return sums;
}

// sum_i x_i
template <class Scalar>
Scalar sum(const Scalar* x, Index n) {
  return packet_sums<Scalar, 1>(n, [&](Index i, auto& acc) {
    using T = std::decay_t<decltype(acc[0])>;
    acc[0] = Eigen::internal::padd(acc[0], load<T>(x + i));
  })[0];
}

// sum_i ((x_i - shift) - delta)^2: the second pass of a two-pass variance.
template <class Scalar>
Scalar sum_sq_centered(const Scalar* x, Index n, Scalar shift, Scalar delta) {
  return packet_sums<Scalar, 1>(n, [&](Index i, auto& acc) {
    using T = std::decay_t<decltype(acc[0])>;
    using namespace Eigen::internal;
    const T c = psub(psub(load<T>(x + i), pset1<T>(shift)), pset1<T>(delta));
    acc[0] = pmadd(c, c, acc[0]);
  })[0];
}

}  // namespace prenorm::detail
