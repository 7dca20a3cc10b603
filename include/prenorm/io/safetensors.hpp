#pragma once
// Reading and writing safetensors files (https://github.com/huggingface/safetensors):
//
//   dtype.hpp                 Dtype (F64, F32, F16, BF16) and the safetensors dtype table
//   safetensors_header.hpp    the format, and the parsing and validation of a header
//   safetensors_reader.hpp    SafetensorsFile: a validated file and its tensors
//   safetensors_writer.hpp    SafetensorsWriter: tensors and metadata -> a file
//
// (with utf8.hpp and mapped_file.hpp underneath). This header includes them all.

#include "dtype.hpp"
#include "safetensors_header.hpp"
#include "safetensors_reader.hpp"
#include "safetensors_writer.hpp"
