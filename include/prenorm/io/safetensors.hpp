#pragma once
// Reading and writing safetensors files (https://github.com/huggingface/safetensors):
//
//   dtype.hpp                 Dtype (F64, F32, F16, BF16) and the safetensors dtype table
//   safetensors_header.hpp    the format, and the parsing and validation of a header
//   safetensors_reader.hpp    SafetensorsFile: a validated file, or a sharded checkpoint
//                             (model.safetensors.index.json and its shards), and its tensors
//   safetensors_writer.hpp    SafetensorsWriter: tensors and metadata -> a file, or shards
//                             and an index (split, write_sharded)
//
// (with utf8.hpp, mapped_file.hpp, atomic_file.hpp and json_file.hpp
// underneath). This header includes them all.

#include "dtype.hpp"
#include "safetensors_header.hpp"
#include "safetensors_reader.hpp"
#include "safetensors_writer.hpp"
