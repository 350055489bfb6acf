// The compile pool: the cache is consulted, one key is compiled once even under concurrency,
// outcomes keep their order, progress is reported.

#include "nsa/jit/compiler.hpp"

#include <gtest/gtest.h>

#include <thread>

#include "nsa/jit/catalog.hpp"
#include "nsa/jit/device.hpp"

using namespace nsa::jit;

namespace {

KernelVariant reference_variant(const std::string& arch, int h = 4) {
  FamilySpec f{ElemType::bf16, 64, 64, h, 64, 4};
  return default_variant(Design::reference, f, arch);
}

}  // namespace

TEST(CompilePool, CacheAvoidsASecondCompile) {
  MemoryCubinCache cache;
  CompilePool pool(2, &cache);
  auto first = pool.compile(reference_variant("sm_90"));
  ASSERT_TRUE(first.result) << first.result.error().message() << "\n" << first.result.error().log;
  EXPECT_FALSE(first.from_cache);
  EXPECT_EQ(pool.nvrtc_compiles(), 1u);
  EXPECT_EQ(cache.size(), 1u);

  auto second = pool.compile(reference_variant("sm_90"));
  ASSERT_TRUE(second.result);
  EXPECT_TRUE(second.from_cache);
  EXPECT_EQ(pool.nvrtc_compiles(), 1u);
  EXPECT_EQ(second.result->image, first.result->image);

  CompilePool fresh(1, &cache);  // a new pool (as after a restart) on the same cache
  EXPECT_TRUE(fresh.compile(reference_variant("sm_90")).from_cache);
  EXPECT_EQ(fresh.nvrtc_compiles(), 0u);
}

TEST(CompilePool, ConcurrentRequestsForOneKeyCompileOnce) {
  MemoryCubinCache cache;
  CompilePool pool(4, &cache);
  const auto v = reference_variant("sm_86");
  std::vector<CompileOutcome> outcomes(6);
  {
    std::vector<std::jthread> threads;
    for (std::size_t i = 0; i < outcomes.size(); ++i)
      threads.emplace_back([&, i] { outcomes[i] = pool.compile(v); });
  }
  EXPECT_EQ(pool.nvrtc_compiles(), 1u);
  int compiled_here = 0;
  for (const auto& o : outcomes) {
    ASSERT_TRUE(o.result);
    EXPECT_EQ(o.result->image, outcomes[0].result->image);
    compiled_here += o.from_cache ? 0 : 1;
  }
  EXPECT_EQ(compiled_here, 1);
}

TEST(CompilePool, CompileAllKeepsOrderAndReportsProgress) {
  CompilePool pool(2);  // no cache: duplicates are still compiled once at a time
  std::vector<KernelVariant> variants = {reference_variant("sm_80"), reference_variant("sm_89", 2),
                                         reference_variant("sm_80")};
  auto unsupported = reference_variant("sm_91");
  variants.push_back(unsupported);
  std::vector<CompileProgress> seen;
  auto outcomes = pool.compile_all(variants, [&](const CompileProgress& p) {
    seen.push_back(p);
    ASSERT_NE(p.last, nullptr);
  });
  ASSERT_EQ(outcomes.size(), variants.size());
  for (std::size_t i = 0; i < variants.size(); ++i) EXPECT_EQ(outcomes[i].key, variants[i].key());
  EXPECT_TRUE(outcomes[0].result && outcomes[1].result && outcomes[2].result);
  ASSERT_FALSE(outcomes[3].result);
  EXPECT_EQ(outcomes[3].result.error().code, NVRTC_ERROR_INVALID_OPTION);
  EXPECT_EQ(outcomes[3].result.error().variant_key, unsupported.key());

  ASSERT_EQ(seen.size(), variants.size());
  for (std::size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].done, i + 1);
    EXPECT_EQ(seen[i].total, variants.size());
  }
  EXPECT_EQ(seen.back().failed, 1u);
  EXPECT_EQ(seen.back().compiled + seen.back().from_cache, 3u);
}

TEST(CompilePool, KeyCarriesEverythingThatMakesACubinStale) {
  const auto v = reference_variant("sm_90");
  const auto key = CubinKey::for_variant(v);
  EXPECT_EQ(key.variant_key, v.key());
  EXPECT_EQ(key.arch, "sm_90");
  EXPECT_EQ(key.source_hash, kernel_source_hash());
  EXPECT_EQ(key.options, options_string("sm_90"));
  EXPECT_EQ(key.nvrtc_version, nvrtc_version());

  // An entry stored under another NVRTC version is not this build's: it must be compiled again.
  MemoryCubinCache cache;
  auto stale = key;
  stale.nvrtc_version = "12.4";
  Cubin bogus;
  bogus.image = {1, 2, 3};
  ASSERT_TRUE(cache.put(stale, bogus));
  CompilePool pool(1, &cache);
  auto out = pool.compile(v);
  ASSERT_TRUE(out.result);
  EXPECT_FALSE(out.from_cache);
  EXPECT_NE(out.result->image, (std::vector<std::uint8_t>{1, 2, 3}));
  EXPECT_EQ(cache.size(), 2u);
}
