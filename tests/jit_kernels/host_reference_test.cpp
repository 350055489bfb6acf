// The host reference against cases small enough to work out by hand, the half-precision
// conversions against their bit patterns, and the error metrics against hand sums.

#include "nsa/jit/host_reference.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "nsa/jit/selection_patterns.hpp"

using namespace nsa::jit;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

SelectionShape tiny(std::int64_t t_q, std::int64_t t_kv, int d, int block, int n, std::int64_t h_kv = 1, int h = 1) {
  SelectionShape s;
  s.batch = 1;
  s.t_q = t_q;
  s.t_kv = t_kv;
  s.h_kv = h_kv;
  s.h = h;
  s.d_qk = d;
  s.d_v = d;
  s.block = block;
  s.n = n;
  return s;
}

ReferenceOutput run(const SelectionShape& s, const std::vector<float>& q, const std::vector<float>& k,
                    const std::vector<float>& v, const std::vector<std::int32_t>& idx) {
  auto r = selection_reference(s, q, k, v, idx);
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error());
  return r ? *r : ReferenceOutput{};
}

}  // namespace

TEST(HostReference, SingleVisibleKeyReturnsItsValueAndScore) {
  // T_kv = 3, block 2: block 1 holds keys 2 and 3, but key 3 does not exist, so only key 2 is seen.
  auto s = tiny(1, 3, 2, 2, 2);
  std::vector<float> q = {1, 2};
  std::vector<float> k = {9, 9, 9, 9, 0.5f, -1};
  std::vector<float> v = {7, 7, 7, 7, 3, -4};
  auto r = run(s, q, k, v, {-1, 1});
  EXPECT_DOUBLE_EQ(r.o[0], 3);
  EXPECT_DOUBLE_EQ(r.o[1], -4);
  // s = (1*0.5 + 2*-1) / sqrt(2) = -1.5 / 1.41421356 = -1.06066017 (the scale is a float, as in
  // SelectionParams, hence the 1e-7 tolerance)
  EXPECT_NEAR(r.lse[0], -1.06066017, 1e-7);
}

TEST(HostReference, TwoKeysMatchHandComputedSoftmax) {
  // s0 = 1/sqrt(2) = 0.70710678, s1 = 0; e^s0 = 2.02811498; sum = 3.02811498.
  // w0 = 0.66976155, w1 = 0.33023845; O = w0 * (2, 0) + w1 * (0, 4); LSE = ln 3.02811498 = 1.10794031.
  auto s = tiny(1, 2, 2, 2, 1);
  auto r = run(s, {1, 0}, {1, 0, 0, 0}, {2, 0, 0, 4}, {0});
  EXPECT_NEAR(r.o[0], 2 * 0.66976155, 1e-7);
  EXPECT_NEAR(r.o[1], 4 * 0.33023845, 1e-7);
  EXPECT_NEAR(r.lse[0], 1.10794031, 1e-7);
}

TEST(HostReference, CausalLimitCutsTheBlockHoldingTheQueryPosition) {
  // T_q = 2 rows at positions p = 2 and 3 of T_kv = 4, one block of 4 keys. Q = 0 makes every
  // score 0, so O is the mean of the visible values and LSE = ln(count).
  auto s = tiny(2, 4, 1, 4, 1);
  auto r = run(s, {0, 0}, {1, 2, 3, 4}, {10, 20, 30, 40}, {0, 0});
  EXPECT_DOUBLE_EQ(r.o[0], 20);  // keys 0..2
  EXPECT_DOUBLE_EQ(r.o[1], 25);  // keys 0..3
  EXPECT_NEAR(r.lse[0], std::log(3.0), 1e-15);
  EXPECT_NEAR(r.lse[1], std::log(4.0), 1e-15);
}

TEST(HostReference, KeysPastTkvAreInvisibleWhenTkvIsNotAMultipleOfTheBlock) {
  // T_kv = 6, block 4, decode at p = 5: block 1 covers keys 4..7 of which 4 and 5 exist.
  auto s = tiny(1, 6, 1, 4, 1);
  auto r = run(s, {0}, {0, 0, 0, 0, 0, 0}, {1, 1, 1, 1, 6, 8}, {1});
  EXPECT_DOUBLE_EQ(r.o[0], 7);
  EXPECT_NEAR(r.lse[0], std::log(2.0), 1e-15);
}

TEST(HostReference, EmptyRowsGiveZeroAndMinusInfinity) {
  // Row 0 (p = 2) selects only block 1 (keys 4..7), wholly after p; row 1 is all -1; row 2
  // (p = 4) sees key 4 of block 1.
  auto s = tiny(3, 5, 1, 4, 2);
  auto r = run(s, {1, 1, 1}, {1, 1, 1, 1, 1}, {5, 5, 5, 5, 9}, {1, -1, -1, -1, -1, 1});
  EXPECT_EQ(r.o[0], 0.0);
  EXPECT_EQ(r.lse[0], -kInf);
  EXPECT_EQ(r.o[1], 0.0);
  EXPECT_EQ(r.lse[1], -kInf);
  EXPECT_DOUBLE_EQ(r.o[2], 9);
  EXPECT_DOUBLE_EQ(r.lse[2], 1.0);  // one key, score 1 * 1 / sqrt(1)
}

TEST(HostReference, SlotOrderAndEmptySlotPositionsDoNotChangeTheResult) {
  std::mt19937_64 rng(7);
  auto s = tiny(1, 16, 4, 4, 3);
  std::vector<float> q(4), k(64), v(64);
  fill_normal(q, rng);
  fill_normal(k, rng);
  fill_normal(v, rng);
  auto a = run(s, q, k, v, {3, -1, 1});
  auto b = run(s, q, k, v, {-1, 1, 3});
  for (std::size_t i = 0; i < a.o.size(); ++i) EXPECT_NEAR(a.o[i], b.o[i], 1e-12);
  EXPECT_NEAR(a.lse[0], b.lse[0], 1e-12);
}

TEST(HostReference, QueryHeadsUseTheirGroupsKeysValuesAndSelection) {
  // H_kv = 2 groups of h = 2 heads. Group 0 selects block 0 (key 0), group 1 selects block 1
  // (key 1). Heads 0, 1 must see V[key 0, group 0]; heads 2, 3 V[key 1, group 1].
  auto s = tiny(1, 2, 1, 1, 1, 2, 2);
  std::vector<float> q = {1, 1, 1, 1};
  std::vector<float> k = {0, 0, 0, 0};           // [T_kv=2, H_kv=2, 1]
  std::vector<float> v = {11, 12, 21, 22};       // V[t, g]: 11 = (key 0, g 0), 22 = (key 1, g 1)
  auto r = run(s, q, k, v, {0, 1});              // [H_kv, T_q, n]
  EXPECT_DOUBLE_EQ(r.o[0], 11);
  EXPECT_DOUBLE_EQ(r.o[1], 11);
  EXPECT_DOUBLE_EQ(r.o[2], 22);
  EXPECT_DOUBLE_EQ(r.o[3], 22);
}

TEST(HostReference, DifferentValueAndKeyDimensionsAreHonoured) {
  auto s = tiny(1, 1, 3, 1, 1);
  s.d_v = 2;
  auto r = run(s, {1, 1, 1}, {1, 1, 1}, {4, 5}, {0});
  ASSERT_EQ(r.o.size(), 2u);
  EXPECT_DOUBLE_EQ(r.o[0], 4);
  EXPECT_DOUBLE_EQ(r.o[1], 5);
  EXPECT_NEAR(r.lse[0], 3 / std::sqrt(3.0), 1e-6);  // the scale uses D_qk (float)
}

TEST(HostReference, ExplicitScaleReplacesOneOverSqrtDqk) {
  auto s = tiny(1, 2, 1, 2, 1);
  s.scale = 2;
  auto r = run(s, {1}, {1, 0}, {1, 0}, {0});
  // s = (2, 0): w0 = e^2 / (e^2 + 1)
  EXPECT_NEAR(r.o[0], std::exp(2.0) / (std::exp(2.0) + 1), 1e-12);
  EXPECT_NEAR(r.lse[0], std::log(std::exp(2.0) + 1), 1e-12);
}

TEST(HostReference, Fp32AccumulationAgreesWithFp64) {
  std::mt19937_64 rng(11);
  auto s = tiny(4, 200, 32, 16, 4, 2, 3);
  s.batch = 2;
  std::vector<float> q(static_cast<std::size_t>(s.q_elems())), k(static_cast<std::size_t>(s.k_elems())),
      v(static_cast<std::size_t>(s.v_elems()));
  fill_normal(q, rng);
  fill_normal(k, rng);
  fill_normal(v, rng);
  auto idx = make_block_idx(s, SelectionPattern::random, rng);
  auto r64 = selection_reference(s, q, k, v, idx, Accumulate::fp64);
  auto r32 = selection_reference(s, q, k, v, idx, Accumulate::fp32);
  ASSERT_TRUE(r64 && r32);
  std::vector<float> o32(r32->o.begin(), r32->o.end());
  auto st = compare(o32, r64->o);
  EXPECT_LT(st.rel_l2, 1e-6) << st.describe();
  EXPECT_EQ(st.nan_count, 0);
}

TEST(HostReference, BadInputsAreRejectedWithTheReason) {
  auto s = tiny(1, 8, 1, 4, 2);
  std::vector<float> one(1), eight(8);
  auto r = selection_reference(s, one, eight, eight, std::vector<std::int32_t>{-2, 0});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("= -2"), std::string::npos) << r.error();
  EXPECT_NE(r.error().find("only -1 marks an empty slot"), std::string::npos) << r.error();

  r = selection_reference(s, one, eight, eight, std::vector<std::int32_t>{1, 1});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("twice"), std::string::npos) << r.error();

  r = selection_reference(s, one, std::vector<float>(7), eight, std::vector<std::int32_t>{0, 1});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("K has 7 elements"), std::string::npos) << r.error();

  auto bad = tiny(9, 8, 1, 4, 2);
  r = selection_reference(bad, std::vector<float>(9), eight, eight, std::vector<std::int32_t>(18, 0));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("T_q must not exceed T_kv"), std::string::npos) << r.error();
}

// Conversions ---------------------------------------------------------------------------------------

TEST(HalfConversion, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f), 0x3F80);      // halfway, even neighbour is 0x3F80
  EXPECT_EQ(float_to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);  // halfway, even neighbour is 0x3F82
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);  // just above halfway
  EXPECT_EQ(float_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds up to inf
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_FLOAT_EQ(bf16_to_float(0x4049), 3.140625f);
}

TEST(HalfConversion, Fp16RoundsToNearestEvenWithSubnormalsAndOverflow) {
  EXPECT_EQ(float_to_fp16(1.0f), 0x3C00);
  EXPECT_EQ(float_to_fp16(-2.0f), 0xC000);
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_fp16(65519.0f), 0x7BFF);
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7C00);          // halfway to 65536 rounds to inf
  EXPECT_EQ(float_to_fp16(0x1p-14f), 0x0400);          // smallest normal
  EXPECT_EQ(float_to_fp16(0x1p-24f), 0x0001);          // smallest subnormal
  EXPECT_EQ(float_to_fp16(0x1p-25f), 0x0000);          // halfway to 0x0001: ties to even
  EXPECT_EQ(float_to_fp16(1.5f * 0x1p-25f), 0x0001);
  EXPECT_EQ(float_to_fp16(3 * 0x1p-25f), 0x0002);      // halfway between 1 and 2 (x 2^-24): even is 2
  EXPECT_EQ(float_to_fp16(1.0f + 0x1p-11f), 0x3C00);   // halfway, even
  EXPECT_EQ(float_to_fp16(1.0f + 3 * 0x1p-11f), 0x3C02);
  EXPECT_EQ(float_to_fp16(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(fp16_to_float(float_to_fp16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_FLOAT_EQ(fp16_to_float(0x0001), 0x1p-24f);
  EXPECT_FLOAT_EQ(fp16_to_float(0x3555), 0.333251953125f);
}

TEST(HalfConversion, EveryNonNanBitPatternRoundTrips) {
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float f16 = fp16_to_float(bits), bf = bf16_to_float(bits);
    if (!std::isnan(f16)) {
      ASSERT_EQ(float_to_fp16(f16), bits) << std::hex << b;
    }
    if (!std::isnan(bf)) {
      ASSERT_EQ(float_to_bf16(bf), bits) << std::hex << b;
    }
  }
}

// Metrics -------------------------------------------------------------------------------------------

TEST(ErrorMetrics, RelL2AndAbsoluteErrorsMatchHandSums) {
  std::vector<float> got = {1, 2, 3};
  std::vector<double> ref = {1, 1, 3};
  auto st = compare(got, ref);
  EXPECT_EQ(st.count, 3);
  EXPECT_EQ(st.nan_count, 0);
  EXPECT_NEAR(st.rel_l2, 1 / std::sqrt(11.0), 1e-12);
  EXPECT_NEAR(st.mean_abs, 1.0 / 3, 1e-12);
  EXPECT_DOUBLE_EQ(st.max_abs, 1);
  EXPECT_EQ(st.max_abs_index, 1);
}

TEST(ErrorMetrics, NanAndSizeMismatchCanNeverPass) {
  std::vector<float> got = {1, std::numeric_limits<float>::quiet_NaN()};
  std::vector<double> ref = {1, 1};
  EXPECT_EQ(compare(got, ref).nan_count, 1);
  std::vector<float> shorter = {1};
  auto st = compare(shorter, ref);
  EXPECT_EQ(st.nan_count, 2);
  EXPECT_TRUE(std::isinf(st.rel_l2));
}

TEST(ErrorMetrics, LseMinusInfinityMustBeMatchedExactly) {
  std::vector<double> ref = {-kInf, 1.5};
  EXPECT_EQ(compare_lse(std::vector<float>{-INFINITY, 1.5f}, ref).inf_mismatches, 0);
  EXPECT_EQ(compare_lse(std::vector<float>{-1e30f, 1.5f}, ref).inf_mismatches, 1);
  EXPECT_EQ(compare_lse(std::vector<float>{-INFINITY, NAN}, ref).inf_mismatches, 1);
  EXPECT_NEAR(compare_lse(std::vector<float>{-INFINITY, 1.25f}, ref).max_abs, 0.25, 1e-7);
}

TEST(ErrorMetrics, EmptyRowViolationsCountNonZeroAndNan) {
  auto s = tiny(1, 4, 2, 4, 1, 1, 2);  // two heads, D_v = 2
  std::vector<double> lse = {-kInf, 0.5};  // head 0 empty, head 1 not
  EXPECT_EQ(empty_row_violations(s, std::vector<float>{0, -0.0f, 3, 4}, lse), 0);
  EXPECT_EQ(empty_row_violations(s, std::vector<float>{NAN, 1e-30f, 3, 4}, lse), 2);
}
