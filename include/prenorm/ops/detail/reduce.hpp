#pragma once
// Row reductions with explicit Eigen packets.
//
// GCC does not vectorize a plain floating-point reduction without -ffast-math
// (it may not reorder the additions), and Eigen's whole-matrix rowwise()
// reductions do not vectorize either: both cost 4-7x. So each sum here keeps
// four packet accumulators per quantity. The order of the additions depends on
// the row length only, never on the thread or alignment, which keeps results
// bitwise reproducible.
//
// A row whose length n is not a whole number of packets ends in one more
// packet, the one that ends at n (when n >= P), instead of a scalar loop: the
// compressed rows of Pre-CRMSNorm are d - 1 wide (191, 767), which left up to
// P - 1 scalar steps (15 with AVX-512) in each pass over each row.

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

// Whether a row of n elements ends in a packet that overlaps the whole
// packets before it: n is not a whole number of packets and holds at least one.
template <class Scalar>
constexpr bool has_overlapping_rest(Index n) {
  constexpr Index kP = kPacketSize<Scalar>;
  return kP > 1 && n > kP && n % kP != 0;
}

// The lanes of the packet [n - P, n) that the whole packets [0, n / P * P) did
// not cover, the last n % P: all bits set there, zero in the others.
template <class Scalar>
EIGEN_STRONG_INLINE Packet<Scalar> rest_mask(Index n) {
  using namespace Eigen::internal;
  using P = Packet<Scalar>;
  constexpr Index kP = kPacketSize<Scalar>;
  // lane >= P - n % P, compared as exact small integers in the packet's type.
  return pcmp_le(pset1<P>(Scalar(kP - n % kP)), plset<P>(Scalar(0)));
}

// y[i] = value(i) for i in [0, n): value(i, (T*)nullptr) returns the packet
// (T = Packet) or the scalar (T = Scalar) at i. (A pointer names T: a template
// argument would drop the packet type's alignment attribute.) A rest of n % P
// elements is stored as the packet that ends at n, computed before any store,
// so that y may be the input that value reads (the overlapping lanes get the
// same values twice).
template <class Scalar, class Value>
EIGEN_STRONG_INLINE void write_packets(Index n, Scalar* y, Value value) {
  using P = Packet<Scalar>;
  constexpr Index kP = kPacketSize<Scalar>;
  const Index body = n / kP * kP;  // whole packets: [0, body)
  if (has_overlapping_rest<Scalar>(n)) {  // false unless P > 1
    const P rest = value(n - kP, static_cast<P*>(nullptr));
    for (Index i = 0; i < body; i += kP) store(y + i, value(i, static_cast<P*>(nullptr)));
    store(y + n - kP, rest);
    return;
  }
  for (Index i = 0; i < body; i += kP) store(y + i, value(i, static_cast<P*>(nullptr)));
  for (Index i = body; i < n; ++i) store(y + i, value(i, static_cast<Scalar*>(nullptr)));
}

// Returns the NumSums sums over i in [0, n) of the terms that add_terms adds.
// add_terms(i, acc) is a generic callable: it is called with T = Packet (terms
// i..i+P-1 added lane-wise) and, for a row shorter than a packet, with
// T = Scalar, and adds term k into acc[k] with Eigen's padd/pmadd (which also
// work on scalars). A rest of n % P terms is added as the packet [n - P, n)
// into zero accumulators, its lanes that the whole packets summed already
// masked to zero (bitwise, whatever they hold) before they join the sums.
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
  if constexpr (kP > 1) {
    if (has_overlapping_rest<Scalar>(n)) {
      P rest[NumSums];
      for (int k = 0; k < NumSums; ++k) rest[k] = pset1<P>(Scalar(0));
      add_terms(n - kP, rest);
      const P mask = rest_mask<Scalar>(n);
      for (int k = 0; k < NumSums; ++k)
        acc0[k] = padd(acc0[k], Eigen::internal::pand(rest[k], mask));
      i = n;
    }
  }

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
