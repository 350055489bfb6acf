// The dispatch decision without sockets or SQLite: snapshots built by hand, one rule per case
// (docs/protocol.md, "From shapes to measured points").

#include <gtest/gtest.h>

#include "nsa/jit/catalog.hpp"
#include "nsa/service/dispatcher.hpp"

namespace nsa::service {
namespace {

using api::Backend;
using api::Provenance;

cache::DeviceClass h100_class() { return {"sm_90", "NVIDIA H100 80GB HBM3", 13000, "13.0", "feedc0de"}; }
cache::DeviceClass ada_class() { return {"sm_89", "NVIDIA GeForce RTX 4090", 13000, "13.0", "feedc0de"}; }

LocalDevice device(int ordinal, const cache::DeviceClass& cls, std::string uuid) {
  LocalDevice d;
  d.record.ordinal = ordinal;
  d.record.uuid = std::move(uuid);
  d.record.name = cls.gpu_name;
  d.record.arch = cls.arch;
  d.device_class = cls;
  return d;
}

api::Problem decode_problem() {
  api::Problem p;
  p.dtype = api::DType::bf16;
  p.d_qk = 128;
  p.d_v = 128;
  p.h = 16;
  p.h_kv = 4;
  p.block = 64;
  p.n = 16;
  p.t_q = 1;
  p.t_kv = 32768;
  p.batch = 64;
  return p;
}

/// A sparse variant key the catalog can plan, for the family of `p`.
std::string variant_for(const api::Problem& p, const std::string& arch = "sm_90") {
  jit::FamilySpec spec;
  spec.dtype = jit::ElemType::bf16;
  spec.d_qk = p.d_qk;
  spec.d_v = p.d_v;
  spec.h = p.h;
  spec.block = p.block;
  spec.n = p.n;
  return jit::default_variant(jit::Design::query_outer, spec, arch).key();
}

cache::Verdict verdict(const cache::DeviceClass& cls, const api::Problem& at, std::string backend,
                       std::string variant, double speedup, std::int64_t run) {
  cache::Verdict v;
  v.device_class = cls;
  v.family = api::family_of(at).key();
  v.point = api::point_of(at).key();
  v.backend = std::move(backend);
  v.variant = std::move(variant);
  v.speedup = speedup;
  v.run_id = run;
  return v;
}

cache::Pin sm89_pin() {
  cache::Pin p;
  p.arch = "sm_89";
  p.reason = "sparse selection is non-viable on Ada (ADR-2025-08-M4-02)";
  p.seeded = true;
  p.created_by = "seed";
  return p;
}

/// One H100 at ordinal 0 with `verdicts`, the seeded sm_89 pin.
Snapshot h100_snapshot(const std::vector<cache::Verdict>& verdicts) {
  Snapshot s;
  s.epoch = 7;
  s.devices.push_back(device(0, h100_class(), "GPU-h100-0"));
  s.verdicts.push_back(std::make_shared<const ClassVerdicts>(group_verdicts(verdicts)));
  s.pins.emplace("sm_89", sm89_pin());
  return s;
}

TEST(Dispatcher, ArchTargetWithPinIsPinnedSdpaEvenWithoutAnyGpu) {
  Snapshot s;
  s.driver_problem = "libcuda.so.1 not found: no NVIDIA driver on this host";
  s.pins.emplace("sm_89", sm89_pin());
  api::Problem p = decode_problem();
  p.arch = "sm_89";
  Decision d = decide(s, p);
  EXPECT_EQ(d.answer.backend, Backend::sdpa);
  EXPECT_EQ(d.answer.provenance, Provenance::pinned);
  EXPECT_EQ(d.answer.arch, "sm_89");
  EXPECT_NE(d.answer.reason.find("non-viable on Ada"), std::string::npos) << d.answer.reason;
  EXPECT_FALSE(d.demand);
}

TEST(Dispatcher, PinWinsOverAMeasuredSparseVerdictOfTheSameArch) {
  api::Problem p = decode_problem();
  Snapshot s = h100_snapshot({verdict(h100_class(), p, "sparse", variant_for(p), 2.5, 11)});
  cache::Pin pin;
  pin.arch = "sm_90";
  pin.reason = "driver 580 regression, INC-42";
  s.pins.emplace("sm_90", pin);
  Decision d = decide(s, p);
  EXPECT_EQ(d.answer.provenance, Provenance::pinned);
  EXPECT_EQ(d.answer.backend, Backend::sdpa);
  EXPECT_NE(d.answer.reason.find("INC-42"), std::string::npos);
}

TEST(Dispatcher, DeviceQueryOnAHostWithoutGpuIsNoDeviceWithTheProbeReason) {
  Snapshot s;
  s.driver_problem = "libcuda.so.1 not found: no NVIDIA driver on this host";
  s.pins.emplace("sm_89", sm89_pin());
  api::Problem p = decode_problem();  // no target: device 0
  Decision d = decide(s, p);
  EXPECT_EQ(d.answer.provenance, Provenance::no_device);
  EXPECT_EQ(d.answer.backend, Backend::sdpa);
  EXPECT_NE(d.answer.reason.find("libcuda.so.1 not found"), std::string::npos) << d.answer.reason;
  EXPECT_FALSE(d.demand) << "no_device is not demand: nothing could be tuned for it";
}

TEST(Dispatcher, UnknownOrdinalOrUuidIsNoDeviceNamingWhatThisHostHas) {
  Snapshot s = h100_snapshot({});
  api::Problem p = decode_problem();
  p.device = 3;
  Decision d = decide(s, p);
  EXPECT_EQ(d.answer.provenance, Provenance::no_device);
  EXPECT_NE(d.answer.reason.find("ordinal 3"), std::string::npos) << d.answer.reason;
  EXPECT_NE(d.answer.reason.find("ordinals 0-0"), std::string::npos) << d.answer.reason;

  api::Problem q = decode_problem();
  q.device_uuid = "GPU-not-here";
  Decision e = decide(s, q);
  EXPECT_EQ(e.answer.provenance, Provenance::no_device);
  EXPECT_NE(e.answer.reason.find("GPU-not-here"), std::string::npos);
}

TEST(Dispatcher, DeviceIsFoundByOrdinalByUuidAndByDefault) {
  api::Problem at = decode_problem();
  Snapshot s = h100_snapshot({verdict(h100_class(), at, "sparse", variant_for(at), 1.8, 5)});
  api::Problem by_default = at;
  api::Problem by_ordinal = at;
  by_ordinal.device = 0;
  api::Problem by_uuid = at;
  by_uuid.device_uuid = "GPU-h100-0";
  for (const auto& p : {by_default, by_ordinal, by_uuid}) {
    Decision d = decide(s, p);
    EXPECT_EQ(d.answer.provenance, Provenance::measured);
    EXPECT_EQ(d.answer.backend, Backend::sparse);
  }
}

TEST(Dispatcher, MeasuredSparseVerdictAnswersWithVariantSpeedupRunAndALaunchForTheProblemsPoint) {
  api::Problem at = decode_problem();
  const std::string variant = variant_for(at);
  Snapshot s = h100_snapshot({verdict(h100_class(), at, "sparse", variant, 1.85, 42)});
  api::Problem p = at;
  p.batch = 8;  // another point of the same family: the launch grid follows the problem
  Decision d = decide(s, p);
  ASSERT_EQ(d.answer.provenance, Provenance::measured);
  EXPECT_EQ(d.answer.backend, Backend::sparse);
  EXPECT_EQ(d.answer.variant, variant);
  EXPECT_DOUBLE_EQ(d.answer.speedup, 1.85);
  EXPECT_EQ(d.answer.run_id, 42);
  EXPECT_EQ(d.answer.arch, "sm_90");
  ASSERT_TRUE(d.answer.launch.is_object()) << d.answer.launch.dump();
  ASSERT_FALSE(d.answer.launch["launches"].empty());
  const auto expected = jit::plan_for(*jit::KernelVariant::parse(variant), jit::RuntimeShape{8, 1, 32768, 4});
  EXPECT_EQ(d.answer.launch["launches"][0]["grid"][0].get<unsigned>(), expected.launches[0].grid[0]);
  EXPECT_EQ(d.answer.launch["launches"][0]["entry"], expected.launches[0].entry);
  EXPECT_FALSE(d.demand);
}

TEST(Dispatcher, ATmaVariantsLaunchNamesTheTensorMapsItTakes) {
  // The launch contract of a tma=1 variant: after SelectionParams its kernel takes K's and V's
  // tensor maps, which the client encodes (docs/protocol.md, "tensor_maps").
  api::Problem at = decode_problem();
  jit::FamilySpec spec;
  spec.d_qk = at.d_qk, spec.d_v = at.d_v, spec.h = at.h, spec.block = at.block, spec.n = at.n;
  const std::string variant = jit::default_variant(jit::Design::decode_stream, spec, "sm_90").key();
  ASSERT_NE(variant.find(".tma1_"), std::string::npos) << variant;
  Snapshot s = h100_snapshot({verdict(h100_class(), at, "sparse", variant, 2.5, 43)});
  Decision d = decide(s, at);
  ASSERT_EQ(d.answer.backend, Backend::sparse) << d.answer.reason;
  const auto& launch = d.answer.launch["launches"][0];
  ASSERT_TRUE(launch.contains("tensor_maps")) << d.answer.launch.dump();
  EXPECT_EQ(launch["tensor_maps"],
            nlohmann::json::parse(R"([{"operand":"k","dim":128,"box_rows":64},{"operand":"v","dim":128,"box_rows":64}])"));
  // Variants without tensor maps keep the old shape of a launch.
  Snapshot plain = h100_snapshot({verdict(h100_class(), at, "sparse", variant_for(at), 1.85, 42)});
  EXPECT_FALSE(decide(plain, at).answer.launch["launches"][0].contains("tensor_maps"));
}

TEST(Dispatcher, TheNearestMeasuredPointDecides) {
  api::Problem small = decode_problem();
  small.batch = 1;
  small.t_kv = 4096;
  api::Problem big = decode_problem();
  big.batch = 256;
  big.t_kv = 131072;
  Snapshot s = h100_snapshot({verdict(h100_class(), small, "sdpa", variant_for(small), 0.7, 3),
                              verdict(h100_class(), big, "sparse", variant_for(big), 2.1, 3)});
  api::Problem near_big = decode_problem();
  near_big.batch = 128;
  near_big.t_kv = 100000;
  EXPECT_EQ(decide(s, near_big).answer.backend, Backend::sparse);
  api::Problem near_small = decode_problem();
  near_small.batch = 2;
  near_small.t_kv = 2048;
  Decision d = decide(s, near_small);
  EXPECT_EQ(d.answer.backend, Backend::sdpa);
  EXPECT_EQ(d.answer.provenance, Provenance::measured);
  EXPECT_DOUBLE_EQ(d.answer.speedup, 0.7);
  EXPECT_NE(d.answer.reason.find("SDPA wins"), std::string::npos) << d.answer.reason;
}

TEST(Dispatcher, AnotherFamilyIsUntunedAndCountedAsDemand) {
  api::Problem at = decode_problem();
  Snapshot s = h100_snapshot({verdict(h100_class(), at, "sparse", variant_for(at), 1.5, 1)});
  api::Problem prefill = at;
  prefill.t_q = 1024;  // decode says nothing about prefill
  Decision d = decide(s, prefill);
  EXPECT_EQ(d.answer.provenance, Provenance::untuned);
  EXPECT_EQ(d.answer.backend, Backend::sdpa);
  ASSERT_TRUE(d.demand);
  EXPECT_EQ(d.demand->arch, "sm_90");
  EXPECT_EQ(d.demand->family, api::family_of(prefill).key());
  EXPECT_EQ(d.demand->point, api::point_of(prefill).key());
}

TEST(Dispatcher, ArchTargetUsesTheLowestOrdinalDeviceOfThatArchAndDropsTheFeatureSuffix) {
  api::Problem at = decode_problem();
  cache::DeviceClass older = h100_class();
  older.driver_version = 12040;  // ordinal 1's class: has the verdict
  Snapshot s;
  s.devices.push_back(device(1, older, "GPU-1"));
  s.devices.push_back(device(0, h100_class(), "GPU-0"));
  s.verdicts.push_back(std::make_shared<const ClassVerdicts>(
      group_verdicts({verdict(older, at, "sparse", variant_for(at), 1.5, 9)})));
  s.verdicts.push_back(std::make_shared<const ClassVerdicts>());
  api::Problem p = at;
  p.arch = "sm_90a";
  Decision d = decide(s, p);
  EXPECT_EQ(d.answer.provenance, Provenance::untuned) << "ordinal 0 (no verdict) answers, not ordinal 1";
  EXPECT_EQ(d.answer.arch, "sm_90");
  ASSERT_TRUE(d.demand);
  EXPECT_EQ(d.demand->arch, "sm_90");
}

TEST(Dispatcher, ArchWithoutALocalDeviceIsUntunedNeverNoDevice) {
  Snapshot s;
  s.driver_problem = "no devices";
  api::Problem p = decode_problem();
  p.arch = "sm_80";
  Decision d = decide(s, p);
  EXPECT_EQ(d.answer.provenance, Provenance::untuned);
  EXPECT_EQ(d.answer.arch, "sm_80");
  ASSERT_TRUE(d.demand);
}

TEST(Dispatcher, StaleExperimentalAndUnparsableVerdictsAreNeverServed) {
  api::Problem at = decode_problem();
  auto stale = verdict(h100_class(), at, "sparse", variant_for(at), 3.0, 1);
  stale.stale = true;
  auto experimental = verdict(h100_class(), at, "sparse", variant_for(at), 3.0, 2);
  experimental.experimental = true;
  auto garbage = verdict(h100_class(), at, "sparse", variant_for(at), 3.0, 3);
  garbage.point = "not-a-point";
  std::size_t unparsable = 0;
  ClassVerdicts table = group_verdicts({stale, experimental, garbage}, &unparsable);
  EXPECT_TRUE(table.empty());
  EXPECT_EQ(unparsable, 1u);
  Snapshot s = h100_snapshot({stale, experimental, garbage});
  EXPECT_EQ(decide(s, at).answer.provenance, Provenance::untuned);
  EXPECT_EQ(s.verdict_count(), 0u);
}

TEST(Dispatcher, ASparseVerdictWhoseVariantCannotBePlannedIsAnsweredSdpaWithTheReason) {
  api::Problem at = decode_problem();
  Snapshot s = h100_snapshot({verdict(h100_class(), at, "sparse", "sel_fwd.nonsense", 2.0, 4)});
  Decision d = decide(s, at);
  EXPECT_EQ(d.answer.backend, Backend::sdpa);
  EXPECT_EQ(d.answer.provenance, Provenance::measured);
  EXPECT_TRUE(d.answer.launch.is_null());
  EXPECT_NE(d.answer.reason.find("cannot be launched"), std::string::npos) << d.answer.reason;
}

TEST(Dispatcher, PinnedDeviceArchIsPinnedWhateverTheVerdicts) {
  api::Problem at = decode_problem();
  Snapshot s;
  s.devices.push_back(device(0, ada_class(), "GPU-ada"));
  s.verdicts.push_back(std::make_shared<const ClassVerdicts>(
      group_verdicts({verdict(ada_class(), at, "sparse", variant_for(at, "sm_89"), 1.3, 1)})));
  s.pins.emplace("sm_89", sm89_pin());
  Decision d = decide(s, at);
  EXPECT_EQ(d.answer.provenance, Provenance::pinned);
  EXPECT_EQ(d.answer.backend, Backend::sdpa);
}

}  // namespace
}  // namespace nsa::service
