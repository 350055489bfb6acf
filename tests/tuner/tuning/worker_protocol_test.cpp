// tests/tuner/tuning/worker_protocol_test.cpp: tuner/worker_protocol.cpp.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "nsa/jit/catalog.hpp"
#include "nsa/tuner/worker_protocol.hpp"

using namespace nsa;
using namespace nsa::tuner;

namespace {

std::shared_ptr<const std::vector<std::uint8_t>> bytes(std::initializer_list<int> b) {
  std::vector<std::uint8_t> v;
  for (int x : b) v.push_back(static_cast<std::uint8_t>(x));
  return std::make_shared<const std::vector<std::uint8_t>>(std::move(v));
}

Job sample_job() {
  Job job;
  job.id = 42;
  job.family = *api::Family::parse("bf16.dqk192.dv128.h16.blk64.n16.decode");
  job.point = *api::Point::parse("b8.hkv4.tq1.tkv32768");
  job.pattern = jit::SelectionPattern::clustered;
  job.seed = 0xFEDCBA9876543210ull;  // above 2^63: must survive as unsigned
  job.reps = Repetitions{2, 3, 7, 50, 12.5};
  job.cut_factor = 3;
  job.best_so_far_us = 81.25;
  job.rotate_bytes = 200ull << 20;
  job.support = JobVariant{"nsa_worker.kernels.sm_90", "support", {}, bytes({0x7f, 'E', 'L', 'F'})};
  jit::FamilySpec spec = spec_of(job.family);
  auto ref = jit::default_variant(jit::Design::reference, spec, "sm_90");
  job.reference = JobVariant{ref.key(), "reference", jit::plan_for(ref, shape_of(job.point)), bytes({1, 2, 3})};
  auto sdpa = jit::default_variant(jit::Design::sdpa_packed, spec, "sm_90");
  auto split = jit::default_variant(jit::Design::split_kv, spec, "sm_90");
  job.variants.push_back(JobVariant{sdpa.key(), "sdpa", jit::plan_for(sdpa, shape_of(job.point)), bytes({9, 8})});
  job.variants.push_back(JobVariant{split.key(), "sparse", jit::plan_for(split, shape_of(job.point)), bytes({0, 255, 7})});
  return job;
}

}  // namespace

TEST(WorkerProtocol, JobRoundTripsWithPlansCubinsAndSeed) {
  Job job = sample_job();
  // Plans of several launches must keep every launch, in order: sdpa_packed is the catalog's
  // multi-launch design (gather, then attention over the packed workspace). split_kv is one
  // launch since its row's last CTA merges, so it no longer covers this.
  ASSERT_EQ(job.variants[0].plan.launches.size(), 2u) << "sdpa_packed: gather + attention";
  ASSERT_GT(job.variants[0].plan.workspace_bytes, 0u) << "sdpa_packed packs into its workspace";
  // And a plan made by hand, so that the round trip of three launches whose every field differs
  // does not depend on what the catalog happens to plan today.
  jit::LaunchPlan three;
  for (unsigned i = 0; i < 3; ++i) {
    jit::Launch l;
    l.entry = "nsa_step_" + std::to_string(i);
    l.grid[0] = 1000 + i, l.grid[1] = 2 + i, l.grid[2] = 3 + i;
    l.block[0] = 32 * (i + 1), l.block[1] = 1 + i, l.block[2] = 1;
    l.shared_bytes = 49152u * i + 7u;
    if (i == 1)  // a TMA launch: its tensor maps travel with it, in order
      l.tensor_maps = {jit::TensorMapArg{jit::TensorMapArg::Operand::k, 192, 64},
                       jit::TensorMapArg{jit::TensorMapArg::Operand::v, 128, 32}};
    three.launches.push_back(l);
  }
  three.workspace_bytes = (5ull << 32) + 3;  // above 2^32: must not be narrowed
  job.variants.push_back(JobVariant{"sel_fwd.hand_made.three_launches", "sparse", three, bytes({4, 5, 6})});

  const std::string line = encode_job(job);
  EXPECT_EQ(line.find('\n'), std::string::npos) << "one job is one line";
  auto back = decode_job(line);
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(*back, job);
  EXPECT_EQ(back->seed, 0xFEDCBA9876543210ull);
  ASSERT_EQ(back->variants.size(), 3u);
  for (std::size_t v = 0; v < job.variants.size(); ++v) {
    const jit::LaunchPlan &want = job.variants[v].plan, &got = back->variants[v].plan;
    EXPECT_EQ(got.workspace_bytes, want.workspace_bytes) << job.variants[v].key;
    ASSERT_EQ(got.launches.size(), want.launches.size()) << job.variants[v].key;
    for (std::size_t i = 0; i < want.launches.size(); ++i) {
      EXPECT_EQ(got.launches[i].entry, want.launches[i].entry) << job.variants[v].key << " launch " << i;
      for (int d = 0; d < 3; ++d) {
        EXPECT_EQ(got.launches[i].grid[d], want.launches[i].grid[d]) << job.variants[v].key << " launch " << i;
        EXPECT_EQ(got.launches[i].block[d], want.launches[i].block[d]) << job.variants[v].key << " launch " << i;
      }
      EXPECT_EQ(got.launches[i].shared_bytes, want.launches[i].shared_bytes) << job.variants[v].key << " launch " << i;
      EXPECT_EQ(got.launches[i].tensor_maps, want.launches[i].tensor_maps) << job.variants[v].key << " launch " << i;
    }
  }
  EXPECT_EQ(back->variants[0].plan.launches[0].entry, "nsa_sdpa_gather") << "launch order is kept";
  EXPECT_EQ(back->variants[0].plan.launches[1].entry, "nsa_sdpa_attention") << "launch order is kept";
}

TEST(WorkerProtocol, CubinsAlreadySentAreLeftOut) {
  const Job job = sample_job();
  const std::string sdpa_key = job.variants[0].key;
  auto back = decode_job(encode_job(job, [&](const std::string& key) { return key != sdpa_key; }));
  ASSERT_TRUE(back) << back.error();
  EXPECT_FALSE(back->variants[0].cubin) << "the worker has this one already";
  ASSERT_TRUE(back->variants[1].cubin);
  EXPECT_EQ(*back->variants[1].cubin, *job.variants[1].cubin);
  ASSERT_TRUE(back->support.cubin);
}

TEST(WorkerProtocol, EveryWorkerMessageRoundTrips) {
  VariantResult r;
  r.job = 7;
  r.variant = "sel_fwd.split_kv.x";
  r.backend = "sparse";
  r.status = cache::MeasurementStatus::ok;
  r.median_us = 12.5;
  r.p10_us = 12.0;
  r.p90_us = 13.5;
  r.runs = 40;
  r.rel_l2 = 2.5e-3;
  r.max_abs = 0.03;
  r.mean_abs = 1e-4;
  r.nonfinite = 0;
  r.lse_max_abs = 1e-5;
  r.detail = "with \"quotes\" and \\ backslash";
  const std::vector<WorkerMessage> all = {
      WorkerHello{kWorkerProtocolVersion, 1, 4242, "GPU-abc", "NVIDIA H100 80GB HBM3", "sm_90", 85899345920ull, 52428800, 13000},
      StepBegin{7, "setup"},
      r,
      JobDone{7, 12, 123456789ull, 3.25, 1.5},
      JobFailed{7, "the inputs need 90 GiB"},
      WorkerFatal{"sel_fwd.x: CUDA_ERROR_ILLEGAL_ADDRESS", true}};
  for (const auto& m : all) {
    const std::string line = encode_message(m);
    auto back = decode_message(line);
    ASSERT_TRUE(back) << line << ": " << back.error();
    EXPECT_EQ(*back, m) << line;
  }
}

TEST(WorkerProtocol, NonFiniteNumbersTravelAsNullAndComeBackNaN) {
  VariantResult r;
  r.variant = "v";
  r.backend = "sdpa";
  r.status = cache::MeasurementStatus::numerics_failed;
  r.rel_l2 = std::numeric_limits<double>::infinity();
  r.max_abs = std::numeric_limits<double>::quiet_NaN();
  const std::string line = encode_message(r);
  EXPECT_NE(line.find("\"rel_l2\":null"), std::string::npos) << line;
  auto back = decode_message(line);
  ASSERT_TRUE(back) << back.error();
  const auto& got = std::get<VariantResult>(*back);
  EXPECT_TRUE(std::isnan(got.rel_l2));
  EXPECT_TRUE(std::isnan(got.max_abs));
}

TEST(WorkerProtocol, MalformedWorkerLinesAreErrorsNamingTheProblem) {
  EXPECT_EQ(decode_message("Segmentation fault (core dumped)").error(), "not JSON");
  EXPECT_NE(decode_message(R"({"type":"hola"})").error().find("'hola' is not hello"), std::string::npos);
  EXPECT_NE(decode_message(R"({"type":"begin","job":1})").error().find("message.step: missing"), std::string::npos);
  EXPECT_NE(decode_message(R"({"type":"begin","job":"1","step":"x"})").error().find("message.job: expected an integer"),
            std::string::npos);
  EXPECT_FALSE(decode_message(R"([1,2,3])"));
  auto bad_status = decode_message(
      R"({"type":"result","job":1,"variant":"v","backend":"sparse","status":"exploded","median_us":1,"p10_us":1,)"
      R"("p90_us":1,"runs":1,"rel_l2":0,"max_abs":0,"mean_abs":0,"nonfinite":0,"lse_max_abs":0,"detail":""})");
  ASSERT_FALSE(bad_status);
  EXPECT_NE(bad_status.error().find("'exploded' is not a measurement status"), std::string::npos);
}

TEST(WorkerProtocol, MalformedJobsAreErrorsNamingTheField) {
  nlohmann::json j = nlohmann::json::parse(encode_job(sample_job()));
  j["variants"][1]["plan"]["launches"][0]["grid"] = {1, 2};
  auto e = decode_job(j.dump());
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().find("job.variants[1].plan.launches[0].grid"), std::string::npos) << e.error();

  j = nlohmann::json::parse(encode_job(sample_job()));
  j["variants"][1]["plan"]["launches"][0]["tensor_maps"] = {{{"operand", "q"}, {"dim", 128}, {"box_rows", 64}}};
  e = decode_job(j.dump());
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().find("job.variants[1].plan.launches[0].tensor_maps[0].operand: expected \"k\" or \"v\""),
            std::string::npos)
      << e.error();

  j = nlohmann::json::parse(encode_job(sample_job()));
  j["family"] = "bf16.dqk192";
  EXPECT_NE(decode_job(j.dump()).error().find("is not a family key"), std::string::npos);

  j = nlohmann::json::parse(encode_job(sample_job()));
  j["reps"]["min_runs"] = 1;  // below probe_runs
  EXPECT_NE(decode_job(j.dump()).error().find("min_runs"), std::string::npos);

  j = nlohmann::json::parse(encode_job(sample_job()));
  j["variants"][0]["cubin"] = "not base64!";
  EXPECT_NE(decode_job(j.dump()).error().find("job.variants[0].cubin"), std::string::npos);

  EXPECT_EQ(decode_job("{").error(), "job: not JSON");
}

TEST(WorkerProtocol, Base64RoundTripsEveryLengthAndRejectsJunk) {
  std::vector<std::uint8_t> data;
  for (int n = 0; n < 300; ++n) {
    auto enc = base64_encode(data);
    EXPECT_EQ(enc.size() % 4, 0u);
    auto dec = base64_decode(enc);
    ASSERT_TRUE(dec) << n;
    EXPECT_EQ(*dec, data) << n;
    data.push_back(static_cast<std::uint8_t>(n * 37 + 11));
  }
  EXPECT_EQ(base64_encode({'M', 'a', 'n'}), "TWFu");
  EXPECT_EQ(base64_encode({'M', 'a'}), "TWE=");
  EXPECT_FALSE(base64_decode("TWF"));    // length
  EXPECT_FALSE(base64_decode("TW=u"));   // padding inside
  EXPECT_FALSE(base64_decode("TW*u"));   // alphabet
}

TEST(WorkerProtocol, ResultBecomesTheStoresMeasurementRow) {
  VariantResult r;
  r.variant = "sel_fwd.query_outer.x";
  r.backend = "sparse";
  r.median_us = 50;
  r.p10_us = 48;
  r.p90_us = 55;
  r.runs = 30;
  r.rel_l2 = 3e-3;
  r.max_abs = 0.02;
  const cache::Measurement m = r.to_measurement(9, "bf16.dqk128.dv128.h16.blk64.n16.decode", "b1.hkv4.tq1.tkv8192");
  EXPECT_EQ(m.run_id, 9);
  EXPECT_EQ(m.backend, "sparse");
  EXPECT_DOUBLE_EQ(m.spread_us, 7);
  EXPECT_DOUBLE_EQ(m.rel_l2, 3e-3);
  EXPECT_NE(m.detail.find("30 runs"), std::string::npos) << m.detail;
}

TEST(WorkerKernels, CompileForEveryTargetArch) {
  for (const char* arch : {"sm_80", "sm_86", "sm_89", "sm_90"}) {
    auto cubin = compile_worker_kernels(arch, nullptr);
    ASSERT_TRUE(cubin) << arch << ": " << cubin.error().message() << "\n" << cubin.error().log;
    EXPECT_FALSE(cubin->image.empty());
    std::set<std::string> entries;
    for (const auto& k : cubin->kernels) entries.insert(k.entry);
    for (const char* e : {kFillNormalBf16, kFillNormalFp16, kErrorBf16, kErrorFp16})
      EXPECT_TRUE(entries.contains(e)) << arch << " lacks " << e;
  }
}

TEST(WorkerKernels, CacheKeyChangesWithArchAndIsFoundInACache) {
  EXPECT_NE(worker_kernels_key("sm_80"), worker_kernels_key("sm_90"));
  EXPECT_EQ(worker_kernels_key("sm_90"), worker_kernels_key("sm_90"));
  jit::MemoryCubinCache cache;
  auto first = compile_worker_kernels("sm_90", &cache);
  ASSERT_TRUE(first);
  EXPECT_EQ(cache.size(), 1u);
  ASSERT_TRUE(cache.get(worker_kernels_key("sm_90")));
  auto second = compile_worker_kernels("sm_90", &cache);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->image, first->image);
}
