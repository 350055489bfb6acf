// The store's behaviour on real SQLite files: round trips of every table, pins, the epoch,
// verdict history and staleness, demand, compiled kernels, retune requests.

#include <cmath>
#include <string>

#include "nsa/cache/records.hpp"
#include "nsa/cache/verdict_store.hpp"
#include "store_test_support.hpp"

namespace nsa::cache {
namespace {

using testing::ada_class;
using testing::h100_class;
using testing::RawDb;
using testing::sample_verdict;
using Store = testing::StoreTest;

TEST_F(Store, NewStoreHasCurrentSchemaWalAndTheSeededSm89Pin) {
  auto store = open_store();
  EXPECT_EQ(store.schema_version(), VerdictStore::current_schema_version());
  EXPECT_EQ(store.path(), db_path);

  auto pins = store.pins();
  ASSERT_EQ(pins.size(), 1u);
  EXPECT_EQ(pins[0].arch, "sm_89");
  EXPECT_EQ(pins[0].backend, "sdpa");
  EXPECT_TRUE(pins[0].seeded);
  EXPECT_EQ(pins[0].created_by, "seed");
  EXPECT_EQ(pins[0].reason, kSm89PinReason);
  EXPECT_GT(pins[0].created_at, 0);

  RawDb raw(db_path);
  EXPECT_EQ(raw.scalar("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(raw.scalar("PRAGMA user_version"), std::to_string(VerdictStore::current_schema_version()));
}

TEST_F(Store, SeedPinReasonSummarisesTheAdr) {
  std::string reason = kSm89PinReason;
  for (const char* fact : {"SM 8.9", "RTX 4090", "Ada", "4-25x", "150x", "packed SDPA", "M4-02",
                           "2025-08-20"})
    EXPECT_NE(reason.find(fact), std::string::npos) << "reason lacks " << fact;
}

TEST_F(Store, ReopenKeepsRowsEpochAndDoesNotReseed) {
  std::int64_t epoch = 0;
  {
    auto store = open_store();
    ASSERT_TRUE(store.put_verdict(sample_verdict(h100_class())));
    epoch = store.epoch();
  }
  auto store = open_store();
  EXPECT_EQ(store.epoch(), epoch) << "reopening must not bump the epoch (the seed pin exists)";
  EXPECT_EQ(store.latest_verdicts(std::nullopt).size(), 1u);
  EXPECT_EQ(store.pins().size(), 1u);
}

TEST_F(Store, SeededPinCannotBeRemovedOrReplaced) {
  auto store = open_store();
  auto removed = store.remove_pin("sm_89");
  ASSERT_FALSE(removed);
  EXPECT_EQ(removed.error().code, "refused");
  EXPECT_NE(removed.error().message.find("sm_89"), std::string::npos);

  auto replaced = store.add_pin(Pin{"sm_89", "sdpa", "operator thinks otherwise", false, "uid:1000", 0});
  ASSERT_FALSE(replaced);
  EXPECT_EQ(replaced.error().code, "refused");

  auto pin = store.pin_for("sm_89");
  ASSERT_TRUE(pin);
  EXPECT_TRUE(pin->seeded);
  EXPECT_EQ(pin->reason, kSm89PinReason);
}

TEST_F(Store, OperatorPinCanBeAddedReplacedAndRemoved) {
  auto store = open_store();
  ASSERT_TRUE(store.add_pin(Pin{"sm_80", "sdpa", "A100 kernels under investigation", false, "uid:1000", 0}));
  auto pin = store.pin_for("sm_80");
  ASSERT_TRUE(pin);
  EXPECT_FALSE(pin->seeded);
  EXPECT_EQ(pin->created_by, "uid:1000");
  EXPECT_EQ(pin->reason, "A100 kernels under investigation");

  ASSERT_TRUE(store.add_pin(Pin{"sm_80", "sdpa", "still investigating", false, "uid:1001", 0}));
  EXPECT_EQ(store.pin_for("sm_80")->reason, "still investigating");
  EXPECT_EQ(store.pins().size(), 2u);

  ASSERT_TRUE(store.remove_pin("sm_80"));
  EXPECT_FALSE(store.pin_for("sm_80"));
  auto again = store.remove_pin("sm_80");
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, "not_found");
}

TEST_F(Store, BadPinsAreRejectedWithTheReason) {
  auto store = open_store();
  auto bad_arch = store.add_pin(Pin{"hopper", "sdpa", "r", false, "", 0});
  ASSERT_FALSE(bad_arch);
  EXPECT_EQ(bad_arch.error().code, "invalid");
  EXPECT_NE(bad_arch.error().message.find("hopper"), std::string::npos);

  auto sparse = store.add_pin(Pin{"sm_90", "sparse", "r", false, "", 0});
  ASSERT_FALSE(sparse);
  EXPECT_EQ(sparse.error().code, "invalid");

  auto no_reason = store.add_pin(Pin{"sm_90", "sdpa", "", false, "", 0});
  ASSERT_FALSE(no_reason);
  EXPECT_EQ(no_reason.error().code, "invalid");

  auto seeded = store.add_pin(Pin{"sm_90", "sdpa", "r", true, "", 0});
  ASSERT_FALSE(seeded);
  EXPECT_EQ(seeded.error().code, "invalid");
  EXPECT_FALSE(store.pin_for("sm_90"));
}

TEST_F(Store, PinsAndVerdictsBumpTheEpochButExperimentalVerdictsDoNot) {
  auto store = open_store();
  std::int64_t e0 = store.epoch();

  ASSERT_TRUE(store.put_verdict(sample_verdict(h100_class())));
  std::int64_t e1 = store.epoch();
  EXPECT_EQ(e1, e0 + 1);

  ASSERT_TRUE(store.add_pin(Pin{"sm_80", "sdpa", "why", false, "op", 0}));
  std::int64_t e2 = store.epoch();
  EXPECT_EQ(e2, e1 + 1);

  ASSERT_TRUE(store.remove_pin("sm_80"));
  std::int64_t e3 = store.epoch();
  EXPECT_EQ(e3, e2 + 1);

  Verdict experiment = sample_verdict(ada_class());
  experiment.experimental = true;
  ASSERT_TRUE(store.put_verdict(experiment));
  EXPECT_EQ(store.epoch(), e3) << "experimental verdicts never change an answer";

  // Failed writes do not move it either.
  EXPECT_FALSE(store.remove_pin("sm_89"));
  EXPECT_EQ(store.epoch(), e3);
}

TEST_F(Store, DeviceUpsertRoundTripsAndUpdatesByUuid) {
  auto store = open_store();
  DeviceRecord d{0, "GPU-8f1c0000-1111", "NVIDIA H100 80GB HBM3", "sm_90", 132,
                 85'899'345'920ull, 13000, "13.0", 1'700'000'000};
  ASSERT_TRUE(store.upsert_device(d));
  DeviceRecord d2{1, "GPU-22220000-3333", "NVIDIA H100 80GB HBM3", "sm_90", 132,
                  85'899'345'920ull, 13000, "13.0", 0};
  ASSERT_TRUE(store.upsert_device(d2));

  d.driver_version = 13010;
  d.seen_at = 1'700'000'100;
  ASSERT_TRUE(store.upsert_device(d));

  auto devices = store.devices();
  ASSERT_EQ(devices.size(), 2u);
  EXPECT_EQ(devices[0].uuid, d.uuid);
  EXPECT_EQ(devices[0].driver_version, 13010);
  EXPECT_EQ(devices[0].memory_bytes, 85'899'345'920ull);
  EXPECT_EQ(devices[0].seen_at, 1'700'000'100);
  EXPECT_EQ(devices[0].sm_count, 132);
  EXPECT_EQ(devices[1].ordinal, 1);
  EXPECT_GT(devices[1].seen_at, 0) << "seen_at 0 means now";

  DeviceClass cls = class_of(devices[0], "hash");
  EXPECT_EQ(cls, (DeviceClass{"sm_90", "NVIDIA H100 80GB HBM3", 13010, "13.0", "hash"}));

  auto nameless = store.upsert_device(DeviceRecord{});
  ASSERT_FALSE(nameless);
  EXPECT_EQ(nameless.error().code, "invalid");
}

TEST_F(Store, RunsAndMeasurementsRoundTripWithEveryStatus) {
  auto store = open_store();
  TuningRun run;
  run.device_class = h100_class();
  run.device_uuid = "GPU-1";
  run.trigger = "startup";
  run.note = "default plan";
  auto run_id = store.begin_run(run);
  ASSERT_TRUE(run_id) << run_id.error().message;

  const MeasurementStatus statuses[] = {MeasurementStatus::ok, MeasurementStatus::numerics_failed,
                                        MeasurementStatus::compile_failed, MeasurementStatus::crashed,
                                        MeasurementStatus::timeout, MeasurementStatus::skipped};
  int i = 0;
  for (auto status : statuses) {
    Measurement m;
    m.run_id = *run_id;
    m.family = "bf16.dqk128.dv128.h16.blk64.n16.decode";
    m.point = "b1.hkv4.tq1.tkv8192";
    m.backend = i == 0 ? "sdpa" : "sparse";
    m.variant = i == 0 ? "" : "variant" + std::to_string(i);
    m.median_us = 10.0 + i;
    m.spread_us = 0.5;
    m.rel_l2 = status == MeasurementStatus::numerics_failed ? std::nan("") : 1e-3 * (i + 1);
    m.max_abs = 0.01;
    m.status = status;
    m.detail = to_string(status) + " detail";
    ASSERT_TRUE(store.add_measurement(m));
    ++i;
  }
  auto rows = store.measurements(*run_id);
  ASSERT_EQ(rows.size(), 6u);
  for (int k = 0; k < 6; ++k) {
    EXPECT_EQ(rows[k].status, statuses[k]);
    EXPECT_EQ(rows[k].run_id, *run_id);
    EXPECT_DOUBLE_EQ(rows[k].median_us, 10.0 + k);
    EXPECT_EQ(rows[k].detail, to_string(statuses[k]) + " detail");
  }
  EXPECT_EQ(rows[0].backend, "sdpa");
  EXPECT_EQ(rows[0].variant, "");
  EXPECT_TRUE(std::isnan(rows[1].rel_l2)) << "a NaN error must survive the round trip";
  EXPECT_DOUBLE_EQ(rows[2].rel_l2, 3e-3);

  ASSERT_TRUE(store.finish_run(*run_id, RunStatus::finished, "12 points"));
  auto runs = store.runs();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].status, RunStatus::finished);
  EXPECT_EQ(runs[0].device_class, h100_class());
  EXPECT_EQ(runs[0].trigger, "startup");
  EXPECT_EQ(runs[0].note, "12 points");
  EXPECT_GE(runs[0].finished_at, runs[0].started_at);
  EXPECT_TRUE(store.measurements(*run_id + 100).empty());
}

TEST_F(Store, RunsListNewestFirst) {
  auto store = open_store();
  TuningRun run;
  run.device_class = h100_class();
  auto a = store.begin_run(run);
  auto b = store.begin_run(run);
  ASSERT_TRUE(a && b);
  auto runs = store.runs(1);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].id, *b);
}

TEST_F(Store, MeasurementsNeedARunningRun) {
  auto store = open_store();
  Measurement m;
  m.run_id = 42;
  m.family = "f";
  m.point = "p";
  m.backend = "sdpa";
  auto unknown = store.add_measurement(m);
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, "not_found");

  TuningRun run;
  run.device_class = h100_class();
  auto id = store.begin_run(run);
  ASSERT_TRUE(id);
  m.run_id = *id;
  m.backend = "triton";
  auto bad_backend = store.add_measurement(m);
  ASSERT_FALSE(bad_backend);
  EXPECT_EQ(bad_backend.error().code, "invalid");

  m.backend = "sdpa";
  ASSERT_TRUE(store.finish_run(*id, RunStatus::failed, "worker died"));
  auto late = store.add_measurement(m);
  ASSERT_FALSE(late);
  EXPECT_EQ(late.error().code, "refused");

  auto twice = store.finish_run(*id, RunStatus::finished, "");
  ASSERT_FALSE(twice);
  EXPECT_EQ(twice.error().code, "refused");
  EXPECT_FALSE(store.finish_run(*id + 7, RunStatus::finished, ""));
  EXPECT_EQ(store.finish_run(*id, RunStatus::running, "").error().code, "invalid");
}

TEST_F(Store, PinnedArchIsTunedOnlyAsAnExperiment) {
  auto store = open_store();
  TuningRun run;
  run.device_class = ada_class();
  auto refused = store.begin_run(run);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, "refused");
  EXPECT_NE(refused.error().message.find("experimental"), std::string::npos);

  run.experimental = true;
  auto id = store.begin_run(run);
  ASSERT_TRUE(id);

  Verdict v = sample_verdict(ada_class());
  v.run_id = *id;
  auto dispatchable = store.put_verdict(v);
  ASSERT_FALSE(dispatchable);
  EXPECT_EQ(dispatchable.error().code, "refused");

  v.experimental = true;
  ASSERT_TRUE(store.put_verdict(v));
  EXPECT_TRUE(store.current_verdicts(ada_class()).empty())
      << "experimental verdicts are never current";
  auto latest = store.latest_verdicts(ada_class());
  ASSERT_EQ(latest.size(), 1u);
  EXPECT_TRUE(latest[0].experimental);
}

TEST_F(Store, VerdictOfAnExperimentalRunMustBeExperimental) {
  auto store = open_store();
  TuningRun run;
  run.device_class = h100_class();
  run.experimental = true;
  auto id = store.begin_run(run);
  ASSERT_TRUE(id);
  Verdict v = sample_verdict(h100_class());
  v.run_id = *id;
  auto result = store.put_verdict(v);
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().code, "invalid");
}

TEST_F(Store, VerdictRoundTripKeepsEveryField) {
  auto store = open_store();
  TuningRun run;
  run.device_class = h100_class();
  auto run_id = store.begin_run(run);
  ASSERT_TRUE(run_id);

  Verdict v = sample_verdict(h100_class());
  v.run_id = *run_id;
  v.created_at = 1'700'000'000;
  auto id = store.put_verdict(v);
  ASSERT_TRUE(id) << id.error().message;

  auto current = store.current_verdicts(h100_class());
  ASSERT_EQ(current.size(), 1u);
  const Verdict& got = current[0];
  EXPECT_EQ(got.id, *id);
  EXPECT_EQ(got.device_class, v.device_class);
  EXPECT_EQ(got.family, v.family);
  EXPECT_EQ(got.point, v.point);
  EXPECT_EQ(got.backend, "sparse");
  EXPECT_EQ(got.variant, v.variant);
  EXPECT_DOUBLE_EQ(got.baseline_us, v.baseline_us);
  EXPECT_DOUBLE_EQ(got.best_us, v.best_us);
  EXPECT_DOUBLE_EQ(got.speedup, v.speedup);
  EXPECT_DOUBLE_EQ(got.rel_l2, v.rel_l2);
  EXPECT_DOUBLE_EQ(got.baseline_rel_l2, v.baseline_rel_l2);
  EXPECT_EQ(got.run_id, *run_id);
  EXPECT_FALSE(got.experimental);
  EXPECT_EQ(got.reason, v.reason);
  EXPECT_EQ(got.created_at, 1'700'000'000);
  EXPECT_FALSE(got.stale);
}

TEST_F(Store, BadVerdictsAreRejected) {
  auto store = open_store();
  Verdict v = sample_verdict(h100_class());
  v.backend = "triton";
  EXPECT_EQ(store.put_verdict(v).error().code, "invalid");
  v = sample_verdict(h100_class());
  v.family = "";
  EXPECT_EQ(store.put_verdict(v).error().code, "invalid");
  v = sample_verdict(h100_class());
  v.device_class.arch = "90";
  EXPECT_EQ(store.put_verdict(v).error().code, "invalid");
  v = sample_verdict(h100_class());
  v.run_id = 999;
  EXPECT_EQ(store.put_verdict(v).error().code, "not_found");
  EXPECT_TRUE(store.latest_verdicts(std::nullopt).empty());
}

TEST_F(Store, VerdictClassMustMatchItsRun) {
  auto store = open_store();
  TuningRun run;
  run.device_class = h100_class();
  auto id = store.begin_run(run);
  ASSERT_TRUE(id);
  DeviceClass other = h100_class();
  other.driver_version = 12080;
  Verdict v = sample_verdict(other);
  v.run_id = *id;
  auto result = store.put_verdict(v);
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().code, "invalid");
  EXPECT_NE(result.error().message.find("12080"), std::string::npos);
}

TEST_F(Store, NewestVerdictWinsAndHistoryIsKept) {
  auto store = open_store();
  Verdict first = sample_verdict(h100_class());
  first.backend = "sdpa";
  first.speedup = 1.05;
  // A later verdict with an *earlier* clock still supersedes: newest is insertion order.
  first.created_at = 2'000'000'000;
  ASSERT_TRUE(store.put_verdict(first));
  Verdict second = sample_verdict(h100_class());
  second.speedup = 1.6;
  second.created_at = 1'000'000'000;
  auto second_id = store.put_verdict(second);
  ASSERT_TRUE(second_id);
  ASSERT_TRUE(store.put_verdict(sample_verdict(h100_class(), "b64.hkv4.tq1.tkv32768", "sdpa")));

  auto current = store.current_verdicts(h100_class());
  ASSERT_EQ(current.size(), 2u);
  EXPECT_EQ(current[0].point, "b1.hkv4.tq1.tkv8192");
  EXPECT_EQ(current[0].id, *second_id);
  EXPECT_EQ(current[0].backend, "sparse");
  EXPECT_DOUBLE_EQ(current[0].speedup, 1.6);
  EXPECT_EQ(current[1].point, "b64.hkv4.tq1.tkv32768");

  RawDb raw(db_path);
  EXPECT_EQ(raw.scalar("SELECT count(*) FROM verdicts"), "3") << "superseded verdicts stay as history";
}

// Staleness: each field of the device class, changed alone, makes the old verdict stale and
// leaves it out of the new class's current verdicts.
struct ClassChange {
  const char* name;
  void (*apply)(DeviceClass&);
};

class Staleness : public testing::StoreTest, public ::testing::WithParamInterface<ClassChange> {};

TEST_P(Staleness, ChangedClassFieldMakesTheVerdictStale) {
  auto store = open_store();
  ASSERT_TRUE(store.put_verdict(sample_verdict(h100_class())));
  DeviceClass now = h100_class();
  GetParam().apply(now);
  ASSERT_FALSE(now == h100_class());

  auto latest = store.latest_verdicts(now);
  ASSERT_EQ(latest.size(), 1u);
  EXPECT_TRUE(latest[0].stale);
  EXPECT_TRUE(store.current_verdicts(now).empty());

  // Still current for its own class: history is not rewritten.
  auto same = store.latest_verdicts(h100_class());
  ASSERT_EQ(same.size(), 1u);
  EXPECT_FALSE(same[0].stale);
  EXPECT_EQ(store.current_verdicts(h100_class()).size(), 1u);

  // A new verdict for the new class is current; the old one stays, stale.
  ASSERT_TRUE(store.put_verdict(sample_verdict(now)));
  auto both = store.latest_verdicts(now);
  ASSERT_EQ(both.size(), 2u);
  int stale = 0;
  for (const auto& v : both) stale += v.stale ? 1 : 0;
  EXPECT_EQ(stale, 1);
  EXPECT_EQ(store.current_verdicts(now).size(), 1u);
}

INSTANTIATE_TEST_SUITE_P(
    VerdictStore, Staleness,
    ::testing::Values(ClassChange{"DriverChange", [](DeviceClass& c) { c.driver_version = 13010; }},
                      ClassChange{"NvrtcChange", [](DeviceClass& c) { c.nvrtc_version = "13.1"; }},
                      ClassChange{"SourceHashChange", [](DeviceClass& c) { c.source_hash = "ffff0000"; }},
                      ClassChange{"GpuNameChange", [](DeviceClass& c) { c.gpu_name = "NVIDIA H100 PCIe"; }}),
    [](const auto& info) { return std::string(info.param.name); });

TEST_F(Store, WithoutACurrentClassNothingIsMarkedStale) {
  auto store = open_store();
  ASSERT_TRUE(store.put_verdict(sample_verdict(h100_class())));
  DeviceClass old = h100_class();
  old.driver_version = 12000;
  ASSERT_TRUE(store.put_verdict(sample_verdict(old)));
  auto latest = store.latest_verdicts(std::nullopt);
  ASSERT_EQ(latest.size(), 2u);
  for (const auto& v : latest) EXPECT_FALSE(v.stale);
}

TEST_F(Store, ExperimentalVerdictNeverSupersedesTheCurrentOne) {
  auto store = open_store();
  auto real = store.put_verdict(sample_verdict(h100_class(), "b1.hkv4.tq1.tkv8192", "sdpa"));
  ASSERT_TRUE(real);
  Verdict experiment = sample_verdict(h100_class());
  experiment.experimental = true;
  ASSERT_TRUE(store.put_verdict(experiment));

  auto current = store.current_verdicts(h100_class());
  ASSERT_EQ(current.size(), 1u);
  EXPECT_EQ(current[0].id, *real);
  EXPECT_EQ(current[0].backend, "sdpa");

  auto latest = store.latest_verdicts(h100_class());
  ASSERT_EQ(latest.size(), 1u);
  EXPECT_TRUE(latest[0].experimental) << "latest_verdicts is history: the newest row, flagged";
}

TEST_F(Store, DemandAccumulatesAndIsOrderedByCount) {
  auto store = open_store();
  const std::string fam_a = "bf16.dqk128.dv128.h16.blk64.n16.decode";
  const std::string fam_b = "bf16.dqk192.dv128.h16.blk64.n16.prefill";
  ASSERT_TRUE(store.record_demand({{"sm_90", fam_a, "b1.hkv4.tq1.tkv8192", 2, 100, 100},
                                   {"sm_90", fam_b, "b1.hkv4.tq1024.tkv1024", 3, 150, 150}}));
  ASSERT_TRUE(store.record_demand({{"sm_90", fam_a, "b1.hkv4.tq1.tkv8192", 5, 50, 300}}));
  ASSERT_TRUE(store.record_demand({{"sm_80", fam_a, "b1.hkv4.tq1.tkv8192", 3, 200, 200}}));

  auto demand = store.demand();
  ASSERT_EQ(demand.size(), 3u);
  EXPECT_EQ(demand[0].arch, "sm_90");
  EXPECT_EQ(demand[0].family, fam_a);
  EXPECT_EQ(demand[0].count, 7);
  EXPECT_EQ(demand[0].first_at, 50);
  EXPECT_EQ(demand[0].last_at, 300);
  // Equal counts: the more recent first.
  EXPECT_EQ(demand[1].arch, "sm_80");
  EXPECT_EQ(demand[2].family, fam_b);
  EXPECT_EQ(store.demand(1).size(), 1u);
}

TEST_F(Store, ABadDemandBatchWritesNothing) {
  auto store = open_store();
  auto result = store.record_demand({{"sm_90", "fam", "p", 1, 0, 0}, {"sm_90", "fam2", "p", 0, 0, 0}});
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().code, "invalid");
  EXPECT_TRUE(store.demand().empty());
  ASSERT_TRUE(store.record_demand({}));
}

TEST_F(Store, CompiledKernelIsFoundOnlyWithItsFullStaleKey) {
  auto store = open_store();
  CompiledKernel k;
  k.variant_key = "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps4_stages2.sm90";
  k.arch = "sm_90";
  k.source_hash = "hash1";
  k.options = "-arch=sm_90 --std=c++17";
  k.nvrtc_version = "13.0";
  for (int i = 0; i < 70000; ++i) k.cubin.push_back(static_cast<std::uint8_t>(i * 31));
  k.registers = 96;
  k.shared_bytes = 49152;
  k.spill_bytes = 8;
  ASSERT_TRUE(store.put_kernel(k));
  EXPECT_EQ(store.kernel_count(), 1);

  auto got = store.get_kernel(k.variant_key, k.arch, k.source_hash, k.options, k.nvrtc_version);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->cubin, k.cubin);
  EXPECT_EQ(got->registers, 96);
  EXPECT_EQ(got->shared_bytes, 49152);
  EXPECT_EQ(got->spill_bytes, 8);
  EXPECT_GT(got->created_at, 0);

  EXPECT_FALSE(store.get_kernel(k.variant_key, "sm_80", k.source_hash, k.options, k.nvrtc_version));
  EXPECT_FALSE(store.get_kernel(k.variant_key, k.arch, "hash2", k.options, k.nvrtc_version));
  EXPECT_FALSE(store.get_kernel(k.variant_key, k.arch, k.source_hash, "-arch=sm_90 -G", k.nvrtc_version));
  EXPECT_FALSE(store.get_kernel(k.variant_key, k.arch, k.source_hash, k.options, "13.1"));
  EXPECT_FALSE(store.get_kernel("other", k.arch, k.source_hash, k.options, k.nvrtc_version));

  // Same key again replaces; other options are a second row.
  k.registers = 80;
  ASSERT_TRUE(store.put_kernel(k));
  EXPECT_EQ(store.kernel_count(), 1);
  EXPECT_EQ(store.get_kernel(k.variant_key, k.arch, k.source_hash, k.options, k.nvrtc_version)->registers, 80);
  CompiledKernel debug = k;
  debug.options = "-arch=sm_90 -lineinfo";
  ASSERT_TRUE(store.put_kernel(debug));
  EXPECT_EQ(store.kernel_count(), 2);
}

TEST_F(Store, KernelsOfNewSourcesReplaceTheStaleOnes) {
  auto store = open_store();
  CompiledKernel k;
  k.variant_key = "v";
  k.arch = "sm_90";
  k.source_hash = "old";
  k.options = "-arch=sm_90";
  k.nvrtc_version = "13.0";
  k.cubin = {1, 2, 3};
  ASSERT_TRUE(store.put_kernel(k));
  CompiledKernel other_variant = k;
  other_variant.variant_key = "w";
  ASSERT_TRUE(store.put_kernel(other_variant));

  k.source_hash = "new";
  k.cubin = {4, 5};
  ASSERT_TRUE(store.put_kernel(k));
  EXPECT_EQ(store.kernel_count(), 2) << "the stale binary of v is dropped, w is untouched";
  EXPECT_FALSE(store.get_kernel("v", "sm_90", "old", k.options, "13.0"));
  EXPECT_TRUE(store.get_kernel("w", "sm_90", "old", k.options, "13.0"));

  CompiledKernel empty = k;
  empty.cubin.clear();
  EXPECT_EQ(store.put_kernel(empty).error().code, "invalid");
}

TEST_F(Store, RetuneRequestsQueueAndComplete) {
  auto store = open_store();
  auto a = store.request_retune("all", "uid:1000");
  auto b = store.request_retune("sm_90", "uid:1001");
  ASSERT_TRUE(a && b);
  auto pending = store.pending_retunes();
  ASSERT_EQ(pending.size(), 2u);
  EXPECT_EQ(pending[0].id, *a);
  EXPECT_EQ(pending[0].scope, "all");
  EXPECT_EQ(pending[1].requested_by, "uid:1001");
  EXPECT_GT(pending[1].requested_at, 0);

  ASSERT_TRUE(store.complete_retune(*a, "tuned 12 points"));
  pending = store.pending_retunes();
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending[0].id, *b);
  EXPECT_EQ(store.complete_retune(*a, "again").error().code, "refused");
  EXPECT_EQ(store.complete_retune(*b + 10, "x").error().code, "not_found");
  EXPECT_EQ(store.request_retune("", "uid:0").error().code, "invalid");

  RawDb raw(db_path);
  EXPECT_EQ(raw.scalar("SELECT outcome FROM retune_requests WHERE id = " + std::to_string(*a)),
            "tuned 12 points");
}

TEST_F(Store, ReadOnlyStoreReadsButRefusesEveryWrite) {
  {
    auto store = open_store();
    ASSERT_TRUE(store.put_verdict(sample_verdict(h100_class())));
  }
  auto reader = VerdictStore::open_read_only(db_path);
  ASSERT_TRUE(reader) << reader.error().message;
  EXPECT_EQ(reader->latest_verdicts(std::nullopt).size(), 1u);
  EXPECT_EQ(reader->pins().size(), 1u);
  EXPECT_EQ(reader->schema_version(), VerdictStore::current_schema_version());

  EXPECT_EQ(reader->put_verdict(sample_verdict(h100_class())).error().code, "read_only");
  EXPECT_EQ(reader->add_pin(Pin{"sm_80", "sdpa", "r", false, "", 0}).error().code, "read_only");
  EXPECT_EQ(reader->remove_pin("sm_89").error().code, "read_only");
  EXPECT_EQ(reader->record_demand({{"sm_90", "f", "p", 1, 0, 0}}).error().code, "read_only");
  EXPECT_EQ(reader->request_retune("all", "x").error().code, "read_only");
  DeviceRecord device;
  device.uuid = "GPU-1";
  EXPECT_EQ(reader->upsert_device(device).error().code, "read_only");
  EXPECT_EQ(reader->latest_verdicts(std::nullopt).size(), 1u);
}

TEST(Records, StatusSpellingsRoundTrip) {
  for (auto s : {RunStatus::running, RunStatus::finished, RunStatus::failed, RunStatus::abandoned})
    EXPECT_EQ(parse_run_status(to_string(s)), s);
  for (auto s : {MeasurementStatus::ok, MeasurementStatus::numerics_failed,
                 MeasurementStatus::compile_failed, MeasurementStatus::crashed,
                 MeasurementStatus::timeout, MeasurementStatus::skipped})
    EXPECT_EQ(parse_measurement_status(to_string(s)), s);
  EXPECT_EQ(to_string(MeasurementStatus::numerics_failed), "numerics_failed");
  EXPECT_FALSE(parse_run_status("done"));
  EXPECT_FALSE(parse_measurement_status("OK"));
}

TEST(Records, DescribeNamesEveryPartOfTheClass) {
  std::string text = describe(h100_class());
  EXPECT_NE(text.find("sm_90"), std::string::npos);
  EXPECT_NE(text.find("H100"), std::string::npos);
  EXPECT_NE(text.find("13000"), std::string::npos);
  EXPECT_NE(text.find("13.0"), std::string::npos);
  EXPECT_NE(text.find("a1b2c3d4"), std::string::npos);
}

}  // namespace
}  // namespace nsa::cache
