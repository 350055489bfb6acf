// The host side of the runner: random problems and their reference; device objects without a GPU.

#include "nsa/jit/runner.hpp"

#include <gtest/gtest.h>

#include "nsa/jit/device.hpp"

using namespace nsa::jit;

namespace {
SelectionShape small_shape() {
  SelectionShape s;
  s.batch = 2;
  s.t_q = 3;
  s.t_kv = 130;
  s.h_kv = 2;
  s.h = 4;
  s.d_qk = 32;
  s.d_v = 16;
  s.block = 32;
  s.n = 4;
  return s;
}
}  // namespace

TEST(HostProblem, RandomInputsHaveTheShapesSizesAndAreFreshNormals) {
  std::mt19937_64 rng(42);
  const auto s = small_shape();
  auto p = HostProblem::random(s, ElemType::fp16, SelectionPattern::random, rng);
  EXPECT_EQ(static_cast<std::int64_t>(p.q.size()), s.q_elems());
  EXPECT_EQ(static_cast<std::int64_t>(p.k.size()), s.k_elems());
  EXPECT_EQ(static_cast<std::int64_t>(p.v.size()), s.v_elems());
  EXPECT_EQ(static_cast<std::int64_t>(p.block_idx.size()), s.idx_elems());
  const auto k = decode(ElemType::fp16, p.k);
  double sum = 0, sq = 0;
  for (float x : k) sum += x, sq += double{x} * x;
  const double mean = sum / static_cast<double>(k.size()), var = sq / static_cast<double>(k.size()) - mean * mean;
  EXPECT_NEAR(mean, 0, 0.1);
  EXPECT_NEAR(var, 1, 0.15);
  auto again = HostProblem::random(s, ElemType::fp16, SelectionPattern::random, rng);
  EXPECT_NE(again.k, p.k) << "the next draw must give new inputs";
}

TEST(HostProblem, ReferenceRunsOnTheDecodedInputsAndCostCountsVisibleKeys) {
  std::mt19937_64 rng(43);
  const auto s = small_shape();
  auto p = HostProblem::random(s, ElemType::bf16, SelectionPattern::random, rng);
  auto r = p.reference();
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(static_cast<std::int64_t>(r->o.size()), s.o_elems());
  // p(t) = 127, 128, 129: blocks 0..3 hold 128 keys for row 0; rows 1 and 2 also see block 4 (1, 2 keys)
  // when selected. Every row selects block 0 and its two most recent blocks, all fully visible but
  // the one holding p(t), so the cost lies between these bounds.
  const double per_key = s.h * (s.d_qk + s.d_v);
  const double rows = static_cast<double>(s.batch * s.h_kv * s.t_q);
  EXPECT_GE(p.reference_cost(), rows * (2 * 32 + 1) * per_key);
  EXPECT_LE(p.reference_cost(), rows * s.n * s.block * per_key);
}

TEST(DeviceProblem, WithoutADriverAllocationFailsWithTheReason) {
  auto probe = probe_devices();
  if (probe.available()) GTEST_SKIP() << "this host has a GPU";
  auto d = DeviceProblem::allocate(small_shape(), ElemType::bf16);
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message().find(probe.problem), std::string::npos) << d.error().message();
}
