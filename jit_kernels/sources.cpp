// Lookups in the table that cmake/embed_sources.cmake generates at build time.

#include "nsa/jit/sources.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>

namespace nsa::jit {
namespace detail {
extern const EmbeddedSource kEmbeddedSources[];
extern const std::size_t kEmbeddedSourceCount;
}  // namespace detail

std::span<const EmbeddedSource> embedded_sources() {
  // The generator writes entries sorted by name (list(SORT)), which find_source relies on.
  return {detail::kEmbeddedSources, detail::kEmbeddedSourceCount};
}

std::optional<std::string_view> find_source(std::string_view name) {
  for (const auto& s : embedded_sources())
    if (s.name == name) return s.text;
  return std::nullopt;
}

std::string source_text_hash(std::string_view text) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

}  // namespace nsa::jit
