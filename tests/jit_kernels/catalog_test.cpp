// The variant catalog (jit_kernels/catalog.cpp) without a GPU or a compiler: which settings
// exist for a family and arch, and the launch plans' arithmetic. Compiling the variants is
// catalog_compile_test's job; running them, the GPU tests'.

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <string>

#include "layout.cuh"
#include "nsa/jit/catalog.hpp"

using namespace nsa::jit;

namespace {

const FamilySpec kDecode{ElemType::bf16, 128, 128, 16, 64, 16};
const FamilySpec kPaper{ElemType::fp16, 192, 128, 16, 64, 16};
const FamilySpec kWideHeads{ElemType::bf16, 64, 64, 32, 32, 8};
const FamilySpec kOneHead{ElemType::bf16, 128, 128, 1, 128, 1};

/// Expects plan_for to refuse `v` on `shape` with a message containing `reason`; `planned` says
/// what went wrong if it planned it instead.
void expect_refused(const KernelVariant& v, const RuntimeShape& shape, const std::string& reason,
                    const std::string& planned) {
  try {
    (void)plan_for(v, shape);
    ADD_FAILURE() << planned;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(reason), std::string::npos) << e.what();
  }
}

std::string knobs_of(const KernelVariant& v) {
  std::string s;
  for (const auto& [k, value] : v.knobs) s += k + "=" + std::to_string(value) + " ";
  return s;
}

}  // namespace

TEST(Catalog, EveryDesignNamesAKernelFileThatExists) {
  std::set<std::string> names;
  for (Design d : all_designs()) {
    const std::string name(source_for(d));
    EXPECT_TRUE(name.ends_with(".cu")) << name;
    EXPECT_TRUE(std::filesystem::exists(std::filesystem::path(NSA_SOURCE_DIR) / "jit_kernels/kernels" / name)) << name;
    names.insert(name);
  }
  EXPECT_EQ(names.size(), all_designs().size()) << "two designs share a source file";
}

TEST(Catalog, UnsupportedFamiliesSayWhichFieldAndWhy) {
  EXPECT_EQ(unsupported_reason(kDecode), std::nullopt);
  EXPECT_EQ(unsupported_reason(kPaper), std::nullopt);
  FamilySpec s = kDecode;
  s.d_qk = 100;
  ASSERT_TRUE(unsupported_reason(s));
  EXPECT_NE(unsupported_reason(s)->find("D_qk=100"), std::string::npos) << *unsupported_reason(s);
  EXPECT_NE(unsupported_reason(s)->find("multiple of 16"), std::string::npos) << *unsupported_reason(s);
  s = kDecode;
  s.d_v = 272;
  EXPECT_NE(unsupported_reason(s).value_or("").find("D_v=272"), std::string::npos);
  s = kDecode;
  s.h = 0;
  EXPECT_NE(unsupported_reason(s).value_or("").find("h=0"), std::string::npos);
  s = kDecode;
  s.block = 48;
  EXPECT_NE(unsupported_reason(s).value_or("").find("block=48"), std::string::npos);
  s = kDecode;
  s.n = 129;
  EXPECT_NE(unsupported_reason(s).value_or("").find("n=129"), std::string::npos);
  EXPECT_TRUE(variants_for(s, "sm_90", Design::query_outer).empty());
  EXPECT_TRUE(all_variants(s, "sm_90").empty());
}

TEST(Catalog, SharedMemoryLimitsFollowTheArch) {
  EXPECT_EQ(max_dynamic_shared_bytes("sm_90"), 227 * 1024);
  EXPECT_EQ(max_dynamic_shared_bytes("sm_90a"), 227 * 1024);
  EXPECT_EQ(max_dynamic_shared_bytes("sm_80"), 163 * 1024);
  EXPECT_EQ(max_dynamic_shared_bytes("sm_86"), 99 * 1024);
  EXPECT_EQ(max_dynamic_shared_bytes("sm_89"), 99 * 1024);
  EXPECT_EQ(max_dynamic_shared_bytes("sm_75"), 48 * 1024);
  EXPECT_EQ(max_dynamic_shared_bytes("gfx90a"), 48 * 1024);
}

TEST(Catalog, VariantsAreDistinctPlannableAndFitTheArch) {
  for (const FamilySpec& spec : {kDecode, kPaper, kWideHeads, kOneHead}) {
    for (const std::string arch : {"sm_80", "sm_86", "sm_89", "sm_90"}) {
      const auto all = all_variants(spec, arch);
      std::set<std::string> keys;
      std::set<Design> designs;
      for (const auto& v : all) {
        EXPECT_TRUE(keys.insert(v.key()).second) << "duplicate " << v.key();
        designs.insert(v.design);
        EXPECT_EQ(v.arch, arch);
        EXPECT_EQ(v.spec, spec);
        EXPECT_LE(shared_bytes_for(v), static_cast<unsigned>(max_dynamic_shared_bytes(arch))) << v.key();
        LaunchPlan plan;
        EXPECT_NO_THROW(plan = plan_for(v, RuntimeShape{2, 3, 1000, 2})) << v.key();
        for (const auto& l : plan.launches) {
          EXPECT_LE(l.shared_bytes, shared_bytes_for(v)) << v.key() << " " << l.entry;
          EXPECT_GE(l.block[0], 32u);
          EXPECT_EQ(l.block[0] % 32, 0u);
        }
      }
      // Every design runs every family on every arch, except the streaming designs where their
      // structure does not fit (h > 16 heads for a one-warp consumer, Q and a block's scores
      // beyond a consumer's registers, or a ring of whole blocks beyond the arch's shared
      // memory); plan_for then says why.
      for (Design d : all_designs()) {
        if (designs.count(d)) continue;
        EXPECT_TRUE(d == Design::prefill_stream || d == Design::decode_stream || d == Design::prefill_group)
            << spec.key() << " on " << arch << ": " << to_string(d) << " has no setting that fits";
        EXPECT_THROW((void)plan_for(default_variant(d, spec, arch), RuntimeShape{2, 3, 1000, 2}),
                     std::invalid_argument);
      }
    }
  }
}

TEST(Catalog, DefaultVariantIsTheFirstOfferedSetting) {
  for (Design d : all_designs()) {
    const auto offered = variants_for(kDecode, "sm_90", d);
    ASSERT_FALSE(offered.empty()) << to_string(d);
    EXPECT_EQ(default_variant(d, kDecode, "sm_90").key(), offered.front().key());
  }
  // The 99 KiB archs get a smaller default where the preferred one does not fit.
  const auto big = default_variant(Design::query_outer, kDecode, "sm_90");
  const auto small = default_variant(Design::query_outer, kDecode, "sm_86");
  EXPECT_LE(shared_bytes_for(small), static_cast<unsigned>(99 * 1024));
  EXPECT_GT(shared_bytes_for(big), static_cast<unsigned>(99 * 1024)) << knobs_of(big);
  EXPECT_NE(big.key().substr(0, big.key().rfind('.')), small.key().substr(0, small.key().rfind('.')));
}

TEST(Catalog, OlderArchsGetOnlyTheReference) {
  const auto all = all_variants(kDecode, "sm_75");
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].design, Design::reference);
  KernelVariant v = default_variant(Design::query_outer, kDecode, "sm_90");
  v.arch = "sm_75";
  expect_refused(v, RuntimeShape{}, "sm_80", "planned a tensor-core variant for sm_75");
}

TEST(Catalog, PrefillTilesNeverExceed128RowsOrSpillTheWarps) {
  for (const auto& v : variants_for(kWideHeads, "sm_90", Design::prefill_shared)) {
    const int qtile = v.knob("qtile", 0);
    EXPECT_LE(qtile * kWideHeads.h, 128) << v.key();
  }
  std::set<int> qtiles;
  for (const auto& v : variants_for(kDecode, "sm_90", Design::prefill_shared)) qtiles.insert(v.knob("qtile", 0));
  EXPECT_EQ(qtiles, (std::set<int>{1, 2, 4, 8}));
  // Every warp owns >= 16 key columns: with h <= 16 (one row tile) 8 warps need 128-key tiles.
  for (const auto& v : variants_for(kDecode, "sm_90", Design::query_outer))
    if (v.knob("warps", 0) == 8) {
      EXPECT_EQ(v.knob("tile", 0), 128) << v.key();
    }
}

TEST(Catalog, RowWisePlansLaunchOneCtaPerRow) {
  const RuntimeShape decode{64, 1, 32768, 4};
  const auto v = default_variant(Design::query_outer, kDecode, "sm_90");
  const LaunchPlan plan = plan_for(v, decode);
  ASSERT_EQ(plan.launches.size(), 1u);
  EXPECT_EQ(plan.launches[0].entry, "nsa_query_outer");
  EXPECT_EQ(plan.launches[0].grid[0], 64u * 4u);
  EXPECT_EQ(plan.launches[0].block[0], 32u * static_cast<unsigned>(v.knob("warps", 0)));
  EXPECT_EQ(plan.launches[0].shared_bytes, shared_bytes_for(v));
  EXPECT_EQ(plan.workspace_bytes, 0u);

  const auto ref = plan_for(default_variant(Design::reference, kDecode, "sm_90"), decode);
  ASSERT_EQ(ref.launches.size(), 1u);
  EXPECT_EQ(ref.launches[0].grid[0], 64u * 4u * 16u);  // one CTA per (b, t, query head)
}

TEST(Catalog, SplitKvIsOneLaunchWhoseWorkspaceEndsWithAlignedCounters) {
  // The global-workspace merge (cluster = 0; the only one below sm_90).
  KernelVariant v = default_variant(Design::split_kv, kDecode, "sm_86");
  ASSERT_EQ(v.knob("cluster", -1), 0);
  const int split = v.knob("split", 0);
  ASSERT_GT(split, 1);
  const RuntimeShape shape{1, 1, 32768, 4};
  const LaunchPlan plan = plan_for(v, shape);
  // The combine is fused into the partial kernel (the last CTA of a row merges): one launch.
  ASSERT_EQ(plan.launches.size(), 1u);
  EXPECT_EQ(plan.launches[0].entry, "nsa_split_kv");
  EXPECT_EQ(plan.launches[0].grid[0], 4u * static_cast<unsigned>(split));
  // fp32 O [rows][split][h][D_v], then m and l [rows][split][h], then two 64-bit words per row
  // (the counter and the fallback word).
  const std::uint64_t partials = 4ull * split * 16;
  EXPECT_GE(plan.workspace_bytes, partials * (128 + 2) * 4 + 4 * 16);
  EXPECT_LE(plan.workspace_bytes, partials * (128 + 2) * 4 + 4 * 16 + 512);
  namespace L = nsa_layout;
  // Counters are 64-bit atomics: 8-byte aligned for every shape, after the l array, inside the
  // workspace (odd row, split and head counts included).
  for (long long rows : {1LL, 3LL, 7LL, 64LL})
    for (int sp : {2, 3, 16, 32})
      for (int h : {1, 5, 16})
        for (int dv : {16, 128, 240}) {
          const long long c = L::split_counter_offset(rows, sp, h, dv);
          EXPECT_EQ(c % 8, 0) << rows << " " << sp << " " << h << " " << dv;
          EXPECT_GE(c, L::split_l_offset(rows, sp, h, dv) + rows * sp * h * 4);
          EXPECT_EQ(L::split_fallback_offset(rows, sp, h, dv), c + rows * 8);
          EXPECT_GE(L::split_workspace_bytes(rows, sp, h, dv), c + rows * 16);
        }
}

TEST(Catalog, SplitKvClustersMergeOnChipOnSm90Only) {
  // Preferred on sm_90: the row's CTAs form a cluster and merge through distributed shared
  // memory, so the plan has no workspace, one launch, and a grid of whole clusters.
  const KernelVariant v = default_variant(Design::split_kv, kDecode, "sm_90");
  ASSERT_EQ(v.knob("cluster", -1), 1);
  const int split = v.knob("split", 0);
  const LaunchPlan plan = plan_for(v, RuntimeShape{3, 1, 32768, 4});
  ASSERT_EQ(plan.launches.size(), 1u);
  EXPECT_EQ(plan.launches[0].grid[0], 12u * static_cast<unsigned>(split));
  EXPECT_EQ(plan.workspace_bytes, 0u);
  // Its partial lives in shared memory next to the engine's: more than the cluster = 0 twin.
  KernelVariant twin = v;
  for (auto& [name, value] : twin.knobs)
    if (name == "cluster") value = 0;
  EXPECT_EQ(shared_bytes_for(v), shared_bytes_for(twin) + nsa_layout::split_partial_bytes(16, 128));

  std::set<int> cluster_splits, plain_splits;
  for (const auto& x : variants_for(kDecode, "sm_90", Design::split_kv))
    (x.knob("cluster", -1) == 1 ? cluster_splits : plain_splits).insert(x.knob("split", 0));
  EXPECT_EQ(cluster_splits, (std::set<int>{2, 4, 8}));  // portable clusters hold at most 8 CTAs
  EXPECT_EQ(plain_splits, (std::set<int>{2, 4, 8, 16, 32}));
  for (const char* arch : {"sm_80", "sm_86", "sm_89"})
    for (const auto& x : variants_for(kDecode, arch, Design::split_kv)) EXPECT_EQ(x.knob("cluster", -1), 0) << x.key();

  KernelVariant old_arch = v;
  old_arch.arch = "sm_89";
  expect_refused(old_arch, RuntimeShape{1, 1, 32768, 4}, "cluster=1 needs thread-block clusters",
                 "a cluster variant was planned for sm_89");
  KernelVariant wide = v;
  for (auto& [name, value] : wide.knobs)
    if (name == "split") value = 16;
  expect_refused(wide, RuntimeShape{1, 1, 32768, 4}, "not portable", "a cluster of 16 CTAs was planned");
}

TEST(Catalog, EvictFirstIsAQueryOuterKnobOffByDefault) {
  std::set<int> values;
  for (const auto& v : variants_for(kDecode, "sm_90", Design::query_outer)) values.insert(v.knob("evict", -1));
  EXPECT_EQ(values, (std::set<int>{0, 1}));
  // Off by default: prefill re-reads blocks from L2, which evict-first would throw out.
  EXPECT_EQ(default_variant(Design::query_outer, kDecode, "sm_90").knob("evict", -1), 0);
  // The baseline has no such knob (it must stay the plain, strong bar).
  EXPECT_EQ(default_variant(Design::sdpa_packed, kDecode, "sm_90").knob("evict", -1), -1);
}

TEST(Catalog, SplitKvOffersSplitsFromTwoToThirtyTwoAndDeeperPipelines) {
  std::set<int> splits, stages;
  for (const auto& v : variants_for(kDecode, "sm_90", Design::split_kv)) {
    splits.insert(v.knob("split", 0));
    stages.insert(v.knob("stages", 0));
  }
  EXPECT_EQ(splits, (std::set<int>{2, 4, 8, 16, 32}));
  EXPECT_EQ(stages, (std::set<int>{2, 3, 4}));
  // The default owns two of the 16 tiles of a decode row per CTA and keeps both in flight.
  const auto def = default_variant(Design::split_kv, kDecode, "sm_90");
  EXPECT_EQ(def.knob("split", 0), 8);
  EXPECT_EQ(def.knob("tile", 0), 64);
  EXPECT_EQ(def.knob("stages", 0), 3);
  // Four stages of 64-key tiles do not fit 99 KiB: sm_86 is offered only shallower settings.
  for (const auto& v : variants_for(kDecode, "sm_86", Design::split_kv))
    EXPECT_LE(shared_bytes_for(v), static_cast<unsigned>(99 * 1024)) << v.key();
}

TEST(Catalog, SplitKvGivesEveryCtaOfAFullRowATileAndNoIdleStages) {
  // kDecode: n = 16 blocks of 64 keys, so 16 tiles of 64 or 32 of 32 per full row.
  const auto offered = variants_for(kDecode, "sm_90", Design::split_kv);
  ASSERT_FALSE(offered.empty());
  bool split32_tile32 = false, split16_stages2 = false;
  for (const auto& v : offered) {
    const int split = v.knob("split", 0), tile = v.knob("tile", 0), stages = v.knob("stages", 0);
    const int tiles = 16 * 64 / tile, per_cta = (tiles + split - 1) / split;
    EXPECT_LE(split, tiles) << v.key();
    if (stages > 2) {
      EXPECT_LE(stages - 1, per_cta) << v.key();
    }
    split32_tile32 |= split == 32 && tile == 32;
    split16_stages2 |= split == 16 && tile == 64 && stages == 2;
  }
  EXPECT_TRUE(split32_tile32) << "32 CTAs of one 32-key tile per row must stay on offer";
  EXPECT_TRUE(split16_stages2);

  // A setting the catalog prunes is refused by plan_for with the reason.
  KernelVariant idle = default_variant(Design::split_kv, kDecode, "sm_90");
  idle.knobs = {{"split", 32}, {"warps", 4}, {"tile", 64}, {"stages", 2}, {"cluster", 0}};
  expect_refused(idle, RuntimeShape{16, 1, 32768, 4}, "split=32 exceeds the 16 tiles of 64 keys",
                 "split 32 of 16 tiles was planned");
  KernelVariant deep = idle;
  deep.knobs = {{"split", 16}, {"warps", 4}, {"tile", 64}, {"stages", 4}, {"cluster", 0}};
  expect_refused(deep, RuntimeShape{1, 1, 32768, 4}, "owns at most 1 of the 16 tiles",
                 "a 4-stage ring for one tile per CTA was planned");

  // Short rows: n = 1 block of 64 keys has two 32-key tiles: split 2 of 32-key tiles is all
  // that remains, so the design still serves the family.
  FamilySpec one = kDecode;
  one.n = 1;
  const auto small = variants_for(one, "sm_90", Design::split_kv);
  ASSERT_FALSE(small.empty());
  for (const auto& v : small) {
    EXPECT_EQ(v.knob("split", 0), 2) << v.key();
    EXPECT_EQ(v.knob("tile", 0), 32) << v.key();
  }
}

TEST(Catalog, PackedBaselineReservesPackedRowsAndLengths) {
  const auto v = default_variant(Design::sdpa_packed, kPaper, "sm_90");
  const RuntimeShape shape{3, 5, 4096, 2};
  const LaunchPlan plan = plan_for(v, shape);
  ASSERT_EQ(plan.launches.size(), 2u);
  EXPECT_EQ(plan.launches[0].entry, "nsa_sdpa_gather");
  EXPECT_EQ(plan.launches[1].entry, "nsa_sdpa_attention");
  const std::uint64_t rows = 3 * 5 * 2, max_len = 16 * 64;
  const std::uint64_t packed = rows * max_len * (192 + 128) * 2;  // K_p and V_p in fp16
  EXPECT_GE(plan.workspace_bytes, packed + rows * 4);
  EXPECT_LE(plan.workspace_bytes, packed + rows * 4 + 256);
  EXPECT_EQ(plan.launches[0].grid[0], rows);
  EXPECT_EQ(plan.launches[1].grid[0], rows);
}

TEST(Catalog, PrefillSharedPlansOneCtaPerQueryTile) {
  for (const auto& v : variants_for(kDecode, "sm_90", Design::prefill_shared)) {
    const int qtile = v.knob("qtile", 0);
    const LaunchPlan plan = plan_for(v, RuntimeShape{2, 1001, 1001, 4});
    ASSERT_EQ(plan.launches.size(), 1u);
    EXPECT_EQ(plan.launches[0].grid[0], 2u * 4u * static_cast<unsigned>((1001 + qtile - 1) / qtile)) << v.key();
  }
}

TEST(Catalog, GridsAreCappedForHugeShapesAndKernelsLoop) {
  const RuntimeShape huge{64, 1 << 20, 1 << 20, 64};  // 2^32 rows
  for (const auto& v : all_variants(kDecode, "sm_90"))
    for (const auto& l : plan_for(v, huge).launches) EXPECT_LE(l.grid[0], 2147483647u) << v.key() << " " << l.entry;
}

TEST(Catalog, PlansRejectSettingsTheCatalogWouldNotOffer) {
  KernelVariant v = default_variant(Design::query_outer, kDecode, "sm_90");
  v.knobs[1].second = 48;  // tile
  expect_refused(v, RuntimeShape{}, "tile=48", "planned tile=48");
  v = default_variant(Design::query_outer, kDecode, "sm_90");
  v.knobs.pop_back();
  EXPECT_THROW(plan_for(v, RuntimeShape{}), std::invalid_argument);
  v = default_variant(Design::query_outer, kDecode, "sm_90");
  v.knobs[0].first = "threads";
  EXPECT_THROW(plan_for(v, RuntimeShape{}), std::invalid_argument);
  // A setting that only fits the 227 KiB archs is refused for sm_86.
  v = default_variant(Design::query_outer, kDecode, "sm_90");
  ASSERT_GT(shared_bytes_for(v), static_cast<unsigned>(99 * 1024));
  v.arch = "sm_86";
  EXPECT_THROW(plan_for(v, RuntimeShape{}), std::invalid_argument);
}

TEST(Catalog, PlansRejectEmptyShapesWithTheValues) {
  const auto v = default_variant(Design::query_outer, kDecode, "sm_90");
  expect_refused(v, RuntimeShape{1, 0, 10, 1}, "T_q=0", "planned T_q = 0");
}

TEST(Catalog, LayoutArithmeticMatchesTheEngineRules) {
  namespace L = nsa_layout;
  EXPECT_EQ(L::m_tiles(1), 1);
  EXPECT_EQ(L::m_tiles(16), 1);
  EXPECT_EQ(L::m_tiles(17), 2);
  EXPECT_EQ(L::m_tiles(33), 4);  // padded to a power of two so warps split rows evenly
  EXPECT_EQ(L::m_tiles(128), 8);
  EXPECT_TRUE(L::core_valid(1, 4, 64));    // 4 warps x 16 keys
  EXPECT_FALSE(L::core_valid(1, 8, 64));   // 8 keys a warp: less than one MMA k-step
  EXPECT_TRUE(L::core_valid(2, 4, 32));    // 2 row groups x 2 column groups of 16 keys
  EXPECT_FALSE(L::core_valid(8, 2, 64));   // four row tiles a warp
  // Padded rows: D/2 + 4 words, an odd multiple of 4 for every D that is a multiple of 16, so
  // the 8 rows of an ldmatrix phase start in 8 different 4-bank groups.
  for (int d = 16; d <= 256; d += 16) {
    const int words = (d + L::kPad) * 2 / 4;
    std::set<int> groups;
    for (int r = 0; r < 8; ++r) groups.insert((r * words % 32) / 4);
    EXPECT_EQ(groups.size(), 8u) << "D=" << d;
  }
  // The merge buffer overlays Q and the stages; the region is whichever is larger.
  EXPECT_EQ(L::core_bytes(128, 128, 1, 4, 64, 2),
            std::max(L::q_tile_bytes(128, 1) + 2 * L::kv_stage_bytes(128, 128, 64), L::merge_bytes(128, 1, 4)));
}

TEST(Catalog, PrefillStreamHasOneConsumerWarpPerQueryBesideItsProducers) {
  const auto on_sm90 = variants_for(kDecode, "sm_90", Design::prefill_stream);
  ASSERT_FALSE(on_sm90.empty());
  EXPECT_EQ(on_sm90.front().key(),
            "sel_fwd.prefill_stream.dqk128_dv128_h16_blk64_n16_bf16.tma1_warps12_producers1_stages5_persist0.sm90");
  std::set<int> warp_counts;
  for (const auto& v : on_sm90) {
    const int warps = v.knob("warps", 0), queries = warps - v.knob("producers", 0);
    warp_counts.insert(warps);
    ASSERT_GE(queries, 1) << v.key();
    const LaunchPlan plan = plan_for(v, RuntimeShape{1, 100, 100, 2});
    ASSERT_EQ(plan.launches.size(), 1u);
    EXPECT_EQ(plan.launches[0].entry, "nsa_prefill_stream");
    EXPECT_EQ(plan.launches[0].block[0], 32u * static_cast<unsigned>(warps)) << v.key();
    EXPECT_EQ(plan.launches[0].grid[0], 2u * static_cast<unsigned>((100 + queries - 1) / queries)) << v.key();
    EXPECT_EQ(plan.workspace_bytes, 0u);
  }
  EXPECT_EQ(warp_counts, (std::set<int>{4, 8, 12, 16}));

  KernelVariant idle = on_sm90.front();
  idle.knobs = {{"tma", 0}, {"warps", 4}, {"producers", 4}, {"stages", 2}, {"persist", 0}};
  expect_refused(idle, RuntimeShape{1, 100, 100, 2}, "leave no consumer warp", "a CTA of producers only was planned");
  KernelVariant wide = default_variant(Design::prefill_stream, kDecode, "sm_90");
  wide.spec = kWideHeads;
  expect_refused(wide, RuntimeShape{1, 100, 100, 2}, "h=32 query heads per group exceed the 16 rows",
                 "prefill_stream was planned for 32 heads per group");
  EXPECT_TRUE(variants_for(kWideHeads, "sm_90", Design::prefill_stream).empty());
}

TEST(Catalog, PrefillGroupComputesFourQueriesPerWarpgroupOnHopperOnly) {
  namespace L = nsa_layout;
  const auto on_sm90 = variants_for(kDecode, "sm_90", Design::prefill_group);
  ASSERT_FALSE(on_sm90.empty());
  EXPECT_EQ(on_sm90.front().key(),
            "sel_fwd.prefill_group.dqk128_dv128_h16_blk64_n16_bf16.warps5_stages2_persist0.sm90");
  // The key names the device's arch; NVRTC compiles for its arch-specific target (wgmma).
  EXPECT_EQ(on_sm90.front().compile_arch(), "sm_90a");
  EXPECT_EQ(default_variant(Design::prefill_stream, kDecode, "sm_90").compile_arch(), "sm_90");
  std::set<std::string> settings;
  for (const auto& v : on_sm90) {
    settings.insert(v.key().substr(v.key().find("warps")));
    const int warps = v.knob("warps", 0), queries = warps - 1;
    EXPECT_EQ(queries % 4, 0) << v.key();
    const LaunchPlan plan = plan_for(v, RuntimeShape{1, 100, 100, 2, 132});
    ASSERT_EQ(plan.launches.size(), 1u);
    const Launch& l = plan.launches[0];
    EXPECT_EQ(l.entry, "nsa_prefill_group");
    // persist = 1 adds the builder warp, and where two CTAs still fit, a second Q tile a group.
    const int persist = v.knob("persist", 0);
    EXPECT_EQ(l.block[0], 32u * static_cast<unsigned>(warps + persist)) << v.key();
    EXPECT_EQ(l.shared_bytes,
              static_cast<unsigned>(L::prefill_group_smem(128, 128, 16, 64, warps, v.knob("stages", 0), persist)));
    ASSERT_EQ(l.tensor_maps.size(), 2u) << "the ring is always the TMA's";
    EXPECT_EQ(l.tensor_maps[0].operand, TensorMapArg::Operand::k);
    EXPECT_EQ(l.tensor_maps[1].box_rows, 64u);
    // persist = 0: a CTA per tile; persist = 1: at most the CTAs the SMs hold (two of 5 warps
    // an SM, one of 9).
    const unsigned tiles = 2u * ((100 + queries - 1) / queries);
    const unsigned resident = 132u * (warps == 5 ? 2u : 1u);
    EXPECT_EQ(l.grid[0], v.knob("persist", 0) == 1 ? std::min(tiles, resident) : tiles) << v.key();
  }
  // One group, two CTAs per SM (2 stages); two groups in one CTA at every depth; each also
  // persistent (with the builder warp).
  std::set<std::string> expected = {"warps5_stages2_persist0.sm90", "warps5_stages2_persist1.sm90"};
  for (const char* stages : {"2", "3", "4", "5"})
    for (const char* persist : {"0", "1"})
      expected.insert(std::string("warps9_stages") + stages + "_persist" + persist + ".sm90");
  EXPECT_EQ(settings, expected);
  // The paper config (D_qk = 192) fits fewer stages with two groups.
  for (const auto& v : variants_for(kPaper, "sm_90", Design::prefill_group)) EXPECT_LE(v.knob("stages", 0), 4) << v.key();

  // Where it cannot run, the catalog says why.
  for (const char* arch : {"sm_80", "sm_89", "sm_100"}) {
    KernelVariant elsewhere = on_sm90.front();
    elsewhere.arch = arch;
    expect_refused(elsewhere, RuntimeShape{1, 100, 100, 2}, "sm_90a (Hopper) only", "prefill_group off Hopper");
    EXPECT_TRUE(variants_for(kDecode, arch, Design::prefill_group).empty()) << arch;
  }
  KernelVariant wide = on_sm90.front();
  wide.spec = kWideHeads;
  expect_refused(wide, RuntimeShape{1, 100, 100, 2}, "h=32 query heads", "prefill_group for 32 heads per group");
  KernelVariant long_blocks = on_sm90.front();
  long_blocks.spec = kOneHead;  // block 128
  expect_refused(long_blocks, RuntimeShape{1, 100, 100, 2}, "block must be 64", "prefill_group for block 128");
  KernelVariant wide_v = on_sm90.front();
  wide_v.spec.d_v = 256;
  expect_refused(wide_v, RuntimeShape{1, 100, 100, 2}, "D_v 64 or 128", "prefill_group for D_v = 256");
  KernelVariant deep_pair = on_sm90.front();
  deep_pair.knobs = {{"warps", 5}, {"stages", 3}, {"persist", 0}};
  expect_refused(deep_pair, RuntimeShape{1, 100, 100, 2}, "use stages=2", "one warpgroup alone on an SM");
  // The Q tiles follow the ring, unpadded: 64 rows of D_qk per warpgroup.
  // K and V of a slot have a full and an empty barrier each, plus the two unions' ready and freed barriers.
  EXPECT_EQ(L::prefill_group_smem(128, 128, 16, 64, 9, 5, 0),
            2 * L::union_bytes(8, 16) + 256 + L::kTmaAlign + 5 * 64 * 256 * 2 + 2 * 64 * 128 * 2);
  // persist = 1: two Q tiles where two CTAs still fit an SM (D 128 at 2 stages), one where not (D_qk 192).
  EXPECT_EQ(L::prefill_group_q_tiles(128, 128, 16, 64, 5, 2, 1), 2);
  EXPECT_EQ(L::prefill_group_q_tiles(128, 128, 16, 64, 5, 2, 0), 1);
  EXPECT_EQ(L::prefill_group_q_tiles(192, 128, 16, 64, 5, 2, 1), 1);
  EXPECT_EQ(L::prefill_group_smem(128, 128, 16, 64, 5, 2, 1) - L::prefill_group_smem(128, 128, 16, 64, 5, 2, 0),
            64 * 128 * 2);
}

TEST(Catalog, DecodeStreamSplitsARowOverAClusterOfStreamingCtas) {
  const auto on_sm90 = variants_for(kDecode, "sm_90", Design::decode_stream);
  ASSERT_FALSE(on_sm90.empty());
  EXPECT_EQ(on_sm90.front().key(),
            "sel_fwd.decode_stream.dqk128_dv128_h16_blk64_n16_bf16.tma1_split1_consumers4_producers1_stages4_share1.sm90");
  std::set<int> splits, shares;
  for (const auto& v : on_sm90) {
    const int split = v.knob("split", 0), warps = v.knob("consumers", 0) + v.knob("producers", 0);
    splits.insert(split);
    shares.insert(v.knob("share", 0));
    EXPECT_LE(warps, 8) << v.key();
    // A team of share consumers computes a block, each its whole 16-key steps.
    EXPECT_EQ(v.knob("consumers", 0) % v.knob("share", 0), 0) << v.key();
    // A ring deeper than a CTA's share of a full row (n = 16 blocks) is not offered.
    EXPECT_TRUE(v.knob("stages", 0) <= 2 || v.knob("stages", 0) <= 16 / split) << v.key();
    const LaunchPlan plan = plan_for(v, RuntimeShape{3, 1, 5000, 4});
    ASSERT_EQ(plan.launches.size(), 1u);
    EXPECT_EQ(plan.launches[0].entry, "nsa_decode_stream");
    EXPECT_EQ(plan.launches[0].block[0], 32u * static_cast<unsigned>(warps)) << v.key();
    EXPECT_EQ(plan.launches[0].grid[0], 12u * static_cast<unsigned>(split)) << v.key();  // (b, g, t) rows x split
    EXPECT_EQ(plan.workspace_bytes, 0u);
    EXPECT_EQ(plan.launches[0].shared_bytes,
              static_cast<unsigned>(nsa_layout::decode_stream_smem(128, 128, 16, 16, 64, v.knob("consumers", 0),
                                                                  v.knob("stages", 0), split, v.knob("tma", 0))));
  }
  EXPECT_EQ(splits, (std::set<int>{1, 2, 4}));
  EXPECT_EQ(shares, (std::set<int>{1, 4}));

  // Splits merge in a cluster: before sm_90 only split 1 is offered, and a split one is refused.
  for (const auto& v : variants_for(kDecode, "sm_80", Design::decode_stream)) EXPECT_EQ(v.knob("split", 0), 1) << v.key();
  KernelVariant clustered = default_variant(Design::decode_stream, kDecode, "sm_90");
  clustered.knobs = {{"tma", 0}, {"split", 2}, {"consumers", 4}, {"producers", 2}, {"stages", 4}, {"share", 1}};
  clustered.arch = "sm_80";
  expect_refused(clustered, RuntimeShape{1, 1, 100, 2}, "thread-block cluster", "a split decode_stream was planned on sm_80");
  KernelVariant crowded = default_variant(Design::decode_stream, kDecode, "sm_90");
  crowded.knobs = {{"tma", 0}, {"split", 2}, {"consumers", 6}, {"producers", 2}, {"stages", 4}, {"share", 1}};  // 8 warps
  EXPECT_TRUE(std::any_of(on_sm90.begin(), on_sm90.end(), [&](const auto& v) { return v.key() == crowded.key(); }))
      << crowded.key() << ": 8 warps are still offered";
  KernelVariant past_share = crowded;
  past_share.knobs = {{"tma", 0}, {"split", 4}, {"consumers", 4}, {"producers", 2}, {"stages", 5}, {"share", 1}};
  expect_refused(past_share, RuntimeShape{1, 1, 100, 2}, "exceeds the 4 blocks a CTA of split=4 owns",
                 "a ring deeper than a CTA's share was planned");
  KernelVariant uneven = crowded;
  uneven.knobs = {{"tma", 0}, {"split", 1}, {"consumers", 6}, {"producers", 2}, {"stages", 4}, {"share", 4}};
  expect_refused(uneven, RuntimeShape{1, 1, 100, 2}, "share=4 does not divide consumers=6",
                 "six consumers were planned in teams of four");
  KernelVariant small_blocks = default_variant(Design::decode_stream, kDecode, "sm_90");
  small_blocks.spec.block = 32;
  small_blocks.knobs = {{"tma", 0}, {"split", 1}, {"consumers", 4}, {"producers", 2}, {"stages", 4}, {"share", 4}};
  expect_refused(small_blocks, RuntimeShape{1, 1, 100, 2}, "not whole 16-key MMA steps",
                 "a 32-key block was planned in four 8-key parts");
  KernelVariant wide = default_variant(Design::decode_stream, kDecode, "sm_90");
  wide.spec = kWideHeads;
  expect_refused(wide, RuntimeShape{1, 1, 100, 2}, "h=32 query heads per group exceed the 16 rows",
                 "decode_stream was planned for 32 heads per group");
  EXPECT_TRUE(variants_for(kWideHeads, "sm_90", Design::decode_stream).empty());
}

TEST(Catalog, PrefillStreamRegisterPlanFollowsTheSchedulers) {
  namespace L = nsa_layout;
  // Warps spread over four schedulers of 16384 registers: up to 2 warps each 255 registers (the
  // ISA's cap), 3 warps each 168 (16384 / 96 rounded down to the allocation unit of 8), 4 warps 128.
  EXPECT_EQ(L::stream_register_budget(4), 255);
  EXPECT_EQ(L::stream_register_budget(8), 255);
  EXPECT_EQ(L::stream_register_budget(9), 168);
  EXPECT_EQ(L::stream_register_budget(12), 168);
  EXPECT_EQ(L::stream_register_budget(16), 128);
  EXPECT_TRUE(L::stream_q_in_registers(8));
  EXPECT_FALSE(L::stream_q_in_registers(12));
  EXPECT_EQ(L::stream_chunk(8, 64), 64);
  EXPECT_EQ(L::stream_chunk(12, 64), 32);
  EXPECT_EQ(L::stream_chunk(16, 128), 16);
  EXPECT_EQ(L::stream_chunk(8, 32), 32);  // never more than a block
  // Shared memory: the union of warps - producers queries, the barriers, a Q tile per consumer,
  // the ring of whole blocks; the 12-warp default for D = 128 fits an H100 with a fifth stage.
  EXPECT_EQ(L::prefill_stream_smem(128, 128, 16, 64, 12, 4, 3, 0),
            L::union_bytes(8, 16) + 128 + 8 * L::q_tile_bytes(128, 1) + 3 * L::kv_stage_bytes(128, 128, 64));
  EXPECT_LE(L::prefill_stream_smem(128, 128, 16, 64, 12, 4, 5, 0), max_dynamic_shared_bytes("sm_90"));
  EXPECT_GT(L::prefill_stream_smem(128, 128, 16, 64, 16, 2, 5, 0), max_dynamic_shared_bytes("sm_90"));
}

TEST(Catalog, StreamingDesignsCopyWithTheTmaOnSm90Only) {
  namespace L = nsa_layout;
  for (Design d : {Design::prefill_stream, Design::decode_stream}) {
    const auto on_sm90 = variants_for(kDecode, "sm_90", d);
    std::set<int> tma_values;
    for (const auto& v : on_sm90) {
      tma_values.insert(v.knob("tma", -1));
      const LaunchPlan plan = plan_for(v, RuntimeShape{2, 1, 5000, 4});
      ASSERT_EQ(plan.launches.size(), 1u);
      if (v.knob("tma", 0) == 1) {
        EXPECT_EQ(v.knob("producers", 0), 1) << v.key() << ": one thread issues every copy";
        // The kernel takes K's and V's tensor maps after SelectionParams, boxes of one block.
        ASSERT_EQ(plan.launches[0].tensor_maps.size(), 2u) << v.key();
        EXPECT_EQ(plan.launches[0].tensor_maps[0], (TensorMapArg{TensorMapArg::Operand::k, 128, 64}));
        EXPECT_EQ(plan.launches[0].tensor_maps[1], (TensorMapArg{TensorMapArg::Operand::v, 128, 64}));
      } else {
        EXPECT_TRUE(plan.launches[0].tensor_maps.empty()) << v.key();
      }
    }
    EXPECT_EQ(tma_values, (std::set<int>{0, 1})) << to_string(d);
    // Older archs have no TMA: every setting there copies with cp.async, and a tma=1 key says why.
    const auto on_sm80 = variants_for(kDecode, "sm_80", d);
    ASSERT_FALSE(on_sm80.empty());
    for (const auto& v : on_sm80) EXPECT_EQ(v.knob("tma", -1), 0) << v.key();
    KernelVariant old_arch = on_sm90.front();
    old_arch.arch = "sm_80";
    expect_refused(old_arch, RuntimeShape{1, 1, 100, 2}, "tensor memory accelerator (sm_90 or newer)",
                   "a TMA variant was planned on sm_80");
    // Panels are 64 elements wide: D = 80 gets no TMA setting.
    FamilySpec narrow = kDecode;
    narrow.d_qk = narrow.d_v = 80;
    for (const auto& v : variants_for(narrow, "sm_90", d)) EXPECT_EQ(v.knob("tma", -1), 0) << v.key();
    KernelVariant narrow_tma = on_sm90.front();
    narrow_tma.spec = narrow;
    expect_refused(narrow_tma, RuntimeShape{1, 1, 100, 2}, "not both multiples of 64", "a TMA variant for D = 80");
    // More producer warps than the one TMA thread's would idle.
    KernelVariant two_producers = on_sm90.front();
    for (auto& [name, value] : two_producers.knobs)
      if (name == "producers") value = 2;
    expect_refused(two_producers, RuntimeShape{1, 1, 100, 2}, "use producers=1", "tma=1 with two producer warps");
  }
  // prefill_stream with persist = 1 (4 warps) is persistent where the device is known: as many
  // CTAs as its SMs hold at once (two of <= 113 KiB, 128 threads at 255 registers), each looping.
  KernelVariant persistent = default_variant(Design::prefill_stream, kDecode, "sm_90");
  ASSERT_EQ(persistent.knob("tma", 0), 1);
  EXPECT_EQ(plan_for(persistent, RuntimeShape{1, 32768, 32768, 4, 132}).launches[0].grid[0], 4u * ((32768 + 10) / 11))
      << "persist=0: a CTA per tile";
  persistent.knobs = {{"tma", 1}, {"warps", 4}, {"producers", 1}, {"stages", 3}, {"persist", 1}};
  EXPECT_EQ(plan_for(persistent, RuntimeShape{1, 32768, 32768, 4, 132}).launches[0].grid[0], 264u);
  EXPECT_EQ(plan_for(persistent, RuntimeShape{1, 32768, 32768, 4}).launches[0].grid[0], 4u * ((32768 + 2) / 3))
      << "an unknown device gets one CTA per work item";
  EXPECT_EQ(plan_for(persistent, RuntimeShape{1, 20, 20, 1, 132}).launches[0].grid[0], 7u) << "never more than items";
  for (const auto& knobs : {std::vector<std::pair<std::string, int>>{{"tma", 1}, {"warps", 4}, {"producers", 1},
                                                                      {"stages", 5}, {"persist", 1}},  // 175 KiB
                             std::vector<std::pair<std::string, int>>{{"tma", 1}, {"warps", 12}, {"producers", 1},
                                                                      {"stages", 5}, {"persist", 1}}}) {
    KernelVariant alone = persistent;
    alone.knobs = knobs;
    expect_refused(alone, RuntimeShape{1, 1, 100, 2}, "where two CTAs share an SM",
                   "a persistent setting with one CTA per SM");
  }
  KernelVariant wide_tma = persistent;
  wide_tma.knobs = {{"tma", 1}, {"warps", 16}, {"producers", 1}, {"stages", 3}, {"persist", 0}};
  expect_refused(wide_tma, RuntimeShape{1, 1, 100, 2}, "use warps <= 12", "a spilling 16-warp TMA setting");
  KernelVariant persistent_copies = persistent;
  persistent_copies.knobs = {{"tma", 0}, {"warps", 12}, {"producers", 2}, {"stages", 5}, {"persist", 1}};
  expect_refused(persistent_copies, RuntimeShape{1, 1, 100, 2}, "use persist=0", "persist=1 with cp.async producers");

  // The swizzled ring has no padding but starts 1024-byte aligned: the layout reserves the slack.
  EXPECT_EQ(L::ring_slot_bytes(128, 128, 64, 1), 64 * 256 * 2);
  EXPECT_EQ(L::ring_slot_bytes(128, 128, 64, 0), L::kv_stage_bytes(128, 128, 64));
  EXPECT_EQ(L::prefill_stream_smem(128, 128, 16, 64, 12, 1, 5, 1),
            2 * L::union_bytes(11, 16) + 128 + 11 * L::q_tile_bytes(128, 1) + L::kTmaAlign + 5 * 64 * 256 * 2);
  EXPECT_LE(L::prefill_stream_smem(128, 128, 16, 64, 12, 1, 5, 1), max_dynamic_shared_bytes("sm_90"));
}
