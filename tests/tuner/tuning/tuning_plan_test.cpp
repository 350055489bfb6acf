// tests/tuner/tuning/tuning_plan_test.cpp: tuner/tuning_plan.cpp.

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "nsa/tuner/tuning_plan.hpp"
#include "tuning_test_support.hpp"

using namespace nsa;
using namespace nsa::tuner;

namespace {

cache::DeviceClass h100() { return {"sm_90", "NVIDIA H100 80GB HBM3", 13000, "13.0", "abcd1234"}; }

cache::Verdict verdict(const cache::DeviceClass& cls, const std::string& family, const std::string& point,
                       bool stale = false, bool experimental = false) {
  cache::Verdict v;
  v.device_class = cls;
  v.family = family;
  v.point = point;
  v.backend = "sdpa";
  v.stale = stale;
  v.experimental = experimental;
  return v;
}

cache::Demand demand(const std::string& family, const std::string& point, std::int64_t count,
                     const std::string& arch = "sm_90") {
  cache::Demand d;
  d.arch = arch;
  d.family = family;
  d.point = point;
  d.count = count;
  return d;
}

const PlannedFamily* find(const TuningPlan& plan, const std::string& family) {
  for (const auto& f : plan.families)
    if (f.family.key() == family) return &f;
  return nullptr;
}

constexpr const char* kPaperDecodeN16 = "bf16.dqk192.dv128.h16.blk64.n16.decode";

}  // namespace

TEST(TuningPlan, DefaultsCoverBothFamiliesEveryNAndBothPhases) {
  PlanInputs in;
  in.device_class = h100();
  in.memory_bytes = 80ull << 30;
  const PlanConfig config;
  const TuningPlan plan = build_plan(config, in);
  EXPECT_FALSE(plan.experimental);
  ASSERT_EQ(plan.families.size(), 12u) << "2 families x 3 n x 2 phases";
  for (const char* dims : {"dqk192.dv128", "dqk128.dv128"})
    for (int n : {8, 16, 32})
      for (const char* phase : {"decode", "prefill"}) {
        const std::string key = std::string("bf16.") + dims + ".h16.blk64.n" + std::to_string(n) + "." + phase;
        const PlannedFamily* f = find(plan, key);
        ASSERT_TRUE(f) << key;
        EXPECT_EQ(f->trigger, "startup");
        EXPECT_EQ(f->points, std::string(phase) == "decode" ? config.decode_points : config.prefill_points) << key;
      }
  EXPECT_EQ(plan.families.front().family.key(), "bf16.dqk192.dv128.h16.blk64.n8.decode")
      << "the paper configuration comes first";
  EXPECT_EQ(plan.point_count(), 6u * 6 + 6u * 3);
  for (const auto& f : plan.families)
    for (const auto& p : f.points) EXPECT_EQ(p.t_q == 1, f.family.phase == api::Phase::decode) << f.family.key();
}

TEST(TuningPlan, PointsWithCurrentVerdictsAreNotPlannedAgain) {
  PlanInputs in;
  in.device_class = h100();
  const PlanConfig config;
  for (const auto& p : config.decode_points) in.verdicts.push_back(verdict(h100(), kPaperDecodeN16, p.key()));
  in.verdicts.push_back(verdict(h100(), "bf16.dqk128.dv128.h16.blk64.n8.decode", "b1.hkv4.tq1.tkv8192"));
  const TuningPlan plan = build_plan(config, in);
  EXPECT_EQ(find(plan, kPaperDecodeN16), nullptr) << "every point of it is measured";
  const PlannedFamily* partial = find(plan, "bf16.dqk128.dv128.h16.blk64.n8.decode");
  ASSERT_TRUE(partial);
  EXPECT_EQ(partial->points.size(), config.decode_points.size() - 1);
  EXPECT_EQ(plan.point_count(), 6u * 6 + 6u * 3 - 6 - 1);
}

TEST(TuningPlan, DemandComesBeforeDefaultsMostRequestedFirst) {
  PlanInputs in;
  in.device_class = h100();
  in.demand = {demand("bf16.dqk64.dv64.h8.blk32.n4.decode", "b2.hkv8.tq1.tkv5000", 10),
               demand("fp16.dqk128.dv128.h4.blk64.n8.prefill", "b1.hkv2.tq100.tkv3000", 7),
               demand("bf16.dqk64.dv64.h8.blk32.n4.decode", "b3.hkv8.tq1.tkv7000", 5),
               demand("fp16.dqk128.dv128.h4.blk64.n8.prefill", "b1.hkv2.tq200.tkv3000", 9),
               demand("bf16.dqk64.dv64.h8.blk32.n4.decode", "b1.hkv8.tq1.tkv100", 1, "sm_80")};
  const TuningPlan plan = build_plan(PlanConfig{}, in);
  ASSERT_GE(plan.families.size(), 2u);
  // 7 + 9 = 16 requests beat 10 + 5 = 15; the sm_80 row belongs to another arch.
  EXPECT_EQ(plan.families[0].family.key(), "fp16.dqk128.dv128.h4.blk64.n8.prefill");
  EXPECT_EQ(plan.families[0].trigger, "demand");
  EXPECT_EQ(plan.families[0].demand, 16);
  EXPECT_EQ(plan.families[1].family.key(), "bf16.dqk64.dv64.h8.blk32.n4.decode");
  EXPECT_EQ(plan.families[1].demand, 15);
  // The demanded points first, then the phase's defaults.
  ASSERT_GE(plan.families[1].points.size(), 2u);
  EXPECT_EQ(plan.families[1].points[0].key(), "b2.hkv8.tq1.tkv5000");
  EXPECT_EQ(plan.families[1].points[1].key(), "b3.hkv8.tq1.tkv7000");
  EXPECT_EQ(plan.families[1].points.size(), 2 + PlanConfig{}.decode_points.size());
  EXPECT_EQ(plan.families[2].trigger, "startup");
}

TEST(TuningPlan, DemandForAFamilyTheKernelsCannotRunIsANoteNotWork) {
  PlanInputs in;
  in.device_class = h100();
  in.demand = {demand("bf16.dqk72.dv64.h8.blk64.n4.decode", "b1.hkv8.tq1.tkv5000", 50)};
  const TuningPlan plan = build_plan(PlanConfig{}, in);
  EXPECT_EQ(find(plan, "bf16.dqk72.dv64.h8.blk64.n4.decode"), nullptr);
  bool noted = false;
  for (const auto& n : plan.notes) noted = noted || (n.find("dqk72") != std::string::npos && n.find("16") != std::string::npos);
  EXPECT_TRUE(noted) << "the note says why (D_qk=72 is not a multiple of 16)";
}

TEST(TuningPlan, PinnedArchIsNotTunedAndItsRequestsAreAnswered) {
  PlanInputs in;
  in.device_class = {"sm_89", "NVIDIA GeForce RTX 4090", 13000, "13.0", "abcd1234"};
  in.pin = cache::Pin{"sm_89", "sdpa", cache::kSm89PinReason, true, "seed", 0};
  in.demand = {demand("bf16.dqk128.dv128.h16.blk64.n16.decode", "b1.hkv4.tq1.tkv8192", 100, "sm_89")};
  cache::RetuneRequest all;
  all.id = 5;
  all.scope = "all";
  cache::RetuneRequest other;
  other.id = 6;
  other.scope = "sm_90";
  in.pending = {all, other};
  const TuningPlan plan = build_plan(PlanConfig{}, in);
  EXPECT_TRUE(plan.empty());
  EXPECT_FALSE(plan.experimental);
  ASSERT_FALSE(plan.notes.empty());
  EXPECT_NE(plan.notes.front().find("sm_89 is pinned"), std::string::npos) << plan.notes.front();
  EXPECT_NE(plan.notes.front().find("NSA_TUNE_EXPERIMENTAL_PINNED=1"), std::string::npos);
  EXPECT_EQ(plan.retune_ids, std::vector<std::int64_t>{5}) << "'all' names sm_89 and is answered; 'sm_90' is not ours";
}

TEST(TuningPlan, ExperimentalOverrideTunesThePinnedArchFlaggedExperimental) {
  PlanInputs in;
  in.device_class = {"sm_89", "NVIDIA GeForce RTX 4090", 13000, "13.0", "abcd1234"};
  in.pin = cache::Pin{"sm_89", "sdpa", cache::kSm89PinReason, true, "seed", 0};
  PlanConfig config;
  config.experimental_pinned = true;
  // A non-experimental verdict cannot exist on a pinned arch; experimental ones count as done.
  in.verdicts.push_back(verdict(in.device_class, kPaperDecodeN16, "b1.hkv4.tq1.tkv8192", false, true));
  const TuningPlan plan = build_plan(config, in);
  EXPECT_TRUE(plan.experimental);
  EXPECT_EQ(plan.families.size(), 12u);
  EXPECT_EQ(find(plan, kPaperDecodeN16)->points.size(), config.decode_points.size() - 1);
}

TEST(TuningPlan, StaleVerdictsOfThisGpuModelAreRetunedAheadOfDefaults) {
  PlanInputs in;
  in.device_class = h100();
  cache::DeviceClass old_driver = h100();
  old_driver.driver_version = 12040;
  cache::DeviceClass other_gpu = old_driver;
  other_gpu.gpu_name = "NVIDIA H100 PCIe";
  PlanConfig config;
  config.families.resize(1);
  config.families[0].n = {16};
  config.phases = {api::Phase::decode};
  in.verdicts.push_back(verdict(old_driver, "bf16.dqk64.dv64.h4.blk64.n16.decode", "b4.hkv2.tq1.tkv4096", true));
  in.verdicts.push_back(verdict(other_gpu, "bf16.dqk64.dv64.h4.blk64.n32.decode", "b4.hkv2.tq1.tkv4096", true));
  const TuningPlan plan = build_plan(config, in);
  ASSERT_EQ(plan.families.size(), 2u);
  EXPECT_EQ(plan.families[0].family.key(), "bf16.dqk64.dv64.h4.blk64.n16.decode");
  EXPECT_EQ(plan.families[0].trigger, "stale");
  EXPECT_EQ(plan.families[0].points, std::vector<api::Point>{*api::Point::parse("b4.hkv2.tq1.tkv4096")});
  EXPECT_EQ(plan.families[1].trigger, "startup");
  EXPECT_EQ(find(plan, "bf16.dqk64.dv64.h4.blk64.n32.decode"), nullptr) << "another GPU model's verdicts are not ours";
}

TEST(TuningPlan, RetuneRequestRemeasuresCurrentPointsAndComesFirst) {
  PlanInputs in;
  in.device_class = h100();
  const PlanConfig config;
  for (const auto& p : config.decode_points) in.verdicts.push_back(verdict(h100(), kPaperDecodeN16, p.key()));
  in.verdicts.push_back(verdict(h100(), kPaperDecodeN16, "b3.hkv4.tq1.tkv9999"));
  cache::RetuneRequest r;
  r.id = 11;
  r.scope = kPaperDecodeN16;
  in.pending = {r};
  const TuningPlan plan = build_plan(config, in);
  ASSERT_FALSE(plan.families.empty());
  EXPECT_EQ(plan.families[0].family.key(), kPaperDecodeN16);
  EXPECT_EQ(plan.families[0].trigger, "retune");
  EXPECT_EQ(plan.families[0].retune_ids, std::vector<std::int64_t>{11});
  EXPECT_EQ(plan.families[0].points.size(), config.decode_points.size() + 1)
      << "the defaults again, and the point measured before";
  EXPECT_EQ(plan.retune_ids, std::vector<std::int64_t>{11});
}

TEST(TuningPlan, RetuneAllCoversDefaultsAndEveryFamilyMeasuredHere) {
  PlanInputs in;
  in.device_class = h100();
  PlanConfig config;
  config.families.resize(1);
  config.families[0].n = {16};
  config.phases = {api::Phase::decode};
  for (const auto& p : config.decode_points) in.verdicts.push_back(verdict(h100(), kPaperDecodeN16, p.key()));
  in.verdicts.push_back(verdict(h100(), "fp16.dqk64.dv64.h2.blk32.n8.decode", "b1.hkv1.tq1.tkv1000"));
  cache::RetuneRequest r;
  r.id = 3;
  r.scope = "sm_90a";  // the feature suffix names the same hardware
  in.pending = {r};
  const TuningPlan plan = build_plan(config, in);
  ASSERT_TRUE(find(plan, kPaperDecodeN16));
  EXPECT_EQ(find(plan, kPaperDecodeN16)->trigger, "retune");
  ASSERT_TRUE(find(plan, "fp16.dqk64.dv64.h2.blk32.n8.decode"));
  EXPECT_EQ(plan.retune_ids, std::vector<std::int64_t>{3});
}

TEST(TuningPlan, RecentlyAttemptedPointsWaitUnlessRetuned) {
  PlanInputs in;
  in.device_class = h100();
  PlanConfig config;
  config.families.resize(1);
  config.families[0].n = {16};
  config.phases = {api::Phase::decode};
  for (const auto& p : config.decode_points) in.recently_attempted.emplace(kPaperDecodeN16, p.key());
  EXPECT_TRUE(build_plan(config, in).empty());
  cache::RetuneRequest r;
  r.id = 1;
  r.scope = "all";
  in.pending = {r};
  EXPECT_EQ(build_plan(config, in).point_count(), config.decode_points.size());
}

TEST(TuningPlan, PointsTooLargeForTheDeviceAreLeftOutWithANote) {
  PlanInputs in;
  in.device_class = h100();
  in.memory_bytes = 8ull << 30;  // 8 GiB: b64 at 32K keys needs more than half of it
  PlanConfig config;
  config.families.resize(1);
  config.families[0].n = {16};
  config.phases = {api::Phase::decode};
  const TuningPlan plan = build_plan(config, in);
  ASSERT_EQ(plan.families.size(), 1u);
  for (const auto& p : plan.families[0].points)
    EXPECT_LE(point_bytes(plan.families[0].family, p), 4ull << 30) << p.key();
  EXPECT_LT(plan.families[0].points.size(), config.decode_points.size());
  bool noted = false;
  for (const auto& n : plan.notes) noted = noted || n.find("b64.hkv4.tq1.tkv32768") != std::string::npos;
  EXPECT_TRUE(noted);
}

TEST(TuningPlan, PointBytesCountsEveryTensorOfOneCopy) {
  const api::Family f = *api::Family::parse("bf16.dqk192.dv128.h16.blk64.n16.decode");
  const api::Point p{2, 4, 1, 1000};
  const std::uint64_t q = 2ull * 1 * 64 * 192 * 2, kv = 2ull * 1000 * 4 * (192 + 128) * 2;
  const std::uint64_t idx = 2ull * 4 * 1 * 16 * 4, o = 2ull * 1 * 64 * 128 * 2;
  EXPECT_EQ(point_bytes(f, p), q + kv + idx + o);
}

TEST(TuningPlan, ScopesNameArchesAndFamilies) {
  EXPECT_FALSE(validate_scope("all"));
  EXPECT_FALSE(validate_scope("sm_90"));
  EXPECT_FALSE(validate_scope("sm_90a"));
  EXPECT_FALSE(validate_scope(kPaperDecodeN16));
  ASSERT_TRUE(validate_scope("h100"));
  EXPECT_NE(validate_scope("h100")->find("is not \"all\""), std::string::npos);
  EXPECT_TRUE(validate_scope("sm90"));
  EXPECT_TRUE(scope_names_arch("all", "sm_89"));
  EXPECT_TRUE(scope_names_arch("sm_90a", "sm_90"));
  EXPECT_FALSE(scope_names_arch("sm_80", "sm_90"));
  const api::Family f = *api::Family::parse(kPaperDecodeN16);
  EXPECT_TRUE(scope_names(kPaperDecodeN16, "sm_80", f));
  EXPECT_FALSE(scope_names("bf16.dqk128.dv128.h16.blk64.n16.decode", "sm_90", f));
  EXPECT_TRUE(scope_names("sm_90", "sm_90", f));
}

TEST(TuningPlan, PlanInputsComeFromARealStore) {
  nsa::tuning_test::TempDir dir;
  auto store = cache::VerdictStore::open(dir.path() / "state.db");
  ASSERT_TRUE(store) << store.error().message;
  ASSERT_TRUE(store->record_demand({demand(kPaperDecodeN16, "b2.hkv4.tq1.tkv4000", 3)}));
  ASSERT_TRUE(store->request_retune("sm_90", "uid:1000"));
  const PlanInputs in = plan_inputs_from(*store, h100(), 80ull << 30, PlanConfig{});
  EXPECT_FALSE(in.pin) << "sm_90 is not pinned";
  ASSERT_EQ(in.demand.size(), 1u);
  ASSERT_EQ(in.pending.size(), 1u);
  const PlanInputs ada = plan_inputs_from(*store, {"sm_89", "NVIDIA GeForce RTX 4090", 13000, "13.0", "x"}, 0, PlanConfig{});
  ASSERT_TRUE(ada.pin) << "a new store carries the seeded SM 8.9 pin";
  EXPECT_TRUE(build_plan(PlanConfig{}, ada).empty());
}

TEST(PlanConfig, DefaultsAreValidAndJsonRoundTrips) {
  const PlanConfig config;
  EXPECT_FALSE(config.validate());
  PlanConfig back;
  back.demand_limit = 1;
  ASSERT_FALSE(parse_plan_config(to_json(config), back));
  EXPECT_EQ(back, config);
}

TEST(PlanConfig, BadEntriesAreErrorsNamingThem) {
  PlanConfig c;
  auto err = [&](const char* text) {
    PlanConfig copy = c;
    auto e = parse_plan_config(nlohmann::json::parse(text), copy);
    EXPECT_EQ(copy, c) << "a failed parse changes nothing";
    return e.value_or("");
  };
  EXPECT_NE(err(R"({"familes": []})").find("unknown key 'familes'"), std::string::npos);
  EXPECT_NE(err(R"({"families": [{"d_qk": 100, "d_v": 128, "h": 16, "block": 64, "n": [16]}]})").find("families[0]"),
            std::string::npos);
  EXPECT_NE(err(R"({"families": [{"d_qk": 128, "n": []}]})").find("families[0].n"), std::string::npos);
  EXPECT_NE(err(R"({"decode_points": ["b1.hkv4.tq8.tkv4096"]})").find("decode_points[0]"), std::string::npos)
      << "a prefill shape among the decode points";
  EXPECT_NE(err(R"({"prefill_points": ["b1.hkv4"]})").find("prefill_points[0]"), std::string::npos);
  EXPECT_NE(err(R"({"phases": ["both"]})").find("phases"), std::string::npos);
  EXPECT_NE(err(R"({"experimental_pinned": "yes"})").find("experimental_pinned"), std::string::npos);
}

TEST(TestFault, ParsesTheDocumentedModesOnly) {
  EXPECT_EQ(parse_test_fault(""), TestFault::none);
  EXPECT_EQ(parse_test_fault("none"), TestFault::none);
  EXPECT_EQ(parse_test_fault("illegal_address"), TestFault::illegal_address);
  EXPECT_EQ(parse_test_fault("hang"), TestFault::hang);
  EXPECT_EQ(parse_test_fault("abort"), TestFault::abort);
  EXPECT_FALSE(parse_test_fault("segfault"));
  EXPECT_EQ(to_string(TestFault::illegal_address), "illegal_address");
}
