// Lookups in the table that cmake/embed_sources.cmake generates at build time.

#include "nsa/jit/sources.hpp"

#include <cstddef>

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

}  // namespace nsa::jit
