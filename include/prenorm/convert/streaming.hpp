#pragma once
// Converting and running a GPT checkpoint piece by piece, so that memory
// does not grow with the number of layers (issue 20):
//
//   GptCheckpoint<A>      a GPT in a file (the Hugging Face GPT-2 layout or
//                         prenorm's), read in double one group at a time: a
//                         block, or a "shell" (the model without blocks, with
//                         some rows of the token table and head). Every read
//                         copies out of the memory map and then gives the
//                         mapped pages back (SafetensorsFile::release), so the
//                         resident memory stays bounded too.
//   convert_gpt_streaming the exact conversion to prenorm's layout, written
//                         while it is computed (SafetensorsStreamWriter): the
//                         token table and the head in chunks of rows through
//                         prenorm::convert on a shell, each block through
//                         conversion::detail::convert_block. The output is
//                         bitwise the file save_prenorm(convert<To>(model))
//                         writes: the same functions on the same values (each
//                         row of a table or head is converted on its own).
//   probe_logits          the model's logits on a few tokens, block by block.
//
// Peak memory: one block of the source and one of the target in double, or
// one chunk of rows (kStreamRows x d) of the tables in double, plus the
// position table and the output buffers. A Pre-RMSNorm source is the
// exception: its token table is checked for zero-mean rows against the whole
// table's rms (convert_table), so it is converted in one chunk.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "../core/arch.hpp"
#include "../io/any_model.hpp"
#include "../io/hf_gpt2.hpp"
#include "../io/prenorm_layout.hpp"
#include "../io/safetensors.hpp"
#include "../io/safetensors_stream_writer.hpp"
#include "../models/gpt.hpp"
#include "../models/session.hpp"
#include "convert.hpp"

namespace prenorm::io {

// Rows of the token table and head converted (or run) at a time.
inline constexpr Index kStreamRows = 4096;

// The shape of every non-empty parameter of a Gpt<A> of `config`, in
// visit_parameters order (the order of prenorm's layout), without making the model.
template <Arch A>
std::vector<ExpectedTensor> gpt_parameter_shapes(const TransformerConfig& config) {
  TransformerConfig one = config;  // one block and one token stand for all
  one.layers = std::min<Index>(config.layers, 1);
  one.vocab = 1;
  const Gpt<A, float> model(one);
  std::vector<ExpectedTensor> front, block, back;
  model.visit_parameters([&](const std::string& name, const auto& tensor) {
    if (tensor.size() == 0) return;
    using T = std::decay_t<decltype(tensor)>;
    std::vector<std::int64_t> shape = {tensor.rows()};
    if constexpr (T::ColsAtCompileTime != 1) shape.push_back(tensor.cols());
    if (name == "token_embedding.table" || name == "head.weight" || name == "head_bias")
      shape[0] = config.vocab;
    if (name.rfind("blocks[0].", 0) == 0) block.push_back({name.substr(10), shape, ""});
    else (block.empty() && back.empty() && name.find("embedding") != std::string::npos ? front : back)
        .push_back({name, shape, ""});
  });
  for (Index i = 0; i < config.layers; ++i)
    for (const ExpectedTensor& t : block)
      front.push_back({"blocks[" + std::to_string(i) + "]." + t.name, t.shape, ""});
  front.insert(front.end(), back.begin(), back.end());
  return front;
}

// A GPT in a checkpoint, read piece by piece in double (see the top of this file).
template <Arch A>
class GptCheckpoint {
 public:
  using Model = Gpt<A, double>;
  using Block = typename Model::Block;

  // The model of `config` in `file`, its tensors named by prenorm's layout
  // (gpt2_prefix empty) or GPT-2's (gpt2_prefix set; A is PreLN). The file
  // must have been checked (open_gpt_checkpoint does it).
  GptCheckpoint(const SafetensorsFile& file, const TransformerConfig& config,
                std::optional<std::string> gpt2_prefix)
      : file_(&file), config_(config), gpt2_prefix_(std::move(gpt2_prefix)) {}

  const TransformerConfig& config() const { return config_; }
  const SafetensorsFile& file() const { return *file_; }

  // The model without blocks (layers 0) whose token table, head and head
  // bias hold rows `rows` of the file's (vocab = rows.size()); the final
  // norm or tied affine are whole, the position table too unless `positions`
  // is false (then the shell has none: for a head, or a chunk of the token
  // table, it is work for nothing).
  Model shell(std::span<const Index> rows, bool positions = true) const {
    TransformerConfig c = config_;
    c.layers = 0;
    c.vocab = Index(rows.size());
    if (!positions) c.learned_positions = false, c.position_offset = 0;
    Model model(c);
    model.visit_parameters([&](const std::string& name, auto& tensor) {
      if (tensor.size() == 0) return;
      if (name == "token_embedding.table" || name == "head.weight" || name == "head_bias")
        read_rows(name, rows, tensor);
      else
        read(name, tensor);
    });
    return model;
  }
  // The shell of rows [first, first + count).
  Model shell(Index first, Index count, bool positions = true) const {
    std::vector<Index> rows(static_cast<std::size_t>(count));
    for (Index r = 0; r < count; ++r) rows[std::size_t(r)] = first + r;
    return shell(rows, positions);
  }

  // Block `layer`, with the model's attention options for it.
  Block block(Index layer) const {
    TransformerConfig c = config_;
    c.layers = 0;
    c.vocab = 1;
    Block b = Model(c).make_block(layer);
    const auto read_one = [&](const std::string& name, auto& tensor) {
      if (tensor.size() != 0) read(name, tensor);
    };
    visit_block_parameters("blocks[" + std::to_string(layer) + "].", b, read_one);
    return b;
  }

 private:
  // The file's tensor for parameter `name` and whether it is transposed.
  detail::Gpt2Tensor stored(const std::string& name) const {
    if (!gpt2_prefix_) return {prenorm_tensor_name(name), false};
    const std::optional<detail::Gpt2Tensor> t = detail::gpt2_tensor_of(name, *gpt2_prefix_);
    if (!t)
      detail::fail_with<FormatError>("GptCheckpoint", file_->path().string(),
                                     ": GPT-2 has no tensor for '", name, "'");
    return *t;
  }

  template <class T>
  void read(const std::string& name, T& tensor) const {
    if (gpt2_prefix_) detail::read_gpt2_parameter(*file_, name, *gpt2_prefix_, tensor);
    else if constexpr (T::ColsAtCompileTime == 1) tensor = file_->vector<double>(prenorm_tensor_name(name));
    else tensor = file_->matrix<double>(prenorm_tensor_name(name));
    file_->release(stored(name).name);
  }

  // Rows `rows` (entries, for a vector) of a table stored untransposed.
  template <class T>
  void read_rows(const std::string& name, std::span<const Index> rows, T& tensor) const {
    const std::string file_name = stored(name).name;
    for (std::size_t i = 0; i < rows.size();) {
      std::size_t run = 1;  // consecutive rows read at once
      while (i + run < rows.size() && rows[i + run] == rows[i] + Index(run)) ++run;
      const RowMatrix<double> part = file_->rows<double>(file_name, rows[i], Index(run));
      if constexpr (T::ColsAtCompileTime == 1) tensor.segment(Index(i), Index(run)) = part.col(0);
      else tensor.middleRows(Index(i), Index(run)) = part;
      file_->release(file_name, rows[i], Index(run));
      i += run;
    }
  }

  const SafetensorsFile* file_;
  TransformerConfig config_;
  std::optional<std::string> gpt2_prefix_;
};

// A GPT checkpoint of any architecture, and where it came from.
using AnyGptCheckpoint = std::variant<GptCheckpoint<Arch::PreLN>, GptCheckpoint<Arch::PreRMSNorm>,
                                      GptCheckpoint<Arch::PreCRMSNorm>>;
struct OpenedGpt {
  AnyGptCheckpoint checkpoint;
  Layout layout = Layout::Prenorm;
  Dtype dtype = Dtype::F32;                          // of the file's weights
  std::optional<std::filesystem::path> config_path;  // GPT-2: the config.json read
  std::optional<Arch> converted_from;                // prenorm layout: the metadata's
};

// The GPT in `file` read piece by piece, after checking every tensor's name
// and shape as the loaders do, when it is in a layout read that way (the
// Hugging Face GPT-2 layout, or prenorm's holding a GPT); nullopt otherwise
// (load the whole model with load_any_model). `file` must outlive the result.
inline std::optional<OpenedGpt> open_gpt_checkpoint(
    const SafetensorsFile& file, const std::optional<std::filesystem::path>& config = {}) {
  const Layout layout = detect_layout(file, config);
  if (layout == Layout::HfGpt2) {
    const std::filesystem::path path =
        hf_config_path("load_model", file.path(), config, layout_name(layout), "--config");
    const TransformerConfig c = gpt2_config_from_json(read_json_file(path), path.string());
    return OpenedGpt{GptCheckpoint<Arch::PreLN>(file, detail::gpt2_checked_config(file, c),
                                                detail::gpt2_prefix(file)),
                     layout, hf_gpt2_dtype(file, c), path, std::nullopt};
  }
  if (layout != Layout::Prenorm) return std::nullopt;
  const PrenormMetadata meta = read_prenorm_metadata(file);
  if (meta.kind != ModelKind::Gpt) return std::nullopt;
  const Dtype dtype = prenorm_dtype(file);
  const auto open = [&]<Arch A>() -> AnyGptCheckpoint {
    const TransformerConfig& c = meta.gpt;
    detail::check_tensors("prenorm_layout", file, [&] {
      std::vector<ExpectedTensor> expected = gpt_parameter_shapes<A>(c);
      for (ExpectedTensor& t : expected) t.name = prenorm_tensor_name(t.name);
      return expected;
    }(), {}, "metadata: gpt, " + std::string(arch_name(A)) + ", layers " +
                 std::to_string(c.layers) + ", width " + std::to_string(c.width));
    return GptCheckpoint<A>(file, c, std::nullopt);
  };
  AnyGptCheckpoint checkpoint = meta.arch == Arch::PreLN ? open.template operator()<Arch::PreLN>()
                                : meta.arch == Arch::PreRMSNorm
                                    ? open.template operator()<Arch::PreRMSNorm>()
                                    : open.template operator()<Arch::PreCRMSNorm>();
  return OpenedGpt{std::move(checkpoint), layout, dtype, std::nullopt, meta.converted_from};
}

namespace detail {

// The tensors of the converted model (the source's, re-saved, when From ==
// To), produced one at a time in file order (visit_parameters order) for a
// SafetensorsStreamWriter.
template <Arch From, Arch To>
class GptStreamConversion {
 public:
  using Target = Gpt<To, double>;

  GptStreamConversion(const GptCheckpoint<From>& source, const ConvertOptions& options, Index rows)
      : source_(&source),
        options_(options),
        rows_(From == Arch::PreRMSNorm && From != To ? source.config().vocab : rows),
        // The target's config (tied, head bias), position table and final
        // affines, which do not depend on the vocabulary: from a shell of one chunk.
        small_(convert_rows(0, std::min(rows_, source.config().vocab))) {
    config_ = small_.config;
    config_.layers = source.config().layers;
    config_.vocab = source.config().vocab;
    shapes_ = gpt_parameter_shapes<To>(config_);
  }

  const TransformerConfig& config() const { return config_; }
  const std::vector<ExpectedTensor>& shapes() const { return shapes_; }

  // Writes parameter i (of shapes()) in `dtype`.
  void write(std::size_t i, Dtype dtype, TensorDataSink& sink) {
    const std::string& name = shapes_[i].name;
    const auto put = [&](const std::string& n, const auto& t) {
      if (n == name) sink.put(dtype, std::span<const double>(t.data(), std::size_t(t.size())));
    };
    if (name == "head_bias" && head_bias_.size() == config_.vocab) {
      put(name, head_bias_);  // kept from the head's chunks, which it follows
    } else if (name == "token_embedding.table" || name == "head.weight" || name == "head_bias") {
      // Chunks of rows, each converted through a shell of its own.
      if (name == "head.weight" && config_.head_bias) head_bias_.resize(config_.vocab);
      for (Index first = 0; first < config_.vocab; first += rows_) {
        const Index count = std::min(rows_, config_.vocab - first);
        const Target chunk = convert_rows(first, count, /*positions=*/false);
        chunk.visit_parameters(put);
        if (name == "head.weight" && config_.head_bias) head_bias_.segment(first, count) = chunk.head_bias;
      }
    } else if (name.rfind("blocks[", 0) == 0) {
      const std::string prefix = name.substr(0, name.find("].") + 2);  // "blocks[i]."
      const Index layer = std::stoll(prefix.substr(7));
      if (layer != layer_) {
        block_ = convert_block(layer, prefix);
        layer_ = layer;
      }
      visit_block_parameters(prefix, block_, put);
    } else {
      small_.visit_parameters(put);
    }
  }

 private:
  Target convert_rows(Index first, Index count, bool positions = true) const {
    if constexpr (From == To) return source_->shell(first, count, positions);
    else return prenorm::convert<To>(source_->shell(first, count, positions), options_);
  }

  typename Target::Block convert_block(Index layer, const std::string& prefix) const {
    if constexpr (From == To) {
      return source_->block(layer);
    } else {
      typename Target::Block block = small_.make_block(layer);
      conversion::detail::convert_block<From, To>(source_->block(layer), block,
                                                  prefix.substr(0, prefix.size() - 1), options_,
                                                  "convert");
      return block;
    }
  }

  const GptCheckpoint<From>* source_;
  ConvertOptions options_;
  Index rows_;
  Target small_;
  TransformerConfig config_;
  std::vector<ExpectedTensor> shapes_;
  Index layer_ = -1;  // the block in block_
  typename Target::Block block_;
  Vector<double> head_bias_;  // (vocab) once the head is written, when there is a head bias
};

}  // namespace detail

// Where convert_gpt_streaming writes: one file, or a sharded checkpoint.
struct StreamOutput {
  std::filesystem::path path;                     // the file, or the index when sharded
  bool sharded = false;
  std::uint64_t max_shard_size = 5'000'000'000;   // tensor bytes per shard
  std::vector<std::filesystem::path> inputs = {}; // files the write must not replace
};

// Converts `source` to architecture `to` (the same architecture: re-saved
// unchanged) and writes it in prenorm's layout in `dtype`, as
// save_prenorm(convert<To>(model), dtype, save) would, bitwise, group by
// group (see the top of this file), where where(bytes of tensor data,
// tensors) says. Returns the files written (the index first when sharded).
// `rows`: token-table and head rows per chunk.
template <Arch From>
std::vector<std::filesystem::path> convert_gpt_streaming(
    const GptCheckpoint<From>& source, Arch to, Dtype dtype,
    const std::function<StreamOutput(std::uint64_t, std::size_t)>& where,
    const ConvertOptions& options = {}, const PrenormSaveOptions& save = {},
    Index rows = kStreamRows) {
  const auto run = [&]<Arch To>() {
    detail::GptStreamConversion<From, To> conversion(source, options, rows);
    SafetensorsWriter metadata;
    detail::gpt_metadata(metadata, To, conversion.config(), save);
    std::vector<TensorEntry> entries;
    for (const ExpectedTensor& t : conversion.shapes()) {
      std::uint64_t count = 1;
      for (std::int64_t n : t.shape) count *= std::uint64_t(n);
      entries.push_back({prenorm_tensor_name(t.name), dtype, t.shape, count * dtype_size(dtype)});
    }
    const SafetensorsStreamWriter writer(metadata.metadata(), std::move(entries));
    const SafetensorsStreamWriter::Producer produce = [&](std::size_t i, TensorDataSink& sink) {
      conversion.write(i, dtype, sink);
    };
    const StreamOutput output = where(writer.data_size(), writer.size());
    if (output.sharded)
      return writer.write_sharded(output.path, output.max_shard_size, produce, output.inputs);
    writer.write(output.path, produce, output.inputs);
    return std::vector<std::filesystem::path>{output.path};
  };
  switch (to) {
    case Arch::PreLN: return run.template operator()<Arch::PreLN>();
    case Arch::PreRMSNorm: return run.template operator()<Arch::PreRMSNorm>();
    case Arch::PreCRMSNorm: return run.template operator()<Arch::PreCRMSNorm>();
    default: break;
  }
  prenorm::detail::fail("convert_gpt_streaming", "target architecture ", arch_name(to),
                        " is not PreLN, PreRMSNorm or PreCRMSNorm");
}

// The logits [ids.size() x vocab] of the model on one sequence `ids`, in
// double, with one block in memory at a time: the embeddings through a shell
// of the ids' rows, each block on its own (PreNormBlock::forward), the final
// norm, then the head in chunks of `rows` vocabulary rows. The same
// operations as Gpt::forward up to the fusion of the residual adds.
template <Arch A>
RowMatrix<double> probe_logits(const GptCheckpoint<A>& model, const std::vector<int>& ids,
                               Index rows = kStreamRows) {
  const TransformerConfig& c = model.config();
  const Index T = Index(ids.size());
  std::vector<Index> id_rows(ids.begin(), ids.end());
  std::vector<int> local(ids.size());
  for (std::size_t t = 0; t < ids.size(); ++t) local[t] = int(t);
  RowMatrix<double> h;
  typename GptCheckpoint<A>::Block::Main x, branch;
  Vector<double> final_gamma, final_beta;
  {
    const Gpt<A, double> shell = model.shell(id_rows);
    Session<A, double> session(shell);
    const typename Gpt<A, double>::BlockHook hook = [&](Index i, const RowMatrix<double>& main) {
      if (i == -1) h = main;
    };
    session.forward_hidden(TokenBatch{local, 1, T}, &hook);
    final_gamma = shell.final_gamma;
    final_beta = shell.final_beta;
  }
  BlockWorkspace<double> ws;
  for (Index i = 0; i < c.layers; ++i) model.block(i).forward(h, 1, ws, x, branch);
  x.resize(h.rows(), h.cols());
  ArchTraits<A>::forward(h, final_gamma, final_beta, x, c.epsilon);
  RowMatrix<double> logits(T, c.vocab);
  for (Index first = 0; first < c.vocab; first += rows) {
    const Index count = std::min(rows, c.vocab - first);
    const Gpt<A, double> shell = model.shell(first, count, /*positions=*/false);
    Session<A, double> session(shell);
    logits.middleCols(first, count) = session.head_forward(x);
  }
  return logits;
}

}  // namespace prenorm::io
