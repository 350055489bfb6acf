// The selection patterns the GPU tests and the benchmark feed to kernels.

#include "nsa/jit/selection_patterns.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

using namespace nsa::jit;

namespace {

SelectionShape shape(std::int64_t t_q, std::int64_t t_kv, int block, int n, std::int64_t h_kv = 2) {
  SelectionShape s;
  s.batch = 2;
  s.t_q = t_q;
  s.t_kv = t_kv;
  s.h_kv = h_kv;
  s.h = 1;
  s.block = block;
  s.n = n;
  return s;
}

std::vector<std::int32_t> row(const SelectionShape& s, const std::vector<std::int32_t>& idx, std::int64_t b,
                              std::int64_t g, std::int64_t t) {
  auto first = idx.begin() + ((b * s.h_kv + g) * s.t_q + t) * s.n;
  return {first, first + s.n};
}

}  // namespace

TEST(SelectionPatterns, RandomRowsHoldBlockZeroTheTwoRecentBlocksAndDistinctEarlierOnes) {
  std::mt19937_64 rng(1);
  auto s = shape(3, 4096, 64, 16);
  auto idx = make_block_idx(s, SelectionPattern::random, rng);
  ASSERT_EQ(idx.size(), static_cast<std::size_t>(s.idx_elems()));
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t g = 0; g < s.h_kv; ++g)
      for (std::int64_t t = 0; t < s.t_q; ++t) {
        auto r = row(s, idx, b, g, t);
        const std::int64_t last = s.position(t) / s.block;
        std::set<std::int32_t> distinct(r.begin(), r.end());
        EXPECT_EQ(distinct.size(), r.size()) << "entries must be distinct";
        EXPECT_TRUE(distinct.count(0));
        EXPECT_TRUE(distinct.count(static_cast<std::int32_t>(last)));
        EXPECT_TRUE(distinct.count(static_cast<std::int32_t>(last - 1)));
        for (auto c : r) EXPECT_TRUE(c >= 0 && c <= last) << c;
      }
}

TEST(SelectionPatterns, RowsAreUnsorted) {
  std::mt19937_64 rng(2);
  auto s = shape(8, 8192, 64, 16);
  auto idx = make_block_idx(s, SelectionPattern::random, rng);
  int unsorted = 0;
  for (std::int64_t t = 0; t < s.t_q; ++t) {
    auto r = row(s, idx, 0, 0, t);
    if (!std::is_sorted(r.begin(), r.end())) ++unsorted;
  }
  EXPECT_GT(unsorted, 0);
}

TEST(SelectionPatterns, ShortContextsFillTheRestWithMinusOne) {
  std::mt19937_64 rng(3);
  auto s = shape(1, 130, 64, 8);  // p = 129: blocks 0, 1, 2 visible
  auto idx = make_block_idx(s, SelectionPattern::random, rng);
  auto r = row(s, idx, 1, 1, 0);
  EXPECT_EQ(std::count(r.begin(), r.end(), -1), 5);
  std::set<std::int32_t> valid;
  for (auto c : r)
    if (c >= 0) valid.insert(c);
  EXPECT_EQ(valid, (std::set<std::int32_t>{0, 1, 2}));
}

TEST(SelectionPatterns, ClusteredRowsOfOneBlockShareMostOfTheirSelection) {
  std::mt19937_64 rng(4);
  auto s = shape(64, 64 * 256, 64, 16, 1);  // all 64 query rows lie in the last block
  auto idx = make_block_idx(s, SelectionPattern::clustered, rng);
  auto base = row(s, idx, 0, 0, 0);
  std::set<std::int32_t> base_set(base.begin(), base.end());
  for (std::int64_t t = 1; t < s.t_q; ++t) {
    auto r = row(s, idx, 0, 0, t);
    int shared = 0;
    for (auto c : r) shared += static_cast<int>(base_set.count(c));
    EXPECT_GE(shared, s.n - 4) << "row " << t;  // each row swaps at most two of a shared set
  }
  // A random pattern over the same shape shares far less.
  auto rnd = make_block_idx(s, SelectionPattern::random, rng);
  auto r0 = row(s, rnd, 0, 0, 0), r1 = row(s, rnd, 0, 0, 1);
  std::set<std::int32_t> s0(r0.begin(), r0.end());
  int shared = 0;
  for (auto c : r1) shared += static_cast<int>(s0.count(c));
  EXPECT_LT(shared, s.n - 4);
}

TEST(SelectionPatterns, EdgeCaseOptionsAddFutureBlocksEmptySlotsAndEmptyRows) {
  std::mt19937_64 rng(5);
  auto s = shape(4, 1000, 64, 8);
  PatternOptions opt;
  opt.future_blocks = 2;
  opt.empty_rows_every = 3;
  auto idx = make_block_idx(s, SelectionPattern::random, rng, opt);
  std::int64_t row_number = 0;
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t g = 0; g < s.h_kv; ++g)
      for (std::int64_t t = 0; t < s.t_q; ++t, ++row_number) {
        auto r = row(s, idx, b, g, t);
        if (row_number % 3 == 0) {
          EXPECT_EQ(std::count(r.begin(), r.end(), -1), s.n);
          continue;
        }
        const std::int64_t last = s.position(t) / s.block;
        EXPECT_EQ(std::count_if(r.begin(), r.end(), [&](auto c) { return c > last; }), 2);
        std::set<std::int32_t> valid;
        for (auto c : r) {
          if (c >= 0) {
            EXPECT_TRUE(valid.insert(c).second) << "duplicate " << c;
          }
        }
      }

  PatternOptions holes;
  holes.empty_fraction = 0.5;
  auto with_holes = make_block_idx(shape(1, 1 << 16, 64, 32), SelectionPattern::random, rng, holes);
  const auto empties = std::count(with_holes.begin(), with_holes.end(), -1);
  EXPECT_GT(empties, 0);
  EXPECT_LT(empties, static_cast<std::ptrdiff_t>(with_holes.size()));
}

TEST(SelectionPatterns, NamesParse) {
  EXPECT_EQ(parse_selection_pattern("random"), SelectionPattern::random);
  EXPECT_EQ(parse_selection_pattern("clustered"), SelectionPattern::clustered);
  EXPECT_FALSE(parse_selection_pattern("sorted"));
  EXPECT_EQ(to_string(SelectionPattern::clustered), "clustered");
}
