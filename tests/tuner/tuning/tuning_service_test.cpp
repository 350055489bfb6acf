// tests/tuner/tuning/tuning_service_test.cpp: tuner/tuning_service.cpp end to end without a GPU:
// a real store on disk, real NVRTC compiles (one small family, one setting per design), and the
// worker stand-in (nsa_fake_worker) as the measuring process.

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <map>
#include <chrono>
#include <mutex>
#include <thread>

#include "nsa/cache/verdict_store.hpp"
#include "nsa/jit/device.hpp"
#include "nsa/jit/nvrtc.hpp"
#include "nsa/jit/sources.hpp"
#include "nsa/tuner/tuning_service.hpp"
#include "tuning_test_support.hpp"

using namespace nsa;
using namespace nsa::tuner;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

constexpr const char* kFamily = "bf16.dqk128.dv128.h16.blk64.n16.decode";

cache::DeviceRecord device(const std::string& arch = "sm_90", const std::string& name = "Fake GPU") {
  cache::DeviceRecord r;
  r.ordinal = 0;
  r.uuid = "GPU-fake-0";
  r.name = name;
  r.arch = arch;
  r.sm_count = 132;
  r.memory_bytes = 80ull << 30;
  r.driver_version = 13000;
  r.nvrtc_version = jit::nvrtc_version();
  return r;
}

TuningConfig small_config(const std::string& script) {
  TuningConfig c;
  c.plan.families = {FamilyTemplate{api::DType::bf16, 128, 128, 16, 64, {16}}};
  c.plan.phases = {api::Phase::decode};
  c.plan.decode_points = {{1, 4, 1, 8192}, {8, 4, 1, 8192}};
  c.decode_designs = {jit::Design::query_outer, jit::Design::split_kv};  // what the fake worker's scripts name
  c.max_variants_per_design = 1;
  c.worker = NSA_FAKE_WORKER;
  c.worker_env = {{"FAKE_WORKER_SCRIPT", script}};
  c.start_timeout = 5s;
  c.setup_timeout = 3s;
  c.step_timeout = 2s;
  c.idle_poll = 100ms;
  c.failure_backoff = std::chrono::seconds(60);
  c.compile_threads = 2;
  return c;
}

/// Polls status() until `done` holds (or the time is up); returns the last status.
json wait_for(const TuningService& s, const std::function<bool(const json&)>& done, std::chrono::seconds limit = 90s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  json st = s.status();
  while (!done(st) && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(50ms);
    st = s.status();
  }
  return st;
}

struct Logs {
  std::mutex mutex;
  std::vector<std::string> lines;
  LogSink sink() {
    return [this](LogLevel, const std::string& text) {
      std::lock_guard lock(mutex);
      lines.push_back(text);
    };
  }
  bool contains(const std::string& what) {
    std::lock_guard lock(mutex);
    for (const auto& l : lines)
      if (l.find(what) != std::string::npos) return true;
    return false;
  }
};

}  // namespace

TEST(TuningService, TunesThePlanRecordsEveryOutcomeAndVerdictsLand) {
  nsa::tuning_test::TempDir dir;
  const auto db = dir.path() / "state.db";
  // The candidate query_outer crashes its worker; split_kv is 2.5x faster than the baseline;
  // the test-only fault variant poisons the context on the first point.
  TuningConfig config = small_config("sdpa_packed=ok:100:1e-3;split_kv=ok:40:1.5e-3;query_outer=segv;test_fault=sticky");
  config.test_fault = TestFault::illegal_address;
  std::mutex epochs_mutex;
  std::vector<std::int64_t> epochs;
  Logs logs;
  {
    TuningService service(db, {device()}, config, logs.sink());
    service.on_verdicts([&](std::int64_t e) {
      std::lock_guard lock(epochs_mutex);
      epochs.push_back(e);
    });
    ASSERT_TRUE(service.start());
    const json st = wait_for(service, [](const json& s) {
      return s["devices"][0]["verdicts"] == 2 && s["devices"][0]["state"] == "idle";
    });
    ASSERT_EQ(st["devices"][0]["verdicts"], 2) << st.dump(2);
    EXPECT_EQ(st["devices"][0]["points"], 2);
    EXPECT_EQ(st["devices"][0]["family"], kFamily);
    EXPECT_EQ(st["devices"][0]["trigger"], "startup");
    EXPECT_GE(st["devices"][0]["worker_restarts"].get<int>(), 3) << "fault + query_outer twice";
    service.stop();
    EXPECT_EQ(service.status()["state"], "stopped");
  }

  auto store = cache::VerdictStore::open(db);
  ASSERT_TRUE(store);
  const cache::DeviceClass cls = cache::class_of(device(), jit::kernel_source_hash());
  const auto verdicts = store->current_verdicts(cls);
  ASSERT_EQ(verdicts.size(), 2u);
  for (const auto& v : verdicts) {
    EXPECT_EQ(v.family, kFamily);
    EXPECT_EQ(v.backend, "sparse") << v.reason;
    EXPECT_NE(v.variant.find("split_kv"), std::string::npos) << v.variant;
    EXPECT_NEAR(v.speedup, 2.5, 1e-9);
    EXPECT_NEAR(v.baseline_us, 100, 1e-9);
    EXPECT_FALSE(v.experimental);
  }
  {
    std::lock_guard lock(epochs_mutex);
    ASSERT_EQ(epochs.size(), 2u) << "one callback per verdict";
    EXPECT_EQ(epochs.back(), store->epoch());
  }

  const auto runs = store->runs();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].status, cache::RunStatus::finished);
  EXPECT_EQ(runs[0].trigger, "startup");
  EXPECT_EQ(runs[0].device_uuid, "GPU-fake-0");
  EXPECT_NE(runs[0].note.find("2 verdicts (2 sparse)"), std::string::npos) << runs[0].note;

  const auto rows = store->measurements(runs[0].id);
  int sdpa_ok = 0, crashed_qo = 0, split_ok = 0, fault = 0;
  for (const auto& m : rows) {
    if (m.backend == "sdpa" && m.status == cache::MeasurementStatus::ok) ++sdpa_ok;
    if (m.variant.find("query_outer") != std::string::npos) {
      EXPECT_EQ(m.status, cache::MeasurementStatus::crashed);
      EXPECT_NE(m.detail.find("SIGSEGV"), std::string::npos) << m.detail;
      ++crashed_qo;
    }
    if (m.variant.find("split_kv") != std::string::npos && m.status == cache::MeasurementStatus::ok) ++split_ok;
    if (m.variant.find("test_fault") != std::string::npos) {
      EXPECT_EQ(m.status, cache::MeasurementStatus::crashed);
      EXPECT_NE(m.detail.find("sticky"), std::string::npos) << m.detail;
      ++fault;
    }
  }
  EXPECT_EQ(sdpa_ok, 2) << "one baseline per point";
  EXPECT_EQ(crashed_qo, 2);
  EXPECT_EQ(split_ok, 2);
  EXPECT_EQ(fault, 1) << "the test fault runs on the first point of a pass only";
  EXPECT_TRUE(logs.contains(std::string(kFamily) + " on sm_90: 4 variants, 4 compiled"));

  // A restarted tuner finds nothing to do; a retune measures again without compiling anything.
  Logs again;
  TuningService second(db, {device()}, small_config("sdpa_packed=ok:100;split_kv=ok:90"), again.sink());
  ASSERT_TRUE(second.start());
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(store->runs().size(), 1u) << "current verdicts: nothing planned";
  auto id = second.request("all", "uid:1000");
  ASSERT_TRUE(id) << id.error();
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (!store->pending_retunes().empty() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(store->pending_retunes().empty()) << second.status().dump(2);
  second.stop();
  EXPECT_TRUE(again.contains("4 variants, 0 compiled, 4 from the cache")) << "a restart recompiles nothing";
  const auto after = store->current_verdicts(cls);
  ASSERT_EQ(after.size(), 2u);
  for (const auto& v : after) EXPECT_EQ(v.backend, "sdpa") << "90 us is below the 1.2x margin: " << v.reason;
  const auto runs2 = store->runs();
  ASSERT_EQ(runs2.size(), 2u);
  EXPECT_EQ(runs2[0].trigger, "retune");
}

TEST(TuningService, PinnedArchIsNotTunedAndSaysWhy) {
  nsa::tuning_test::TempDir dir;
  TuningService service(dir.path() / "state.db", {device("sm_89", "NVIDIA GeForce RTX 4090")}, small_config(""));
  ASSERT_TRUE(service.start());
  const json st = wait_for(service, [](const json& s) { return s["devices"][0]["state"] == "pinned"; }, 20s);
  EXPECT_EQ(st["devices"][0]["state"], "pinned") << st.dump(2);
  ASSERT_FALSE(st["devices"][0]["notes"].empty());
  EXPECT_NE(st["devices"][0]["notes"][0].get<std::string>().find("sm_89 is pinned"), std::string::npos);
  auto id = service.request("sm_89", "uid:1000");
  ASSERT_TRUE(id);
  auto store = cache::VerdictStore::open_read_only(dir.path() / "state.db");
  ASSERT_TRUE(store);
  const auto until = std::chrono::steady_clock::now() + 20s;
  while (!store->pending_retunes().empty() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(store->pending_retunes().empty()) << "the request is answered: the arch is pinned";
  service.stop();
  EXPECT_TRUE(store->runs().empty()) << "no run on a pinned arch";
}

TEST(TuningService, ExperimentalOverrideTunesThePinnedArchWithoutChangingAnswers) {
  nsa::tuning_test::TempDir dir;
  TuningConfig config = small_config("sdpa_packed=ok:100;split_kv=ok:40");
  config.plan.decode_points = {{1, 4, 1, 8192}};
  ASSERT_FALSE(apply_tuning_env(config, [](const char* name) -> std::optional<std::string> {
    if (std::string(name) == "NSA_TUNE_EXPERIMENTAL_PINNED") return "1";
    return std::nullopt;
  }));
  EXPECT_TRUE(config.plan.experimental_pinned);
  std::atomic<int> callbacks{0};
  TuningService service(dir.path() / "state.db", {device("sm_89", "NVIDIA GeForce RTX 4090")}, config);
  service.on_verdicts([&](std::int64_t) { ++callbacks; });
  ASSERT_TRUE(service.start());
  const json st = wait_for(service, [](const json& s) { return s["devices"][0]["verdicts"] == 1 && s["devices"][0]["state"] == "idle"; });
  service.stop();
  EXPECT_EQ(st["devices"][0]["experimental"], true) << st.dump(2);
  auto store = cache::VerdictStore::open(dir.path() / "state.db");
  ASSERT_TRUE(store);
  const auto runs = store->runs();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_TRUE(runs[0].experimental);
  const auto all = store->latest_verdicts(std::nullopt);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_TRUE(all[0].experimental);
  EXPECT_EQ(all[0].backend, "sparse") << "measured as an experiment";
  EXPECT_TRUE(store->current_verdicts(all[0].device_class).empty()) << "never a dispatch verdict";
  EXPECT_EQ(callbacks, 0) << "experimental verdicts do not move the epoch";
}

TEST(TuningService, WorkerThatCannotStartLeavesTheDeviceFailedWithTheReason) {
  nsa::tuning_test::TempDir dir;
  TuningService service(dir.path() / "state.db", {device()},
                        small_config("start=exit:69:nsa-tune-worker: no usable GPU: CUDA_ERROR_NO_DEVICE"));
  ASSERT_TRUE(service.start());
  const json st = wait_for(service, [](const json& s) { return s["devices"][0]["state"] == "failed"; });
  EXPECT_EQ(st["devices"][0]["state"], "failed") << st.dump(2);
  EXPECT_NE(st["devices"][0]["last_error"].get<std::string>().find("CUDA_ERROR_NO_DEVICE"), std::string::npos);
  const auto t0 = std::chrono::steady_clock::now();
  service.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s) << "stop does not wait out the failure backoff";
  auto store = cache::VerdictStore::open(dir.path() / "state.db");
  ASSERT_TRUE(store);
  ASSERT_EQ(store->runs().size(), 1u);
  EXPECT_EQ(store->runs()[0].status, cache::RunStatus::failed);
  EXPECT_TRUE(store->current_verdicts(cache::class_of(device(), jit::kernel_source_hash())).empty());
}

TEST(TuningService, StopIsPromptWhileAKernelHangsAndTheRunIsAbandoned) {
  nsa::tuning_test::TempDir dir;
  TuningConfig config = small_config("split_kv=hang");
  config.step_timeout = 120s;
  TuningService service(dir.path() / "state.db", {device()}, config);
  ASSERT_TRUE(service.start());
  const json st = wait_for(service, [](const json& s) {
    return s["devices"][0]["variant"].get<std::string>().find("split_kv") != std::string::npos;
  });
  ASSERT_NE(st["devices"][0]["variant"].get<std::string>().find("split_kv"), std::string::npos) << st.dump(2);
  EXPECT_EQ(st["state"], "tuning");
  EXPECT_EQ(st["devices"][0]["point_index"], 1);
  EXPECT_GE(st["devices"][0]["elapsed_s"].get<double>(), 0.0);
  const auto t0 = std::chrono::steady_clock::now();
  service.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  auto store = cache::VerdictStore::open(dir.path() / "state.db");
  ASSERT_TRUE(store);
  ASSERT_EQ(store->runs().size(), 1u);
  EXPECT_EQ(store->runs()[0].status, cache::RunStatus::abandoned);
}

TEST(TuningService, RequestsAreValidatedAndThoseNamingNoDeviceCompleteAtOnce) {
  nsa::tuning_test::TempDir dir;
  TuningService service(dir.path() / "state.db", {device()}, small_config(""));
  EXPECT_FALSE(service.request("all", "uid:1")) << "not started";
  ASSERT_TRUE(service.start());
  auto bad = service.request("hopper", "uid:1");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().find("is not \"all\""), std::string::npos);
  auto other = service.request("sm_80", "uid:1");
  ASSERT_TRUE(other) << other.error();
  service.stop();
  auto store = cache::VerdictStore::open(dir.path() / "state.db");
  ASSERT_TRUE(store);
  for (const auto& r : store->pending_retunes()) EXPECT_NE(r.id, *other) << "sm_80: no such device here";
}

TEST(TuningService, HostWithoutGpuStartsNothingAndAnswersRequests) {
  nsa::tuning_test::TempDir dir;
  TuningService service(dir.path() / "state.db", {}, small_config(""));
  ASSERT_TRUE(service.start());
  const json st = service.status();
  EXPECT_EQ(st["state"], "idle");
  EXPECT_TRUE(st["devices"].empty());
  auto id = service.request("all", "uid:1");
  ASSERT_TRUE(id);
  auto store = cache::VerdictStore::open_read_only(dir.path() / "state.db");
  ASSERT_TRUE(store);
  EXPECT_TRUE(store->pending_retunes().empty());
  service.stop();
}

TEST(TuningService, StartLeavesRunsOfADeadDaemonAbandoned) {
  nsa::tuning_test::TempDir dir;
  {
    auto store = cache::VerdictStore::open(dir.path() / "state.db");
    ASSERT_TRUE(store);
    cache::TuningRun run;
    run.device_class = cache::class_of(device(), jit::kernel_source_hash());
    run.device_uuid = "GPU-fake-0";
    run.trigger = "startup";
    ASSERT_TRUE(store->begin_run(run));
  }
  TuningConfig config = small_config("");
  config.plan.decode_points = {{1, 4, 1, 8192}};
  TuningService service(dir.path() / "state.db", {device()}, config);
  ASSERT_TRUE(service.start());
  service.stop();
  auto store = cache::VerdictStore::open(dir.path() / "state.db");
  ASSERT_TRUE(store);
  const auto runs = store->runs();
  ASSERT_FALSE(runs.empty());
  EXPECT_EQ(runs.back().status, cache::RunStatus::abandoned);
  EXPECT_NE(runs.back().note.find("stopped before this run ended"), std::string::npos);
}

TEST(TuningConfig, JsonKeysAndEnvironmentAreReadStrictly) {
  auto c = tuning_config_from_json(json::parse(R"({
      "margin": 1.5, "gate_factor": 3, "cut_factor": 4, "max_runs": 50, "target_ms": 10,
      "decode_pattern": "clustered", "prefill_designs": ["prefill_shared"], "step_timeout_s": 12,
      "families": [{"dtype": "fp16", "d_qk": 64, "d_v": 64, "h": 8, "block": 32, "n": [4, 8]}],
      "decode_points": ["b2.hkv2.tq1.tkv4096"], "prefill_points": ["b1.hkv2.tq512.tkv4096"]})"));
  ASSERT_TRUE(c) << c.error();
  EXPECT_DOUBLE_EQ(c->policy.margin, 1.5);
  EXPECT_DOUBLE_EQ(c->policy.gate_factor, 3);
  EXPECT_DOUBLE_EQ(c->cut_factor, 4);
  EXPECT_EQ(c->reps.max_runs, 50);
  EXPECT_EQ(c->decode_pattern, jit::SelectionPattern::clustered);
  EXPECT_EQ(c->prefill_designs, std::vector<jit::Design>{jit::Design::prefill_shared});
  EXPECT_EQ(c->step_timeout, 12s);
  ASSERT_EQ(c->plan.families.size(), 1u);
  EXPECT_EQ(c->plan.families[0].n, (std::vector<int>{4, 8}));

  auto error_of = [](const char* text) { return tuning_config_from_json(json::parse(text)).error(); };
  EXPECT_NE(error_of(R"({"margn": 1.2})").find("unknown key 'margn'"), std::string::npos);
  EXPECT_NE(error_of(R"({"margin": 0.9})").find("margin"), std::string::npos);
  EXPECT_NE(error_of(R"({"cut_factor": 1.1})").find("cut_factor"), std::string::npos);
  EXPECT_NE(error_of(R"({"decode_designs": ["sdpa_packed"]})").find("not a sparse design"), std::string::npos);
  EXPECT_NE(error_of(R"({"decode_designs": ["warp_speed"]})").find("is not a design"), std::string::npos);
  EXPECT_NE(error_of(R"({"min_runs": 1})").find("min_runs"), std::string::npos);
  EXPECT_NE(error_of(R"({"families": [{"d_qk": 100}]})").find("tuning.families[0]"), std::string::npos);
  EXPECT_NE(error_of(R"({"test_fault": "hang"})").find("unknown key 'test_fault'"), std::string::npos)
      << "the test switch is an environment variable only";

  TuningConfig e;
  auto env = [](std::map<std::string, std::string> vars) {
    return [vars](const char* name) -> std::optional<std::string> {
      auto it = vars.find(name);
      return it == vars.end() ? std::nullopt : std::optional(it->second);
    };
  };
  EXPECT_FALSE(apply_tuning_env(e, env({{"NSA_TUNE_TEST_FAULT", "hang"}, {"NSA_TUNE_WORKER", "/opt/w"}})));
  EXPECT_EQ(e.test_fault, TestFault::hang);
  EXPECT_EQ(e.worker, "/opt/w");
  EXPECT_NE(apply_tuning_env(e, env({{"NSA_TUNE_TEST_FAULT", "meltdown"}}))->find("NSA_TUNE_TEST_FAULT='meltdown'"),
            std::string::npos);
  EXPECT_NE(apply_tuning_env(e, env({{"NSA_TUNE_EXPERIMENTAL_PINNED", "maybe"}}))->find("NSA_TUNE_EXPERIMENTAL_PINNED"),
            std::string::npos);
  EXPECT_FALSE(TuningConfig{}.validate());
  auto round = tuning_config_from_json(json::object());
  ASSERT_TRUE(round);
  EXPECT_EQ(to_json(*round)["margin"], 1.2);
}

TEST(TestFaultKernel, EveryModeCompilesAndAMissingModeIsACompileError) {
  // What the service compiles when NSA_TUNE_TEST_FAULT is set: test_fault.cu behind one define.
  auto source = jit::find_source("test_fault.cu");
  ASSERT_TRUE(source) << "test_fault.cu is embedded";
  for (const char* mode : {"ILLEGAL_ADDRESS", "HANG", "ABORT"}) {
    const std::string text = std::string("#define NSA_TEST_FAULT_") + mode + " 1\n" + std::string(*source);
    auto cubin = jit::compile_source_to_cubin(text, "test_fault.cu", "sm_90", mode);
    ASSERT_TRUE(cubin) << mode << ": " << cubin.error().message() << "\n" << cubin.error().log;
    ASSERT_EQ(cubin->kernels.size(), 1u);
    EXPECT_EQ(cubin->kernels[0].entry, "nsa_test_fault");
  }
  auto none = jit::compile_source_to_cubin(*source, "test_fault.cu", "sm_90", "none");
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().log.find("needs NSA_TEST_FAULT_ILLEGAL_ADDRESS"), std::string::npos) << none.error().log;
}
