// bench/kernels/bench_support: shape parsing (with the per-shape pattern the selection report
// uses), useful work, and the NVRTC helper kernels (fill, L2 read) compiling without a GPU.

#include "bench_support.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

namespace {

using namespace nsa;

TEST(BenchShape, Defaults) {
  auto d = bench::parse_shape("decode");
  ASSERT_TRUE(d) << d.error();
  EXPECT_EQ(d->shape.batch, 64);
  EXPECT_EQ(d->shape.t_q, 1);
  EXPECT_FALSE(d->pattern);
  auto p = bench::parse_shape("prefill");
  ASSERT_TRUE(p) << p.error();
  EXPECT_EQ(p->shape.t_q, 8192);
  EXPECT_EQ(p->shape.t_kv, 8192);
}

TEST(BenchShape, Issue5CasesParse) {
  // What bench/selection_report.py passes: the NSA paper config and a per-shape pattern.
  auto s = bench::parse_shape("b=1,tq=32768,tkv=32768,hq=64,hkv=4,dqk=192,dv=128,block=64,n=16,dtype=bf16,pattern=clustered");
  ASSERT_TRUE(s) << s.error();
  EXPECT_EQ(s->shape.batch, 1);
  EXPECT_EQ(s->shape.t_q, 32768);
  EXPECT_EQ(s->shape.h_kv, 4);
  EXPECT_EQ(s->shape.h, 16);
  EXPECT_EQ(s->shape.d_qk, 192);
  EXPECT_EQ(s->shape.d_v, 128);
  ASSERT_TRUE(s->pattern);
  EXPECT_EQ(*s->pattern, jit::SelectionPattern::clustered);
  EXPECT_EQ(s->name, "b=1,tq=32768,tkv=32768,hq=64,hkv=4,dqk=192,dv=128,block=64,n=16,dtype=bf16,pattern=clustered");
  auto r = bench::parse_shape("b=128,tq=1,tkv=32768,pattern=random");
  ASSERT_TRUE(r) << r.error();
  EXPECT_EQ(*r->pattern, jit::SelectionPattern::random);
}

TEST(BenchShape, Errors) {
  auto bad = bench::parse_shape("b=1,pattern=sorted");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().find("random or clustered"), std::string::npos) << bad.error();
  auto unknown = bench::parse_shape("b=1,colour=3");
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().find("pattern"), std::string::npos) << unknown.error();  // listed among the keys
  EXPECT_FALSE(bench::parse_shape("hq=6,hkv=4"));
  EXPECT_FALSE(bench::parse_shape("b=0"));
}

TEST(BenchUsefulWork, FullDecodeSelection) {
  auto s = bench::parse_shape("b=2,tq=1,tkv=4096,hq=8,hkv=2,d=64,block=64,n=4");
  ASSERT_TRUE(s) << s.error();
  std::vector<std::int32_t> idx;
  for (int row = 0; row < 4; ++row)
    for (int c : {0, 10, 62, 63}) idx.push_back(c);
  const auto w = bench::useful_work(s->shape, idx);
  EXPECT_EQ(w.visible_keys, 4 * 4 * 64);
  EXPECT_DOUBLE_EQ(w.kv_bytes, 4.0 * 4 * 64 * 128 * 2);
  EXPECT_DOUBLE_EQ(w.flops, 4.0 * 1 * 8 * 4 * 64 * 64 * 2);  // 4 * B * T_q * H_q * n * block * D, B=2
}

TEST(BenchSummary, MedianAndPercentiles) {
  std::vector<double> v{5, 1, 4, 2, 3};
  const auto s = bench::summarize(v);
  EXPECT_DOUBLE_EQ(s.median, 3);
  EXPECT_DOUBLE_EQ(s.p10, 1.4);
  EXPECT_DOUBLE_EQ(s.p90, 4.6);
}

TEST(BenchCompareBits, AgreesWithJitCompareOnAnyThreadCount) {
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  const std::size_t n = (std::size_t{3} << 20) + 17;  // several chunks of unequal size
  std::vector<double> ref(n);
  std::vector<float> got(n);
  for (std::size_t i = 0; i < n; ++i) {
    ref[i] = normal(rng);
    got[i] = static_cast<float>(ref[i] + 1e-3 * normal(rng));
  }
  got[5] = NAN;                                               // a NaN where the reference is finite
  ref[9] = -std::numeric_limits<double>::infinity();          // -inf matched exactly: fine
  got[9] = -std::numeric_limits<float>::infinity();
  ref[11] = std::numeric_limits<double>::infinity();          // inf not matched: counted
  for (auto dtype : {jit::ElemType::bf16, jit::ElemType::fp16}) {
    const auto bits = jit::encode(dtype, got);
    const auto expected = jit::compare(jit::decode(dtype, bits), ref);
    for (unsigned threads : {1u, 3u, 0u}) {
      const auto a = bench::compare_bits(bits, dtype, ref, threads);
      EXPECT_EQ(a.nan_count, expected.nan_count) << threads;
      EXPECT_NEAR(a.rel_l2, expected.rel_l2, 1e-9 * expected.rel_l2) << threads;
    }
  }
  EXPECT_EQ(bench::compare_bits(std::vector<std::uint16_t>(3), jit::ElemType::bf16, std::vector<double>(4)).nan_count, 4);
  const std::vector<double> zeros(8, 0.0);
  EXPECT_EQ(bench::compare_bits(std::vector<std::uint16_t>(8, 0), jit::ElemType::bf16, zeros).rel_l2, 0);
}

TEST(BenchHelperKernels, EmptyLaunchTakesASelectionKernelsParametersAndCluster) {
  // SelectionParams by value (as 8-byte words), then each tensor map, 64-byte aligned; the
  // cluster width compiled in only where there is one.
  const std::string plain = bench::empty_launch_source(0, 0);
  EXPECT_NE(plain.find("w[" + std::to_string(sizeof(SelectionParams) / 8) + "]"), std::string::npos) << plain;
  EXPECT_EQ(plain.find("__cluster_dims__"), std::string::npos) << plain;
  EXPECT_EQ(plain.find("NsaMap m0"), std::string::npos) << plain;
  EXPECT_NE(plain.find(bench::empty_launch_entry(0, 0) + "("), std::string::npos) << plain;
  const std::string tma = bench::empty_launch_source(2, 4);
  EXPECT_NE(tma.find("__cluster_dims__(4, 1, 1)"), std::string::npos) << tma;
  EXPECT_NE(tma.find("NsaMap m0, const __grid_constant__ NsaMap m1)"), std::string::npos) << tma;
  EXPECT_NE(bench::empty_launch_entry(2, 4), bench::empty_launch_entry(2, 0));
  EXPECT_EQ(bench::empty_launch_entry(2, 1), bench::empty_launch_entry(2, 0));  // width 1 is no cluster
}

TEST(BenchHelperKernels, CompileWithNvrtc) {
  for (const char* arch : {"sm_80", "sm_90"}) {
    const auto error = bench::helper_kernels_compile_error(arch);
    EXPECT_FALSE(error) << arch << ": " << *error;
  }
}

}  // namespace
