// Selection patterns for checks and benchmarks. See selection_patterns.hpp for the two models.
//
// Per row (b, g, t), with p = p(t) and last = p / block (the block holding p):
//   forced blocks, in priority order: last, 0, last - 1 (distinct, truncated to n);
//   the rest of the n slots: distinct blocks drawn from 1 .. last - 2;
//   slots that cannot be filled (fewer than n visible blocks): -1.
// Clustered rows share the draw of their (b, g, last) cluster and then swap up to two drawn
// blocks each. The edge-case options (-1 slots, blocks past p(t), all-empty rows) are applied
// last, then each row is shuffled.

#include "nsa/jit/selection_patterns.hpp"

#include <algorithm>
#include <map>

namespace nsa::jit {

std::string_view to_string(SelectionPattern p) { return p == SelectionPattern::random ? "random" : "clustered"; }

std::optional<SelectionPattern> parse_selection_pattern(std::string_view s) {
  if (s == "random") return SelectionPattern::random;
  if (s == "clustered") return SelectionPattern::clustered;
  return std::nullopt;
}

namespace {

bool contains(const std::vector<std::int32_t>& v, std::int32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

/// Appends up to `count` distinct blocks from [lo, hi] that are not in `row` yet.
void draw_distinct(std::vector<std::int32_t>& row, std::int64_t lo, std::int64_t hi, std::size_t count,
                   std::mt19937_64& rng) {
  if (hi < lo || count == 0) return;
  const std::int64_t range = hi - lo + 1;
  std::size_t free_in_range = static_cast<std::size_t>(range);
  for (auto x : row)
    if (x >= lo && x <= hi) --free_in_range;
  count = std::min(count, free_in_range);
  if (range <= static_cast<std::int64_t>(4 * (count + row.size()) + 16)) {
    // Small range: shuffle all candidates and take the first ones.
    std::vector<std::int32_t> all;
    for (std::int64_t x = lo; x <= hi; ++x)
      if (!contains(row, static_cast<std::int32_t>(x))) all.push_back(static_cast<std::int32_t>(x));
    std::shuffle(all.begin(), all.end(), rng);
    row.insert(row.end(), all.begin(), all.begin() + static_cast<std::ptrdiff_t>(count));
    return;
  }
  std::uniform_int_distribution<std::int64_t> pick(lo, hi);
  while (count > 0) {
    const auto x = static_cast<std::int32_t>(pick(rng));
    if (contains(row, x)) continue;
    row.push_back(x);
    --count;
  }
}

std::vector<std::int32_t> forced_blocks(std::int64_t last, int n) {
  std::vector<std::int32_t> row;
  for (std::int64_t c : {last, std::int64_t{0}, last - 1})
    if (c >= 0 && static_cast<int>(row.size()) < n && !contains(row, static_cast<std::int32_t>(c)))
      row.push_back(static_cast<std::int32_t>(c));
  return row;
}

}  // namespace

std::vector<std::int32_t> make_block_idx(const SelectionShape& s, SelectionPattern pattern, std::mt19937_64& rng,
                                         const PatternOptions& opt) {
  std::vector<std::int32_t> idx(static_cast<std::size_t>(s.idx_elems()), -1);
  const std::int64_t blocks_in_kv = (s.t_kv + s.block - 1) / s.block;
  std::bernoulli_distribution empty_slot(std::clamp(opt.empty_fraction, 0.0, 1.0));
  std::int64_t row_number = 0;
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t g = 0; g < s.h_kv; ++g) {
      std::map<std::int64_t, std::vector<std::int32_t>> clusters;  // last block -> shared draw
      for (std::int64_t t = 0; t < s.t_q; ++t, ++row_number) {
        const std::int64_t last = s.position(t) / s.block;
        std::vector<std::int32_t> row;
        if (pattern == SelectionPattern::random) {
          row = forced_blocks(last, s.n);
          draw_distinct(row, 1, last - 2, static_cast<std::size_t>(s.n) - row.size(), rng);
        } else {
          auto [it, fresh] = clusters.try_emplace(last);
          if (fresh) {
            it->second = forced_blocks(last, s.n);
            draw_distinct(it->second, 1, last - 2, static_cast<std::size_t>(s.n) - it->second.size(), rng);
          }
          row = it->second;
          const std::size_t forced = forced_blocks(last, s.n).size();
          // Swap up to two of the drawn (not forced) blocks for other earlier blocks.
          const int swaps = std::uniform_int_distribution<int>(0, 2)(rng);
          for (int k = 0; k < swaps && row.size() > forced; ++k) {
            const std::size_t victim =
                forced + std::uniform_int_distribution<std::size_t>(0, row.size() - forced - 1)(rng);
            std::vector<std::int32_t> others = row;
            draw_distinct(others, 1, last - 2, 1, rng);
            if (others.size() > row.size()) row[victim] = others.back();
          }
        }
        row.resize(static_cast<std::size_t>(s.n), -1);

        // Edge cases.
        if (opt.future_blocks > 0) {
          std::vector<std::int32_t> valid;
          for (auto c : row)
            if (c >= 0) valid.push_back(c);
          std::vector<std::int32_t> future = valid;
          draw_distinct(future, last + 1, std::max(last + 1, blocks_in_kv - 1) + 2,
                        static_cast<std::size_t>(std::min(opt.future_blocks, s.n)), rng);
          future.erase(future.begin(), future.begin() + static_cast<std::ptrdiff_t>(valid.size()));
          // Overwrite the last slots (after the shuffle below they may stand anywhere).
          for (std::size_t k = 0; k < future.size(); ++k) row[row.size() - 1 - k] = future[k];
        }
        if (opt.empty_fraction > 0)
          for (auto& c : row)
            if (empty_slot(rng)) c = -1;
        if (opt.empty_rows_every > 0 && row_number % opt.empty_rows_every == 0) std::fill(row.begin(), row.end(), -1);
        if (opt.shuffle) std::shuffle(row.begin(), row.end(), rng);
        std::copy(row.begin(), row.end(), idx.begin() + ((b * s.h_kv + g) * s.t_q + t) * s.n);
      }
    }
  return idx;
}

void fill_normal(std::span<float> out, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto& x : out) x = normal(rng);
}

}  // namespace nsa::jit
