// The decision rules on recorded measurement tables. The tables are written the way the tuner
// records them (one row per candidate at a point); the numbers are chosen to sit on either side
// of each threshold.

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "../cache/store_test_support.hpp"
#include "nsa/tuner/verdict_policy.hpp"

namespace nsa::tuner {
namespace {

using cache::Measurement;
using cache::MeasurementStatus;
using Result = CandidateOutcome::Result;

const std::string kFamily = "bf16.dqk128.dv128.h16.blk64.n16.decode";
const std::string kPoint = "b8.hkv4.tq1.tkv32768";

Measurement row(std::string backend, std::string variant, double us, double rel_l2,
                MeasurementStatus status = MeasurementStatus::ok, std::string detail = "",
                const std::string& family = kFamily, const std::string& point = kPoint) {
  Measurement m;
  m.run_id = 1;
  m.family = family;
  m.point = point;
  m.backend = std::move(backend);
  m.variant = std::move(variant);
  m.median_us = us;
  m.spread_us = us * 0.02;
  m.rel_l2 = rel_l2;
  m.max_abs = rel_l2 * 4;
  m.status = status;
  m.detail = std::move(detail);
  return m;
}

Measurement baseline(double us = 100.0, double rel_l2 = 2e-3) { return row("sdpa", "", us, rel_l2); }

cache::DeviceClass h100() { return cache::testing::h100_class(); }

const CandidateOutcome& outcome(const PointDecision& d, const std::string& variant) {
  for (const auto& c : d.candidates)
    if (c.measurement.variant == variant) return c;
  throw std::runtime_error("no candidate " + variant);
}

TEST(VerdictPolicy, FastestCandidateThatPassesTheGateWinsAboveTheMargin) {
  // The example of verdict_policy.hpp.
  std::vector<Measurement> table{baseline(), row("sparse", "A", 33, 2e-2), row("sparse", "B", 80, 3e-3),
                                 row("sparse", "C", 90, 2e-3)};
  auto d = decide_point(table, h100(), false);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->verdict.backend, "sparse");
  EXPECT_EQ(d->verdict.variant, "B");
  EXPECT_DOUBLE_EQ(d->verdict.speedup, 100.0 / 80.0);
  EXPECT_DOUBLE_EQ(d->verdict.best_us, 80);
  EXPECT_DOUBLE_EQ(d->verdict.baseline_us, 100);
  EXPECT_DOUBLE_EQ(d->verdict.rel_l2, 3e-3);
  EXPECT_DOUBLE_EQ(d->verdict.baseline_rel_l2, 2e-3);
  EXPECT_EQ(d->verdict.family, kFamily);
  EXPECT_EQ(d->verdict.point, kPoint);
  EXPECT_EQ(d->verdict.run_id, 1);
  EXPECT_EQ(d->verdict.device_class, h100());
  EXPECT_FALSE(d->verdict.experimental);
  EXPECT_NE(d->verdict.reason.find("1.25x"), std::string::npos) << d->verdict.reason;
  EXPECT_NE(d->verdict.reason.find("2 of 3"), std::string::npos) << d->verdict.reason;

  EXPECT_EQ(outcome(*d, "A").result, Result::gate_relative);
  EXPECT_EQ(outcome(*d, "B").result, Result::winner);
  EXPECT_EQ(outcome(*d, "C").result, Result::slower);
  EXPECT_NE(outcome(*d, "C").reason.find("slower than B"), std::string::npos);
}

TEST(VerdictPolicy, AThreeTimesFasterVariantWithTenTimesTheErrorIsRejected) {
  std::vector<Measurement> table{baseline(90, 1.5e-3), row("sparse", "fast_but_wrong", 30, 1.5e-2)};
  auto d = decide_point(table, h100(), false);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->verdict.backend, "sdpa");
  const auto& c = outcome(*d, "fast_but_wrong");
  EXPECT_EQ(c.result, Result::gate_relative);
  EXPECT_FALSE(c.passed_gate());
  EXPECT_DOUBLE_EQ(c.speedup, 3.0);
  EXPECT_NE(c.reason.find("10.00x the baseline's"), std::string::npos) << c.reason;
  // The verdict still names what was rejected and why, for the report.
  EXPECT_EQ(d->verdict.variant, "fast_but_wrong");
  EXPECT_DOUBLE_EQ(d->verdict.speedup, 3.0);
  EXPECT_NE(d->verdict.reason.find("no candidate passed the numerics gate"), std::string::npos);
  EXPECT_NE(d->verdict.reason.find("numerics"), std::string::npos);
}

TEST(VerdictPolicy, MarginIsInclusiveAndJustBelowItKeepsSdpa) {
  auto at_margin = decide_point({baseline(120, 2e-3), row("sparse", "V", 100, 2e-3)}, h100(), false);
  ASSERT_TRUE(at_margin);
  EXPECT_EQ(at_margin->verdict.backend, "sparse") << "exactly 1.20x meets the 1.2 margin";

  auto below = decide_point({baseline(119, 2e-3), row("sparse", "V", 100, 2e-3)}, h100(), false);
  ASSERT_TRUE(below);
  EXPECT_EQ(below->verdict.backend, "sdpa");
  EXPECT_EQ(below->verdict.variant, "V") << "the best loser is named";
  EXPECT_EQ(outcome(*below, "V").result, Result::best_below_margin);
  EXPECT_NE(below->verdict.reason.find("below the 1.20x margin"), std::string::npos) << below->verdict.reason;

  PolicyConfig lenient;
  lenient.margin = 1.1;
  auto with_config = decide_point({baseline(119, 2e-3), row("sparse", "V", 100, 2e-3)}, h100(), false, lenient);
  ASSERT_TRUE(with_config);
  EXPECT_EQ(with_config->verdict.backend, "sparse");
}

TEST(VerdictPolicy, GateFactorIsInclusiveAndConfigurable) {
  auto at_factor = decide_point({baseline(100, 2e-3), row("sparse", "V", 50, 4e-3)}, h100(), false);
  ASSERT_TRUE(at_factor);
  EXPECT_EQ(at_factor->verdict.backend, "sparse") << "exactly 2x the baseline's error passes";

  auto over = decide_point({baseline(100, 2e-3), row("sparse", "V", 50, 4.1e-3)}, h100(), false);
  ASSERT_TRUE(over);
  EXPECT_EQ(over->verdict.backend, "sdpa");

  PolicyConfig strict;
  strict.gate_factor = 1.5;
  auto strict_d = decide_point({baseline(100, 2e-3), row("sparse", "V", 50, 3.5e-3)}, h100(), false, strict);
  ASSERT_TRUE(strict_d);
  EXPECT_EQ(strict_d->verdict.backend, "sdpa");
}

TEST(VerdictPolicy, AbsoluteBoundDependsOnTheDtype) {
  // bf16: baseline 1.5e-2, candidate 2.5e-2 is within 2x but above the bf16 bound 2e-2.
  auto bf16 = decide_point({baseline(100, 1.5e-2), row("sparse", "V", 50, 2.5e-2)}, h100(), false);
  ASSERT_TRUE(bf16);
  EXPECT_EQ(bf16->verdict.backend, "sdpa");
  EXPECT_EQ(outcome(*bf16, "V").result, Result::gate_absolute);
  EXPECT_NE(outcome(*bf16, "V").reason.find("bf16 bound"), std::string::npos);

  // The same 4e-3 error passes bf16 (2e-2) and fp16 (5e-3); 6e-3 fails fp16 only.
  const std::string fp16 = "fp16.dqk128.dv128.h16.blk64.n16.decode";
  auto fp16_ok = decide_point({row("sdpa", "", 100, 3.5e-3, MeasurementStatus::ok, "", fp16),
                               row("sparse", "V", 50, 4e-3, MeasurementStatus::ok, "", fp16)},
                              h100(), false);
  ASSERT_TRUE(fp16_ok);
  EXPECT_EQ(fp16_ok->verdict.backend, "sparse");
  auto fp16_bad = decide_point({row("sdpa", "", 100, 3.5e-3, MeasurementStatus::ok, "", fp16),
                                row("sparse", "V", 50, 6e-3, MeasurementStatus::ok, "", fp16)},
                               h100(), false);
  ASSERT_TRUE(fp16_bad);
  EXPECT_EQ(fp16_bad->verdict.backend, "sdpa");
  EXPECT_EQ(outcome(*fp16_bad, "V").result, Result::gate_absolute);
  EXPECT_NE(outcome(*fp16_bad, "V").reason.find("fp16 bound"), std::string::npos);
}

TEST(VerdictPolicy, FailedCandidatesKeepTheirStatusAndDetail) {
  std::vector<Measurement> table{
      baseline(),
      row("sparse", "crash", 0, 0, MeasurementStatus::crashed, "illegal memory access"),
      row("sparse", "hang", 0, 0, MeasurementStatus::timeout, "watchdog after 2 s"),
      row("sparse", "nvrtc", 0, 0, MeasurementStatus::compile_failed, "too many resources requested"),
      row("sparse", "nan", 40, std::nan("")),
      row("sparse", "zero", 0, 1e-3),
      row("sparse", "ok", 70, 2e-3)};
  auto d = decide_point(table, h100(), false);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->verdict.backend, "sparse");
  EXPECT_EQ(d->verdict.variant, "ok");
  EXPECT_EQ(outcome(*d, "crash").result, Result::failed);
  EXPECT_EQ(outcome(*d, "crash").reason, "crashed: illegal memory access");
  EXPECT_EQ(outcome(*d, "hang").reason, "timeout: watchdog after 2 s");
  EXPECT_EQ(outcome(*d, "nvrtc").reason, "compile_failed: too many resources requested");
  EXPECT_EQ(outcome(*d, "nan").result, Result::gate_not_finite);
  EXPECT_EQ(outcome(*d, "zero").result, Result::bad_timing);
  EXPECT_EQ(d->candidates.size(), 6u);
}

TEST(VerdictPolicy, NoUsableCandidateKeepsSdpaAndSaysWhy) {
  auto d = decide_point({baseline(), row("sparse", "a", 0, 0, MeasurementStatus::compile_failed),
                         row("sparse", "b", 0, 0, MeasurementStatus::compile_failed),
                         row("sparse", "c", 0, 0, MeasurementStatus::crashed)},
                        h100(), false);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->verdict.backend, "sdpa");
  EXPECT_EQ(d->verdict.variant, "");
  EXPECT_TRUE(std::isnan(d->verdict.rel_l2));
  EXPECT_NE(d->verdict.reason.find("2 compile_failed"), std::string::npos) << d->verdict.reason;
  EXPECT_NE(d->verdict.reason.find("1 crashed"), std::string::npos);

  auto none = decide_point({baseline()}, h100(), false);
  ASSERT_TRUE(none);
  EXPECT_EQ(none->verdict.backend, "sdpa");
  EXPECT_EQ(none->verdict.reason, "no sparse candidate was measured");
}

TEST(VerdictPolicy, TablesThatCannotBeDecidedAreErrors) {
  EXPECT_EQ(decide_point({}, h100(), false).error().code, "empty");
  EXPECT_EQ(decide_point({row("sparse", "V", 50, 1e-3)}, h100(), false).error().code, "no_baseline");
  auto failed_baseline = decide_point({row("sdpa", "", 0, 0, MeasurementStatus::crashed), row("sparse", "V", 50, 1e-3)},
                                      h100(), false);
  ASSERT_FALSE(failed_baseline);
  EXPECT_EQ(failed_baseline.error().code, "no_baseline");
  EXPECT_NE(failed_baseline.error().message.find("crashed"), std::string::npos);
  EXPECT_EQ(decide_point({baseline(), baseline()}, h100(), false).error().code, "ambiguous_baseline");
  EXPECT_EQ(decide_point({baseline(0, 1e-3)}, h100(), false).error().code, "bad_baseline");
  EXPECT_EQ(decide_point({baseline(10, std::nan(""))}, h100(), false).error().code, "bad_baseline");

  auto other_point = row("sparse", "V", 50, 1e-3, MeasurementStatus::ok, "", kFamily, "b1.hkv4.tq1.tkv1024");
  EXPECT_EQ(decide_point({baseline(), other_point}, h100(), false).error().code, "mixed_point");
  auto other_run = row("sparse", "V", 50, 1e-3);
  other_run.run_id = 2;
  EXPECT_EQ(decide_point({baseline(), other_run}, h100(), false).error().code, "mixed_run");
  auto bad_family = decide_point({row("sdpa", "", 10, 1e-3, MeasurementStatus::ok, "", "bf16.garbage")}, h100(), false);
  ASSERT_FALSE(bad_family);
  EXPECT_EQ(bad_family.error().code, "bad_family");
  EXPECT_NE(bad_family.error().message.find("bf16.garbage"), std::string::npos);

  PolicyConfig silly;
  silly.margin = 0.9;
  auto bad_config = decide_point({baseline()}, h100(), false, silly);
  ASSERT_FALSE(bad_config);
  EXPECT_EQ(bad_config.error().code, "bad_config");
  EXPECT_NE(bad_config.error().message.find("margin 0.9"), std::string::npos);
}

TEST(VerdictPolicy, DecisionsAreAcceptedByARealStore) {
  cache::testing::TempDir dir;
  auto store = cache::VerdictStore::open(dir / "state.db");
  ASSERT_TRUE(store);
  cache::TuningRun run;
  run.device_class = h100();
  auto run_id = store->begin_run(run);
  ASSERT_TRUE(run_id);
  std::vector<Measurement> table{baseline(), row("sparse", "B", 80, 3e-3), row("sparse", "A", 33, 2e-2)};
  for (auto& m : table) {
    m.run_id = *run_id;
    ASSERT_TRUE(store->add_measurement(m));
  }
  auto groups = group_by_point(store->measurements(*run_id));
  ASSERT_EQ(groups.size(), 1u);
  auto d = decide_point(groups[0], h100(), false);
  ASSERT_TRUE(d) << d.error().message;
  ASSERT_TRUE(store->put_verdict(d->verdict));
  auto current = store->current_verdicts(h100());
  ASSERT_EQ(current.size(), 1u);
  EXPECT_EQ(current[0].variant, "B");
  EXPECT_EQ(current[0].run_id, *run_id);
  EXPECT_EQ(current[0].reason, d->verdict.reason);
}

TEST(VerdictPolicy, GroupByPointKeepsFirstAppearanceOrder) {
  auto p2 = [](std::string backend) {
    return row(std::move(backend), "", 10, 1e-3, MeasurementStatus::ok, "", kFamily, "b1.hkv4.tq1.tkv1024");
  };
  auto groups = group_by_point({baseline(), p2("sdpa"), row("sparse", "V", 5, 1e-3), p2("sparse")});
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0][0].point, kPoint);
  EXPECT_EQ(groups[0].size(), 2u);
  EXPECT_EQ(groups[1][0].point, "b1.hkv4.tq1.tkv1024");
  EXPECT_EQ(groups[1].size(), 2u);
}

// Selected-length thresholds --------------------------------------------------------------------

cache::Verdict verdict(const std::string& family, const std::string& point, const std::string& backend) {
  cache::Verdict v;
  v.device_class = h100();
  v.family = family;
  v.point = point;
  v.backend = backend;
  return v;
}

std::string fam(int n, int block = 64, const std::string& phase = "decode", const std::string& dtype = "bf16") {
  return dtype + ".dqk128.dv128.h16.blk" + std::to_string(block) + ".n" + std::to_string(n) + "." + phase;
}

TEST(SelectedLength, SmallestNFromWhichSparseWinsAtEveryLargerN) {
  // n=4 loses, 8 wins, 16 loses, 32 and 64 win: the threshold is 32 * 64 = 2048, not 8 * 64.
  std::vector<cache::Verdict> vs{verdict(fam(4), "p1", "sdpa"),   verdict(fam(8), "p1", "sparse"),
                                 verdict(fam(16), "p1", "sdpa"),  verdict(fam(32), "p1", "sparse"),
                                 verdict(fam(64), "p1", "sparse")};
  auto thresholds = selected_length_thresholds(vs);
  ASSERT_EQ(thresholds.size(), 1u);
  EXPECT_EQ(thresholds[0].group, "bf16.dqk128.dv128.h16.blk64.n*.decode");
  EXPECT_EQ(thresholds[0].block, 64);
  EXPECT_EQ(thresholds[0].measured_n, (std::vector<int>{4, 8, 16, 32, 64}));
  EXPECT_EQ(thresholds[0].winning_n, (std::vector<int>{8, 32, 64}));
  EXPECT_EQ(thresholds[0].min_selected_length, 2048);
  EXPECT_EQ(min_selected_length(vs, fam(4)), 2048) << "every family of the group shares it";
}

TEST(SelectedLength, NeverWhenTheLargestMeasuredNLoses) {
  std::vector<cache::Verdict> vs{verdict(fam(8), "p1", "sparse"), verdict(fam(16), "p1", "sdpa")};
  EXPECT_EQ(min_selected_length(vs, fam(8)), std::nullopt);
  EXPECT_EQ(min_selected_length({}, fam(8)), std::nullopt);
}

TEST(SelectedLength, OneLosingPointMeansTheNDoesNotWin) {
  std::vector<cache::Verdict> vs{verdict(fam(16), "b1.hkv4.tq1.tkv8192", "sparse"),
                                 verdict(fam(16), "b64.hkv4.tq1.tkv8192", "sdpa"),
                                 verdict(fam(32), "b1.hkv4.tq1.tkv8192", "sparse"),
                                 verdict(fam(32), "b64.hkv4.tq1.tkv8192", "sparse")};
  EXPECT_EQ(min_selected_length(vs, fam(16)), 32 * 64);
}

TEST(SelectedLength, FamiliesThatDifferInMoreThanNAreSeparateGroups) {
  std::vector<cache::Verdict> vs{verdict(fam(8), "p", "sparse"),
                                 verdict(fam(16, 32), "p", "sparse"),
                                 verdict(fam(16, 64, "prefill"), "p", "sdpa"),
                                 verdict(fam(4, 64, "decode", "fp16"), "p", "sparse"),
                                 verdict("not.a.family", "p", "sparse")};
  auto thresholds = selected_length_thresholds(vs);
  ASSERT_EQ(thresholds.size(), 4u) << "the unparsable family is ignored";
  EXPECT_EQ(min_selected_length(vs, fam(8)), 8 * 64);
  EXPECT_EQ(min_selected_length(vs, fam(16, 32)), 16 * 32);
  EXPECT_EQ(min_selected_length(vs, fam(16, 64, "prefill")), std::nullopt);
  EXPECT_EQ(min_selected_length(vs, fam(4, 64, "decode", "fp16")), 4 * 64);
  EXPECT_EQ(min_selected_length(vs, "not.a.family"), std::nullopt);
}

TEST(PolicyConfig, DefaultsAreTheIssueDefaultsAndValidate) {
  PolicyConfig c;
  EXPECT_DOUBLE_EQ(c.margin, 1.2);
  EXPECT_DOUBLE_EQ(c.gate_factor, 2.0);
  EXPECT_DOUBLE_EQ(c.abs_bound(api::DType::bf16), 2e-2);
  EXPECT_DOUBLE_EQ(c.abs_bound(api::DType::fp16), 5e-3);
  EXPECT_FALSE(c.validate());
  c.gate_factor = 0.5;
  EXPECT_TRUE(c.validate());
  c = PolicyConfig{};
  c.fp16_abs_bound = 0;
  EXPECT_TRUE(c.validate());
}

}  // namespace
}  // namespace nsa::tuner
