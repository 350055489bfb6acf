// Variant keys and preludes: the key must spell every parameter that changes the binary,
// because the compiled-kernel cache trusts that equal keys mean equal code.

#include "nsa/jit/kernel_variant.hpp"

#include <gtest/gtest.h>

#include <set>

#include "nsa/jit/catalog.hpp"

using namespace nsa::jit;

namespace {

KernelVariant sample() {
  KernelVariant v;
  v.design = Design::split_kv;
  v.spec = FamilySpec{ElemType::fp16, 192, 128, 16, 64, 16};
  v.knobs = {{"split", 4}, {"warps", 4}, {"tile", 64}, {"stages", 2}};
  v.arch = "sm_90a";
  return v;
}

}  // namespace

TEST(KernelVariant, KeySpellsEveryParameter) {
  EXPECT_EQ(sample().key(), "sel_fwd.split_kv.dqk192_dv128_h16_blk64_n16_fp16.split4_warps4_tile64_stages2.sm90a");
  KernelVariant plain;
  plain.design = Design::reference;
  plain.arch = "sm_80";
  EXPECT_EQ(plain.key(), "sel_fwd.reference.dqk128_dv128_h16_blk64_n16_bf16.default.sm80");
}

TEST(KernelVariant, ChangingAnyParameterChangesTheKey) {
  const std::string base = sample().key();
  std::vector<KernelVariant> changed(11, sample());
  changed[0].design = Design::query_outer;
  changed[1].spec.dtype = ElemType::bf16;
  changed[2].spec.d_qk = 128;
  changed[3].spec.d_v = 64;
  changed[4].spec.h = 8;
  changed[5].spec.block = 32;
  changed[6].spec.n = 8;
  changed[7].knobs[0].second = 8;
  changed[8].knobs.pop_back();
  changed[9].arch = "sm_90";
  changed[10].knobs[1].first = "warpz";
  std::set<std::string> keys{base};
  for (const auto& v : changed) EXPECT_TRUE(keys.insert(v.key()).second) << v.key();
}

TEST(KernelVariant, PreludeDefinesEveryConstantAndKnob) {
  const std::string p = sample().prelude();
  for (const char* line : {"#define NSA_DQK 192\n", "#define NSA_DV 128\n", "#define NSA_H 16\n", "#define NSA_BLOCK 64\n",
                           "#define NSA_N 16\n", "#define NSA_DTYPE_FP16 1\n", "#define NSA_KNOB_SPLIT 4\n",
                           "#define NSA_KNOB_WARPS 4\n", "#define NSA_KNOB_TILE 64\n", "#define NSA_KNOB_STAGES 2\n"})
    EXPECT_NE(p.find(line), std::string::npos) << line << " missing from\n" << p;
  EXPECT_EQ(p.find("NSA_DTYPE_BF16"), std::string::npos);
}

TEST(KernelVariant, KnobLookupFallsBackWhenAbsent) {
  EXPECT_EQ(sample().knob("split", 0), 4);
  EXPECT_EQ(sample().knob("qtile", 7), 7);
}

TEST(KernelVariant, DesignNamesAndSparsity) {
  EXPECT_EQ(to_string(Design::prefill_shared), "prefill_shared");
  EXPECT_EQ(to_string(Design::sdpa_packed), "sdpa_packed");
  EXPECT_FALSE(is_sparse(Design::reference));
  EXPECT_FALSE(is_sparse(Design::sdpa_packed));
  EXPECT_TRUE(is_sparse(Design::query_outer));
  EXPECT_TRUE(is_sparse(Design::split_kv));
  EXPECT_TRUE(is_sparse(Design::prefill_shared));
}

TEST(KernelVariant, EveryCatalogVariantHasItsOwnKey) {
  std::set<std::string> keys;
  std::size_t total = 0;
  for (const char* arch : {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"})
    for (auto dtype : {ElemType::bf16, ElemType::fp16})
      for (int dqk : {128, 192}) {
        FamilySpec f{dtype, dqk, 128, 16, 64, 16};
        for (const auto& v : all_variants(f, arch)) {
          ++total;
          EXPECT_TRUE(keys.insert(v.key()).second) << "duplicate key " << v.key();
        }
      }
  EXPECT_GT(total, 0u);
}

TEST(KernelVariant, ParseReadsBackEveryKeyTheCatalogMakes) {
  std::size_t checked = 0;
  for (const char* arch : {"sm_80", "sm_89", "sm_90", "sm_90a"})
    for (auto dtype : {ElemType::bf16, ElemType::fp16})
      for (int dqk : {128, 192}) {
        FamilySpec f{dtype, dqk, 128, 16, 64, 16};
        for (const auto& v : all_variants(f, arch)) {
          auto parsed = KernelVariant::parse(v.key());
          ASSERT_TRUE(parsed) << v.key();
          EXPECT_EQ(parsed->key(), v.key());
          EXPECT_EQ(parsed->design, v.design);
          EXPECT_EQ(parsed->spec, v.spec);
          EXPECT_EQ(parsed->knobs, v.knobs);
          EXPECT_EQ(parsed->arch, arch);
          ++checked;
        }
      }
  EXPECT_GT(checked, 40u);
  // A variant without knobs round-trips through its "default" segment; so does a hand-made one.
  KernelVariant plain;
  plain.design = Design::reference;
  plain.arch = "sm_80";
  auto p = KernelVariant::parse(plain.key());
  ASSERT_TRUE(p);
  EXPECT_TRUE(p->knobs.empty());
  EXPECT_EQ(p->arch, "sm_80");
  auto s = KernelVariant::parse(sample().key());
  ASSERT_TRUE(s);
  EXPECT_EQ(s->knobs, sample().knobs);
  EXPECT_EQ(s->spec, sample().spec);
  EXPECT_EQ(s->arch, "sm_90a");
}

TEST(KernelVariant, ParseRejectsWhatKeyWouldNotProduce) {
  for (const char* bad : {"", "sel_fwd", "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps4.sm90.x",
                          "sel_bwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps4.sm90",
                          "sel_fwd.bogus.dqk128_dv128_h16_blk64_n16_bf16.warps4.sm90",
                          "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf32.warps4.sm90",
                          "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16.warps4.sm90",
                          "sel_fwd.query_outer.dv128_dqk128_h16_blk64_n16_bf16.warps4.sm90",
                          "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps4.gfx90",
                          "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps4.sm",
                          "sel_fwd.query_outer.dqk0128_dv128_h16_blk64_n16_bf16.warps4.sm90",
                          "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps.sm90",
                          "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.4warps.sm90",
                          "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps+4.sm90",
                          "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16..sm90",
                          "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps99999999999.sm90"})
    EXPECT_FALSE(KernelVariant::parse(bad)) << bad;
}
