#pragma once
// Selection patterns (block_idx tensors) for checks and benchmarks, modelled on what NSA's
// selector produces:
//   random:    block 0, the two most recent blocks (the one holding p(t) and the one before),
//              the rest drawn uniformly from the earlier blocks;
//   clustered: the query rows whose p(t) lies in one block share one random set of earlier
//              blocks, and each row swaps up to two of them for other earlier blocks.
// Real selections sit between the two. Rows are shuffled (kernels must not assume sorting);
// when fewer than n blocks are visible the remaining slots are -1. PatternOptions adds the
// spec's edge cases on top.

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "nsa/jit/host_reference.hpp"

namespace nsa::jit {

enum class SelectionPattern { random, clustered };
std::string_view to_string(SelectionPattern);
std::optional<SelectionPattern> parse_selection_pattern(std::string_view);

struct PatternOptions {
  bool shuffle = true;            // unsorted rows
  double empty_fraction = 0;      // probability that a slot is turned into -1
  int future_blocks = 0;          // slots per row replaced by blocks past p(t) (up to 2 beyond T_kv)
  int empty_rows_every = 0;       // > 0: every k-th row is all -1 (a row with no visible key)
};

/// A [B, H_kv, T_q, n] index tensor for `shape`. Valid entries in a row are distinct.
std::vector<std::int32_t> make_block_idx(const SelectionShape& shape, SelectionPattern pattern,
                                         std::mt19937_64& rng, const PatternOptions& options = {});

/// Fills `out` with standard normals (float), for fresh random inputs.
void fill_normal(std::span<float> out, std::mt19937_64& rng);

}  // namespace nsa::jit
