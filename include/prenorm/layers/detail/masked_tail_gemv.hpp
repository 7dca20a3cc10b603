#pragma once
// y += W x for one row x, where the depth is not a whole number of packets.
//
// For a single row of x, Eigen computes x W^T as a matrix-vector product that
// takes each row of W in whole packets and ends it with a scalar loop over the
// rest: with the d - 1 = 767 inputs of a Pre-CRMSNorm reader, 7 scalar steps
// (15 with AVX-512) per row of W, +3.8 % of the instructions of a GPT-3 Small
// KV-cache step. Here the rest is one more packet: the packet that ends at the
// row's end, with its lanes that the whole packets already summed masked to
// zero (in W's packet and in x's, so that they add 0 * 0 whatever W holds).
// Rows go 8 at a time (4 where a row exceeds 32 KB), sharing each packet of x,
// as in Eigen's kernel (Eigen/src/Core/products/GeneralMatrixVector.h).

#include <Eigen/Core>

#include <bit>
#include <cstdint>
#include <type_traits>

#include "../../core/types.hpp"

namespace prenorm::detail {

template <class S>
struct MaskedTailGemv {
  using Packet = typename Eigen::internal::packet_traits<S>::type;
  static constexpr Index kPacket = Eigen::internal::unpacket_traits<Packet>::size;

  // Whether the masked tail applies (and pays) for a depth of k.
  static constexpr bool applies(Index k) { return kPacket > 1 && k > kPacket && k % kPacket != 0; }

  // y[o] += sum_c W[o, c] x[c] for o < out; W [out x k] row-major with row
  // stride k, x [k] contiguous; applies(k).
  static void run(const S* w, Index out, Index k, const S* x, S* y) {
    using namespace Eigen::internal;
    using Bits = std::conditional_t<sizeof(S) == 4, std::uint32_t, std::uint64_t>;
    const Index body = k / kPacket * kPacket;  // whole packets: [0, body)
    const Index tail = k - kPacket;            // the last packet: [tail, k)
    alignas(64) S keep[kPacket];
    for (Index lane = 0; lane < kPacket; ++lane)
      keep[lane] = tail + lane >= body ? std::bit_cast<S>(~Bits(0)) : S(0);
    const Packet mask = pload<Packet>(keep);
    const Packet x_tail = pand(ploadu<Packet>(x + tail), mask);
    Index o = 0;
    if (k * Index(sizeof(S)) <= 32000)
      for (; o + 8 <= out; o += 8) rows<8>(w + o * k, k, x, body, mask, x_tail, y + o);
    for (; o + 4 <= out; o += 4) rows<4>(w + o * k, k, x, body, mask, x_tail, y + o);
    for (; o < out; ++o) rows<1>(w + o * k, k, x, body, mask, x_tail, y + o);
  }

 private:
  // y[0, R) += the dot products of W's rows [0, R) (from w, stride k) with x.
  template <int R>
  static void rows(const S* w, Index k, const S* x, Index body, const Packet& mask,
                   const Packet& x_tail, S* y) {
    using namespace Eigen::internal;
    Packet sum[R];
    for (int r = 0; r < R; ++r) sum[r] = pset1<Packet>(S(0));
    for (Index j = 0; j < body; j += kPacket) {
      const Packet xj = ploadu<Packet>(x + j);
      for (int r = 0; r < R; ++r) sum[r] = pmadd(ploadu<Packet>(w + r * k + j), xj, sum[r]);
    }
    const Index tail = k - kPacket;
    for (int r = 0; r < R; ++r)
      sum[r] = pmadd(pand(ploadu<Packet>(w + r * k + tail), mask), x_tail, sum[r]);
    for (int r = 0; r < R; ++r) y[r] += predux(sum[r]);
  }
};

}  // namespace prenorm::detail
