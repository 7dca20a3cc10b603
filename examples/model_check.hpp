#pragma once
// The equivalence check shared by prenorm-convert (after writing) and
// prenorm-verify: two models of one kind (GPT or ViT; any layouts and
// architectures) run on one deterministic probe input in double, and the
// relative error of their logits, max |b - a| / max |a| with `a` the
// reference. The hidden states are not compared: the architectures keep
// different residual streams (Pre-CRMSNorm's is compressed to d - 1), so only
// the logits are comparable across a conversion.

#include <prenorm/convert/streaming.hpp>
#include <prenorm/io.hpp>
#include <prenorm/models.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace prenorm_tools {

struct Comparison {
  std::string probe;        // what was run, e.g. "8 tokens" or "one 3x32x32 image"
  double logits_error = 0;  // relative, see the top of this file; NaN if either has NaN
};

namespace detail {

inline double relative_error(const prenorm::RowMatrix<double>& reference,
                             const prenorm::RowMatrix<double>& other) {
  if (!reference.allFinite() || !other.allFinite()) return std::numeric_limits<double>::quiet_NaN();
  const double scale = std::max(reference.cwiseAbs().maxCoeff(), 1e-300);
  return (other - reference).cwiseAbs().maxCoeff() / scale;
}

// Shapes that must agree for the models to be compared, as "name a vs b".
inline std::string shape_mismatch(const prenorm::TransformerConfig& a,
                                  const prenorm::TransformerConfig& b) {
  const auto differ = [](const char* name, prenorm::Index x, prenorm::Index y) {
    return x == y ? std::string()
                  : std::string(name) + " " + std::to_string(x) + " vs " + std::to_string(y);
  };
  if (a.stem == prenorm::Stem::Tokens) return differ("vocab", a.vocab, b.vocab);
  std::string text = differ("classes", a.classes, b.classes);
  if (text.empty()) text = differ("image_size", a.image_size, b.image_size);
  if (text.empty()) text = differ("channels", a.channels, b.channels);
  return text;
}

// The GPT probe: up to 8 token ids spread over the vocabulary, within both contexts.
inline std::vector<int> probe_ids(prenorm::Index vocab, prenorm::Index context_a,
                                  prenorm::Index context_b) {
  const prenorm::Index T = std::min<prenorm::Index>({8, context_a, context_b});
  std::vector<int> ids(static_cast<std::size_t>(T));
  for (prenorm::Index t = 0; t < T; ++t) ids[std::size_t(t)] = int((t * 7919 + 13) % vocab);
  return ids;
}

}  // namespace detail

// A tolerance given on the command line: a finite number >= 0, else nullopt.
inline std::optional<double> parse_tolerance(const std::string& text) {
  char* end = nullptr;
  const double tolerance = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(tolerance >= 0) || !std::isfinite(tolerance))
    return std::nullopt;
  return tolerance;
}

// Runs `reference` and `other` on the probe: up to 8 tokens (ids spread over
// the vocabulary, within the context) for a GPT, one image of smooth
// deterministic pixels for a ViT. Throws std::runtime_error when the models
// are of different kinds or shapes.
inline Comparison compare_models(const prenorm::io::AnyModel<double>& reference,
                                 const prenorm::io::AnyModel<double>& other) {
  if (prenorm::io::kind_of(reference) != prenorm::io::kind_of(other))
    throw std::runtime_error(std::string("cannot compare a ") +
                             std::string(prenorm::io::model_kind_name(prenorm::io::kind_of(reference))) +
                             " with a " +
                             std::string(prenorm::io::model_kind_name(prenorm::io::kind_of(other))));
  return std::visit(
      [](const auto& a, const auto& b) -> Comparison {
        if (const std::string mismatch = detail::shape_mismatch(a.config, b.config); !mismatch.empty())
          throw std::runtime_error("the models differ in shape: " + mismatch);
        if (a.config.stem == prenorm::Stem::Tokens) {
          const std::vector<int> ids =
              detail::probe_ids(a.config.vocab, a.config.context, b.config.context);
          const prenorm::Index T = prenorm::Index(ids.size());
          const prenorm::TokenBatch batch{ids, 1, T};
          return {std::to_string(T) + " tokens",
                  detail::relative_error(a.forward(batch), b.forward(batch))};
        } else {
          const auto& c = a.config;
          std::vector<double> pixels(std::size_t(c.channels * c.image_size * c.image_size));
          for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = std::sin(0.37 * double(i) + 0.5);
          const prenorm::ImageBatch<double> image{pixels, 1, c.channels, c.image_size, c.image_size};
          return {"one " + std::to_string(c.channels) + "x" + std::to_string(c.image_size) + "x" +
                      std::to_string(c.image_size) + " image",
                  detail::relative_error(a.forward(image), b.forward(image))};
        }
      },
      reference, other);
}

// The same for two GPT checkpoints read piece by piece (prenorm::io::
// probe_logits: one block in memory at a time), so that models larger than
// memory can be compared. The same probe and figure as compare_models, up to
// the rounding of the unfused residual adds.
inline Comparison compare_gpt_checkpoints(const prenorm::io::AnyGptCheckpoint& reference,
                                          const prenorm::io::AnyGptCheckpoint& other) {
  const auto config = [](const auto& m) { return m.config(); };
  const prenorm::TransformerConfig a = std::visit(config, reference), b = std::visit(config, other);
  if (a.vocab != b.vocab)
    throw std::runtime_error("the models differ in shape: vocab " + std::to_string(a.vocab) +
                             " vs " + std::to_string(b.vocab));
  const std::vector<int> ids = detail::probe_ids(a.vocab, a.context, b.context);
  const auto logits = [&ids](const auto& m) { return prenorm::io::probe_logits(m, ids); };
  // One model at a time: the reference's logits are all that is kept of it.
  const prenorm::RowMatrix<double> ref = std::visit(logits, reference);
  return {std::to_string(ids.size()) + " tokens",
          detail::relative_error(ref, std::visit(logits, other))};
}

}  // namespace prenorm_tools
