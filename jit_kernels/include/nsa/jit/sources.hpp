#pragma once
// The kernel sources compiled into every binary. At build time a CMake step
// (jit_kernels/cmake/embed_sources.cmake) turns each jit_kernels/kernels/*.cu and *.cuh into an
// entry of a generated table, so a binary carried to a GPU host without the repository, or
// without CUDA headers, still has every source NVRTC needs. Editing a kernel file regenerates
// the table on the next build.

#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace nsa::jit {

/// One embedded file: its file name (no directory, e.g. "common.cuh") and its full text.
struct EmbeddedSource {
  std::string_view name;
  std::string_view text;
};

/// Every embedded file, sorted by name. The storage is static: views stay valid for the life
/// of the process.
std::span<const EmbeddedSource> embedded_sources();

/// The text of the embedded file called `name` ("query_outer.cu"); nullopt when there is none.
std::optional<std::string_view> find_source(std::string_view name);

/// FNV-1a 64 of `text` as 16 lower-case hex digits: the hash that names a version of kernel
/// source text in cache keys and device classes (stable across builds and hosts).
std::string source_text_hash(std::string_view text);

}  // namespace nsa::jit
