// tuner/kernel_cache: compiled kernels kept in a real store file, found again after a restart,
// never served when stale; and `nsa-tunectl compile`'s precompilation.
// (Kept with the JIT tests because it exercises the compile pool end to end.)

#include "nsa/tuner/kernel_cache.hpp"

#include <gtest/gtest.h>

#include "nsa/jit/catalog.hpp"
#include "nsa/jit/device.hpp"
#include "../support/temp_dir.hpp"

using namespace nsa;

namespace {

jit::KernelVariant small_reference(const std::string& arch) {
  return jit::default_variant(jit::Design::reference, jit::FamilySpec{jit::ElemType::fp16, 64, 64, 2, 32, 2}, arch);
}

}  // namespace

TEST(StoreCubinCache, CompiledKernelsSurviveARestart) {
  test::TempDir dir;
  const auto db = dir.path() / "state.sqlite";
  std::vector<std::uint8_t> image;
  {
    auto store = cache::VerdictStore::open(db);
    ASSERT_TRUE(store) << store.error().message;
    tuner::StoreCubinCache cache(*store);
    jit::CompilePool pool(1, &cache);
    auto out = pool.compile(small_reference("sm_90"));
    ASSERT_TRUE(out.result) << out.result.error().message();
    EXPECT_FALSE(out.from_cache);
    EXPECT_TRUE(out.cache_error.empty()) << out.cache_error;
    EXPECT_EQ(store->kernel_count(), 1);
    image = out.result->image;
  }
  auto store = cache::VerdictStore::open(db);
  ASSERT_TRUE(store) << store.error().message;
  tuner::StoreCubinCache cache(*store);
  jit::CompilePool pool(1, &cache);
  auto again = pool.compile(small_reference("sm_90"));
  ASSERT_TRUE(again.result);
  EXPECT_TRUE(again.from_cache);
  EXPECT_EQ(pool.nvrtc_compiles(), 0u);
  EXPECT_EQ(again.result->image, image);
}

TEST(StoreCubinCache, AKeyDifferingInAnyPartIsNotServed) {
  test::TempDir dir;
  auto store = cache::VerdictStore::open(dir.path() / "state.sqlite");
  ASSERT_TRUE(store) << store.error().message;
  tuner::StoreCubinCache cache(*store);
  const auto key = jit::CubinKey::for_variant(small_reference("sm_90"));
  jit::Cubin cubin;
  cubin.image = {0x7f, 'E', 'L', 'F', 1, 2, 3};
  cubin.registers = 96;
  cubin.shared_bytes = 1024;
  cubin.spill_bytes = 8;
  ASSERT_TRUE(cache.put(key, cubin));
  auto hit = cache.get(key);
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->image, cubin.image);
  EXPECT_EQ(hit->registers, 96);
  EXPECT_EQ(hit->shared_bytes, 1024);
  EXPECT_EQ(hit->spill_bytes, 8);

  for (int part = 0; part < 4; ++part) {
    auto other = key;
    if (part == 0) other.arch = "sm_80";
    if (part == 1) other.source_hash = "0000000000000000";
    if (part == 2) other.options += " -G";
    if (part == 3) other.nvrtc_version = "12.9";
    EXPECT_FALSE(cache.get(other)) << "part " << part;
  }
}

TEST(StoreCubinCache, StoreWriteFailureIsReportedButTheCompileStands) {
  test::TempDir dir;
  const auto db = dir.path() / "state.sqlite";
  { ASSERT_TRUE(cache::VerdictStore::open(db)); }
  auto readonly = cache::VerdictStore::open_read_only(db);
  ASSERT_TRUE(readonly) << readonly.error().message;
  tuner::StoreCubinCache cache(*readonly);
  jit::CompilePool pool(1, &cache);
  auto out = pool.compile(small_reference("sm_90"));
  ASSERT_TRUE(out.result);
  EXPECT_NE(out.cache_error.find("could not store the cubin of"), std::string::npos) << out.cache_error;
}

TEST(Precompile, DefaultFamiliesAreThePaperConfigAndD128InBothDtypes) {
  auto f = tuner::default_precompile_families();
  ASSERT_EQ(f.size(), 4u);
  int paper = 0, square = 0, bf16 = 0;
  for (const auto& s : f) {
    EXPECT_EQ(s.h, 16);
    EXPECT_EQ(s.block, 64);
    EXPECT_EQ(s.n, 16);
    paper += s.d_qk == 192 && s.d_v == 128;
    square += s.d_qk == 128 && s.d_v == 128;
    bf16 += s.dtype == jit::ElemType::bf16;
  }
  EXPECT_EQ(paper, 2);
  EXPECT_EQ(square, 2);
  EXPECT_EQ(bf16, 2);
}

TEST(Precompile, AnArchNvrtcCannotTargetFailsEveryVariantWithTheReason) {
  test::TempDir dir;
  auto store = cache::VerdictStore::open(dir.path() / "state.sqlite");
  ASSERT_TRUE(store);
  std::size_t calls = 0;
  auto summary = tuner::precompile("sm_91", *store, [&](const jit::CompileProgress&) { ++calls; });
  EXPECT_GT(summary.total, 0u);
  EXPECT_EQ(summary.failed, summary.total);
  EXPECT_EQ(calls, summary.total);
  ASSERT_FALSE(summary.failures.empty());
  EXPECT_NE(summary.failures[0].log.find("supported: "), std::string::npos) << summary.failures[0].log;
  EXPECT_NE(summary.describe("sm_91").find(std::to_string(summary.total) + " failed"), std::string::npos)
      << summary.describe("sm_91");
  EXPECT_EQ(store->kernel_count(), 0);
}

TEST(Precompile, ASecondRunCompilesNothing) {
  // Three small variants keep this fast; precompile() runs the same code over the catalog.
  test::TempDir dir;
  auto store = cache::VerdictStore::open(dir.path() / "state.sqlite");
  ASSERT_TRUE(store);
  const std::vector<jit::KernelVariant> variants = {small_reference("sm_80"), small_reference("sm_86"),
                                                    small_reference("sm_90")};
  std::size_t calls = 0;
  auto first = tuner::compile_into_store(variants, *store, [&](const jit::CompileProgress&) { ++calls; }, 2);
  EXPECT_EQ(calls, 3u);
  EXPECT_EQ(first.total, 3u);
  EXPECT_EQ(first.failed, 0u) << (first.failures.empty() ? "" : first.failures[0].message());
  EXPECT_EQ(first.compiled, 3u);
  EXPECT_EQ(store->kernel_count(), 3);
  auto second = tuner::compile_into_store(variants, *store, {}, 2);
  EXPECT_EQ(second.from_cache, 3u);
  EXPECT_EQ(second.compiled, 0u);
  EXPECT_NE(second.describe("sm_80").find("3 variants for sm_80: 0 compiled, 3 from the cache, 0 failed"),
            std::string::npos)
      << second.describe("sm_80");
}
