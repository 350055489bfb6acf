// Every kernel of the catalog compiles with NVRTC for every target CI must cover, with nothing
// but the embedded sources, and each cubin is launchable as planned: it holds every entry its
// launch plan names, and its registers and shared memory fit the CTA the plan launches.
//
// Cost control (2 cores in CI, about a second per compile): every design with its default knobs
// on sm_80, sm_86, sm_89 and sm_90 (both families on sm_80 and sm_90, one each on sm_86 and
// sm_89), and on sm_90 a covering set of knob settings: every value of every knob of every
// design appears in at least one compiled variant. The complete sm_90 sweep (about a hundred
// compiles) runs when NSA_FULL_COMPILE_SWEEP=1, and on a GPU host the GPU tests' knob sweep
// compiles and runs all of it anyway.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "nsa/jit/catalog.hpp"
#include "nsa/jit/compiler.hpp"
#include "nsa/jit/nvrtc.hpp"

using namespace nsa::jit;

namespace {

const FamilySpec kD128Bf16{ElemType::bf16, 128, 128, 16, 64, 16};
const FamilySpec kPaperFp16{ElemType::fp16, 192, 128, 16, 64, 16};
// A block of 128 keys: every design's block-size paths (prefill_group has none: its code must
// stay out of the others' compiles).
const FamilySpec kBlock128Bf16{ElemType::bf16, 128, 128, 16, 128, 8};

/// Checks one compiled variant against the plans of a decode and a prefill shape.
void expect_launchable(const CompileOutcome& o) {
  ASSERT_TRUE(o.result) << o.result.error().message() << "\noptions: " << o.result.error().options << "\n"
                        << o.result.error().log;
  const Cubin& c = *o.result;
  for (const RuntimeShape shape : {RuntimeShape{4, 1, 8192, 4}, RuntimeShape{1, 512, 4096, 2}}) {
    LaunchPlan plan;
    try {
      plan = plan_for(o.variant, shape);
    } catch (const std::exception& e) {
      ADD_FAILURE() << o.key << ": plan_for threw " << e.what();
      return;
    }
    for (const auto& l : plan.launches) {
      auto k = std::find_if(c.kernels.begin(), c.kernels.end(), [&](const auto& r) { return r.entry == l.entry; });
      ASSERT_NE(k, c.kernels.end()) << o.key << ": the plan launches '" << l.entry << "', which the cubin lacks";
      const long threads = static_cast<long>(l.block[0]) * l.block[1] * l.block[2];
      EXPECT_GT(k->registers, 0) << o.key << ": ptxas's resource line for " << l.entry << " was not read";
      EXPECT_LE(threads * k->registers, 65536)
          << o.key << ": " << l.entry << " uses " << k->registers << " registers x " << threads << " threads";
      EXPECT_LE(static_cast<long>(k->shared_bytes) + l.shared_bytes, max_dynamic_shared_bytes(o.variant.arch))
          << o.key << ": " << l.entry << " static " << k->shared_bytes << " + dynamic " << l.shared_bytes
          << " bytes of shared memory";
    }
  }
  if (c.spill_bytes > 0) std::printf("note: %s spills %d bytes\n", o.key.c_str(), c.spill_bytes);
}

}  // namespace

/// The families compiled for each target.
std::vector<FamilySpec> families_for(const std::string& arch) {
  if (arch == "sm_86") return {kPaperFp16};
  if (arch == "sm_89") return {kD128Bf16};
  if (arch == "sm_90") return {kD128Bf16, kPaperFp16, kBlock128Bf16};
  return {kD128Bf16, kPaperFp16};
}

/// Variants such that every (knob, value) pair of `all` appears at least once; the default first.
std::vector<KernelVariant> covering_set(const std::vector<KernelVariant>& all) {
  std::set<std::pair<std::string, int>> seen;
  std::vector<KernelVariant> out;
  for (const auto& v : all) {
    bool adds = out.empty();
    for (const auto& kv : v.knobs) adds |= !seen.count(kv);
    if (!adds) continue;
    for (const auto& kv : v.knobs) seen.insert(kv);
    out.push_back(v);
  }
  return out;
}

class EveryDesign : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryDesign, CompilesWithDefaultKnobs) {
  const std::string arch = GetParam();
  std::vector<KernelVariant> variants;
  for (const auto& family : families_for(arch))
    for (Design d : all_designs()) {
      auto offered = variants_for(family, arch, d);
      // prefill_stream's ring of whole blocks does not fit 99 KiB at D_qk = 192 (sm_86/sm_89);
      // every other design runs every family on every arch.
      if (offered.empty() && d == Design::prefill_stream && max_dynamic_shared_bytes(arch) < 100 * 1024) continue;
      // prefill_group (wgmma) exists on sm_90 only, for block 64 and D_v <= 128.
      if (offered.empty() && d == Design::prefill_group) continue;
      ASSERT_FALSE(offered.empty()) << "the catalog offers no " << to_string(d) << " variant for " << family.key()
                                    << " on " << arch;
      variants.push_back(offered.front());
    }
  CompilePool pool;
  for (const auto& o : pool.compile_all(variants)) expect_launchable(o);
}

INSTANTIATE_TEST_SUITE_P(Targets, EveryDesign, ::testing::Values("sm_80", "sm_86", "sm_89", "sm_90"),
                         [](const auto& info) { return info.param; });

TEST(EveryKnobValue, CompilesForSm90) {
  std::vector<KernelVariant> variants;
  for (Design d : all_designs()) {
    auto cover = covering_set(variants_for(kD128Bf16, "sm_90", d));
    variants.insert(variants.end(), cover.begin(), cover.end());
  }
  ASSERT_FALSE(variants.empty());
  CompilePool pool;
  for (const auto& o : pool.compile_all(variants)) expect_launchable(o);
  std::printf("%zu variants cover every knob value on sm_90\n", variants.size());
}

TEST(EveryKnobSetting, CompilesForSm90) {
  if (!std::getenv("NSA_FULL_COMPILE_SWEEP"))
    GTEST_SKIP() << "the complete sweep takes minutes on 2 cores: set NSA_FULL_COMPILE_SWEEP=1 to run it";
  const auto variants = all_variants(kD128Bf16, "sm_90");
  ASSERT_FALSE(variants.empty());
  CompilePool pool;
  std::size_t failed = 0;
  for (const auto& o : pool.compile_all(variants)) {
    expect_launchable(o);
    failed += o.result ? 0 : 1;
  }
  std::printf("%zu variants compiled for sm_90, %zu failed\n", variants.size(), failed);
}

// query_tile_union.cuh's other two builds of the union, in registers (NSA_UNION_BUILD 1) and as a
// bitmap (2), are off in the catalog's compiles until a GPU run has compared them (docs/performance.md
// v18); this keeps both compiling, for the CTA's build and the persistent one-warp build of each
// query-tile design, and for a tile of 352 slots (past the register build's 256: the sort).
TEST(UnionBuilds, CompileForTheQueryTileDesigns) {
  std::vector<KernelVariant> variants;
  for (Design d : {Design::prefill_shared, Design::prefill_stream, Design::prefill_group}) {
    const auto offered = variants_for(kD128Bf16, "sm_90", d);
    ASSERT_FALSE(offered.empty()) << to_string(d);
    variants.push_back(offered.front());  // the CTA's build (prefill_stream's: 176 slots)
    auto persistent = std::find_if(offered.begin(), offered.end(), [](const auto& v) { return v.knob("persist", 0) == 1; });
    if (persistent != offered.end()) variants.push_back(*persistent);  // the one-warp build
  }
  variants.push_back(variants_for(FamilySpec{ElemType::bf16, 128, 128, 16, 64, 32}, "sm_90", Design::prefill_stream)
                         .front());  // 352 slots
  for (const auto& [define, label] : {std::pair{"#define NSA_UNION_BUILD 1\n", "union in registers"},
                                      std::pair{"#define NSA_UNION_BUILD 2\n", "union as a bitmap"}})
    for (const auto& v : variants) {
      auto cubin = compile_to_cubin(v, define, label);
      ASSERT_TRUE(cubin) << label << ": " << cubin.error().message() << "\n" << cubin.error().log;
      std::printf("%s with the %s: %d registers, %d bytes spilled\n", v.key().c_str(), label, cubin->registers,
                  cubin->spill_bytes);
    }
}
