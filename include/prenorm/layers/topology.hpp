#pragma once
// How a Pre-Norm block wires its two sub-layers to the residual stream h:
//   Sequential:          h += Attn(N1(h));  h += Mlp(N2(h))     GPT-2, ViT, OPT
//   ParallelSharedNorm:  y = N1(h);  h += Attn(y) + Mlp(y)      GPT-J, Phi (N2 unused)
//   ParallelTwoNorms:    h += Attn(N1(h)) + Mlp(N2(h))          GPT-NeoX use_parallel_residual

#include <string_view>

namespace prenorm {

enum class BlockTopology {
  Sequential,
  ParallelSharedNorm,
  ParallelTwoNorms,
};

// snake_case names, as in the prenorm layout's metadata.
constexpr std::string_view topology_name(BlockTopology topology) {
  switch (topology) {
    case BlockTopology::Sequential: return "sequential";
    case BlockTopology::ParallelSharedNorm: return "parallel_shared_norm";
    case BlockTopology::ParallelTwoNorms: return "parallel_two_norms";
  }
  return "unknown";
}

// Whether `topology` is one of the enumerators (a config may hold any int).
constexpr bool is_valid_topology(BlockTopology topology) {
  return topology == BlockTopology::Sequential || topology == BlockTopology::ParallelSharedNorm ||
         topology == BlockTopology::ParallelTwoNorms;
}

// The topology whose topology_name is `name`, or false if none is.
constexpr bool topology_from_name(std::string_view name, BlockTopology& topology) {
  for (BlockTopology t : {BlockTopology::Sequential, BlockTopology::ParallelSharedNorm,
                          BlockTopology::ParallelTwoNorms})
    if (topology_name(t) == name) {
      topology = t;
      return true;
    }
  return false;
}

}  // namespace prenorm
