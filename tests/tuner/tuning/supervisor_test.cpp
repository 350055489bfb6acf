// tests/tuner/tuning/supervisor_test.cpp: tuner/supervisor.cpp against a real child process
// (nsa_fake_worker, scripted per test through FAKE_WORKER_SCRIPT).

#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "nsa/tuner/supervisor.hpp"
#include "tuning_test_support.hpp"

using namespace nsa;
using namespace nsa::tuner;
using namespace std::chrono_literals;

namespace {

SupervisorConfig config_for(const std::string& script, const std::filesystem::path& log = {}) {
  SupervisorConfig c;
  c.device = 0;
  c.command.executable = NSA_FAKE_WORKER;
  c.command.env = {{"FAKE_WORKER_SCRIPT", script}};
  if (!log.empty()) c.command.env.emplace_back("FAKE_WORKER_LOG", log.string());
  c.start_timeout = 5s;
  c.setup_timeout = 2s;
  c.step_timeout = 700ms;
  c.exit_grace = 1s;
  return c;
}

JobVariant variant(const std::string& key, const std::string& backend = "sparse") {
  jit::LaunchPlan plan;
  jit::Launch l;
  l.entry = "nsa_query_outer";
  l.grid[0] = 64;
  plan.launches.push_back(l);
  return JobVariant{key, backend, plan, std::make_shared<const std::vector<std::uint8_t>>(64, 0xAB)};
}

Job job_of(std::int64_t id, std::initializer_list<const char*> keys) {
  Job job;
  job.id = id;
  job.family = *api::Family::parse("bf16.dqk128.dv128.h16.blk64.n16.decode");
  job.point = *api::Point::parse("b1.hkv4.tq1.tkv8192");
  job.seed = 1234;
  job.support = variant("nsa_worker.kernels.sm_90", "support");
  job.reference = variant("sel_fwd.reference.x", "reference");
  for (const char* k : keys) job.variants.push_back(variant(k, std::string(k).find("sdpa") != std::string::npos ? "sdpa" : "sparse"));
  return job;
}

const VariantResult* find(const JobOutcome& o, const std::string& key) {
  for (const auto& r : o.results)
    if (r.variant == key) return &r;
  return nullptr;
}

int lines_containing(const std::filesystem::path& file, const std::string& what) {
  std::ifstream in(file);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) n += line.find(what) != std::string::npos;
  return n;
}

}  // namespace

TEST(Supervisor, CorrectWorkerMeasuresEveryVariantInOneProcess) {
  WorkerSupervisor sup(config_for("sdpa=ok:100;fast=ok:40:2e-3"));
  std::vector<std::string> steps;
  int results = 0;
  const JobOutcome o = sup.run(
      job_of(1, {"sel_fwd.sdpa_packed.a", "sel_fwd.query_outer.fast", "sel_fwd.split_kv.b"}),
      [&](const VariantResult&) { ++results; }, [&](const std::string& s) { steps.push_back(s); });
  EXPECT_TRUE(o.complete);
  EXPECT_TRUE(o.failure.empty()) << o.failure;
  EXPECT_EQ(o.restarts, 0);
  ASSERT_EQ(o.results.size(), 3u);
  EXPECT_EQ(results, 3);
  EXPECT_EQ(steps, (std::vector<std::string>{"setup", "sel_fwd.sdpa_packed.a", "sel_fwd.query_outer.fast", "sel_fwd.split_kv.b"}));
  EXPECT_EQ(find(o, "sel_fwd.sdpa_packed.a")->backend, "sdpa");
  EXPECT_DOUBLE_EQ(find(o, "sel_fwd.query_outer.fast")->median_us, 40);
  EXPECT_DOUBLE_EQ(find(o, "sel_fwd.query_outer.fast")->rel_l2, 2e-3);
  ASSERT_TRUE(o.done);
  EXPECT_EQ(o.done->copies, 2);
  EXPECT_EQ(sup.stats().starts, 1);
  ASSERT_TRUE(sup.hello());
  EXPECT_EQ(sup.hello()->name, "Fake GPU");

  // The worker stays up for the next job and is not sent the cubins again (the stand-in would
  // answer "no cubin" for a variant it never got one for).
  Job second = job_of(2, {"sel_fwd.query_outer.fast"});
  const JobOutcome o2 = sup.run(second);
  EXPECT_TRUE(o2.complete);
  EXPECT_EQ(find(o2, "sel_fwd.query_outer.fast")->status, cache::MeasurementStatus::ok);
  EXPECT_EQ(sup.stats().starts, 1);
}

TEST(Supervisor, AbortIsRecordedCrashedAndTheNextVariantRunsInANewWorker) {
  nsa::tuning_test::TempDir dir;
  WorkerSupervisor sup(config_for("boom=abort", dir.path() / "log"));
  const JobOutcome o = sup.run(job_of(3, {"sel_fwd.sdpa_packed.a", "sel_fwd.query_outer.boom", "sel_fwd.split_kv.b"}));
  EXPECT_TRUE(o.complete);
  EXPECT_EQ(o.restarts, 1);
  ASSERT_EQ(o.results.size(), 3u);
  const VariantResult* boom = find(o, "sel_fwd.query_outer.boom");
  ASSERT_TRUE(boom);
  EXPECT_EQ(boom->status, cache::MeasurementStatus::crashed);
  EXPECT_NE(boom->detail.find("SIGABRT"), std::string::npos) << boom->detail;
  EXPECT_NE(boom->detail.find("while running sel_fwd.query_outer.boom"), std::string::npos) << boom->detail;
  EXPECT_NE(boom->detail.find("last log: fake worker"), std::string::npos) << "the crash report carries the worker's log";
  EXPECT_EQ(find(o, "sel_fwd.split_kv.b")->status, cache::MeasurementStatus::ok)
      << find(o, "sel_fwd.split_kv.b")->detail << " (a 'no cubin' here means the new worker was not sent the cubins)";
  EXPECT_EQ(find(o, "sel_fwd.sdpa_packed.a")->status, cache::MeasurementStatus::ok);
  EXPECT_EQ(sup.stats().starts, 2);
  EXPECT_EQ(sup.stats().crashes, 1);
  EXPECT_EQ(lines_containing(dir.path() / "log", " start"), 2);
  // The second worker was given only what was left: the baseline was measured exactly once.
  EXPECT_EQ(lines_containing(dir.path() / "log", "step sel_fwd.sdpa_packed.a"), 1);
  EXPECT_EQ(lines_containing(dir.path() / "log", "step sel_fwd.split_kv.b"), 1);
}

TEST(Supervisor, SegfaultIsRecordedCrashedWithTheSignal) {
  WorkerSupervisor sup(config_for("boom=segv"));
  const JobOutcome o = sup.run(job_of(4, {"sel_fwd.query_outer.boom", "sel_fwd.split_kv.b"}));
  EXPECT_TRUE(o.complete);
  EXPECT_EQ(find(o, "sel_fwd.query_outer.boom")->status, cache::MeasurementStatus::crashed);
  EXPECT_NE(find(o, "sel_fwd.query_outer.boom")->detail.find("SIGSEGV"), std::string::npos);
  EXPECT_EQ(find(o, "sel_fwd.split_kv.b")->status, cache::MeasurementStatus::ok);
}

TEST(Supervisor, HangIsKilledByTheWatchdogAndRecordedTimeout) {
  WorkerSupervisor sup(config_for("stuck=hang"));
  const auto t0 = std::chrono::steady_clock::now();
  const JobOutcome o = sup.run(job_of(5, {"sel_fwd.query_outer.stuck", "sel_fwd.split_kv.b"}));
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(o.complete);
  const VariantResult* stuck = find(o, "sel_fwd.query_outer.stuck");
  ASSERT_TRUE(stuck);
  EXPECT_EQ(stuck->status, cache::MeasurementStatus::timeout);
  EXPECT_NE(stuck->detail.find("no progress for 0.7 s"), std::string::npos) << stuck->detail;
  EXPECT_EQ(find(o, "sel_fwd.split_kv.b")->status, cache::MeasurementStatus::ok);
  EXPECT_EQ(sup.stats().timeouts, 1);
  EXPECT_LT(took, 5s) << "the deadline is 0.7 s per step";
}

TEST(Supervisor, GarbageOnStdoutIsACrashOfTheRunningVariant) {
  WorkerSupervisor sup(config_for("noise=garbage"));
  const JobOutcome o = sup.run(job_of(6, {"sel_fwd.query_outer.noise", "sel_fwd.split_kv.b"}));
  EXPECT_TRUE(o.complete);
  const VariantResult* noise = find(o, "sel_fwd.query_outer.noise");
  ASSERT_TRUE(noise);
  EXPECT_EQ(noise->status, cache::MeasurementStatus::crashed);
  EXPECT_NE(noise->detail.find("wrote garbage 'this is not a protocol line'"), std::string::npos) << noise->detail;
  EXPECT_EQ(find(o, "sel_fwd.split_kv.b")->status, cache::MeasurementStatus::ok);
}

TEST(Supervisor, ResultForAnotherVariantIsGarbage) {
  WorkerSupervisor sup(config_for("liar=wrongresult"));
  const JobOutcome o = sup.run(job_of(7, {"sel_fwd.query_outer.liar", "sel_fwd.split_kv.b"}));
  EXPECT_EQ(find(o, "sel_fwd.query_outer.liar")->status, cache::MeasurementStatus::crashed);
  EXPECT_NE(find(o, "sel_fwd.query_outer.liar")->detail.find("a result for sel_fwd.not_running"), std::string::npos);
  EXPECT_EQ(find(o, "sel_fwd.split_kv.b")->status, cache::MeasurementStatus::ok);
  EXPECT_EQ(find(o, "sel_fwd.not_running"), nullptr) << "a result for a variant not in the job is never recorded";
}

TEST(Supervisor, ExitMidJobIsRecordedWithTheExitCode) {
  WorkerSupervisor sup(config_for("quits=exit:7"));
  const JobOutcome o = sup.run(job_of(8, {"sel_fwd.query_outer.quits", "sel_fwd.split_kv.b"}));
  EXPECT_EQ(find(o, "sel_fwd.query_outer.quits")->status, cache::MeasurementStatus::crashed);
  EXPECT_NE(find(o, "sel_fwd.query_outer.quits")->detail.find("exited with code 7"), std::string::npos);
  EXPECT_EQ(find(o, "sel_fwd.split_kv.b")->status, cache::MeasurementStatus::ok);
}

TEST(Supervisor, StickyErrorKeepsTheWorkersOwnResultAndRestarts) {
  WorkerSupervisor sup(config_for("poison=sticky"));
  const JobOutcome o = sup.run(job_of(9, {"sel_fwd.query_outer.poison", "sel_fwd.split_kv.b"}));
  EXPECT_TRUE(o.complete);
  const VariantResult* poison = find(o, "sel_fwd.query_outer.poison");
  ASSERT_TRUE(poison);
  EXPECT_EQ(poison->status, cache::MeasurementStatus::crashed);
  EXPECT_NE(poison->detail.find("CUDA_ERROR_ILLEGAL_ADDRESS (sticky"), std::string::npos) << poison->detail;
  EXPECT_EQ(find(o, "sel_fwd.split_kv.b")->status, cache::MeasurementStatus::ok);
  EXPECT_EQ(o.restarts, 1);
  EXPECT_EQ(sup.stats().sticky, 1);
  EXPECT_EQ(sup.stats().crashes, 0) << "an orderly exit after a sticky error is not a crash of the worker";
}

TEST(Supervisor, CrashInSetupMakesThePointUnmeasurableAndSkipsItsVariants) {
  WorkerSupervisor sup(config_for("setup=segv"));
  const JobOutcome o = sup.run(job_of(10, {"sel_fwd.sdpa_packed.a", "sel_fwd.query_outer.b"}));
  EXPECT_TRUE(o.complete);
  EXPECT_FALSE(o.worker_unavailable);
  EXPECT_NE(o.failure.find("during setup"), std::string::npos) << o.failure;
  ASSERT_EQ(o.results.size(), 2u);
  for (const auto& r : o.results) {
    EXPECT_EQ(r.status, cache::MeasurementStatus::skipped);
    EXPECT_NE(r.detail.find("point not measured"), std::string::npos) << r.detail;
  }
  EXPECT_EQ(sup.stats().starts, 1) << "nothing is retried for a point whose setup kills the worker";
}

TEST(Supervisor, JobFailedSkipsTheVariantsAndTheWorkerServesTheNextJob) {
  WorkerSupervisor sup(config_for("setup=fail"));
  const JobOutcome o = sup.run(job_of(11, {"sel_fwd.query_outer.b"}));
  EXPECT_TRUE(o.complete);
  EXPECT_NE(o.failure.find("90 GiB"), std::string::npos);
  EXPECT_EQ(o.results.at(0).status, cache::MeasurementStatus::skipped);
  EXPECT_GT(sup.worker_pid(), 0) << "job_failed is not a crash: the worker stays";
}

TEST(Supervisor, WorkerThatCannotStartMakesTheDeviceUnavailable) {
  WorkerSupervisor sup(config_for("start=exit:69:nsa-tune-worker: no usable GPU: libcuda.so.1 not found"));
  const JobOutcome o = sup.run(job_of(12, {"sel_fwd.query_outer.b"}));
  EXPECT_FALSE(o.complete);
  EXPECT_TRUE(o.worker_unavailable);
  EXPECT_TRUE(o.results.empty()) << "a device that cannot run a worker records no measurement";
  EXPECT_NE(o.failure.find("exited with code 69 before it was ready"), std::string::npos) << o.failure;
  EXPECT_NE(o.failure.find("libcuda.so.1 not found"), std::string::npos) << "the worker's own words reach the operator";
  EXPECT_EQ(sup.stats().start_failures, 1);
}

TEST(Supervisor, MissingExecutableSaysWhatToInstall) {
  SupervisorConfig c = config_for("");
  c.command.executable = "/nonexistent/nsa-tune-worker";
  WorkerSupervisor sup(c);
  const JobOutcome o = sup.run(job_of(13, {"sel_fwd.query_outer.b"}));
  EXPECT_TRUE(o.worker_unavailable);
  EXPECT_NE(o.failure.find("No such file"), std::string::npos) << o.failure;
  EXPECT_NE(o.failure.find("NSA_TUNE_WORKER"), std::string::npos) << o.failure;
}

TEST(Supervisor, WorkerOfAnotherProtocolVersionIsRefused) {
  WorkerSupervisor sup(config_for("start=badhello"));
  const JobOutcome o = sup.run(job_of(14, {"sel_fwd.query_outer.b"}));
  EXPECT_TRUE(o.worker_unavailable);
  EXPECT_NE(o.failure.find("install the nsa-tune-worker of this build"), std::string::npos) << o.failure;
}

TEST(Supervisor, WorkerThatStopsReadingIsGivenUpWithoutBlockingTheCaller) {
  // A job far larger than a socket buffer, to a worker that never reads it: the write must not
  // block the daemon, and after a few fruitless restarts the device is declared unavailable.
  SupervisorConfig c = config_for("start=deaf");
  c.setup_timeout = 300ms;
  WorkerSupervisor sup(c);
  Job job = job_of(15, {"sel_fwd.query_outer.b"});
  job.variants[0].cubin = std::make_shared<const std::vector<std::uint8_t>>(8u << 20, 0x5A);
  const auto t0 = std::chrono::steady_clock::now();
  const JobOutcome o = sup.run(job);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);
  EXPECT_TRUE(o.worker_unavailable);
  EXPECT_NE(o.failure.find("keeps exiting without finishing a variant"), std::string::npos) << o.failure;
  EXPECT_EQ(sup.stats().timeouts, 3);
}

TEST(Supervisor, InterruptStopsAHangingJobPromptly) {
  SupervisorConfig c = config_for("stuck=hang");
  c.step_timeout = 60s;
  WorkerSupervisor sup(c);
  std::thread stopper([&] {
    std::this_thread::sleep_for(300ms);
    sup.interrupt();
  });
  const auto t0 = std::chrono::steady_clock::now();
  const JobOutcome o = sup.run(job_of(16, {"sel_fwd.split_kv.b", "sel_fwd.query_outer.stuck"}));
  stopper.join();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  EXPECT_TRUE(o.interrupted);
  EXPECT_FALSE(o.complete);
  EXPECT_EQ(find(o, "sel_fwd.query_outer.stuck"), nullptr) << "an interrupted variant is not blamed";
  EXPECT_EQ(sup.worker_pid(), 0) << "the worker was killed";
  // Until cleared, every run returns at once.
  EXPECT_TRUE(sup.run(job_of(17, {"sel_fwd.split_kv.b"})).interrupted);
  sup.clear_interrupt();
  EXPECT_TRUE(sup.run(job_of(18, {"sel_fwd.split_kv.b"})).complete);
}

TEST(Supervisor, ShutdownEndsTheWorkerAndTheNextRunStartsAFreshOne) {
  WorkerSupervisor sup(config_for(""));
  ASSERT_TRUE(sup.run(job_of(19, {"sel_fwd.split_kv.b"})).complete);
  const int pid = sup.worker_pid();
  ASSERT_GT(pid, 0);
  sup.shutdown();
  EXPECT_EQ(sup.worker_pid(), 0);
  EXPECT_NE(::kill(pid, 0), 0) << "the process is gone (reaped)";
  const JobOutcome o = sup.run(job_of(20, {"sel_fwd.split_kv.b"}));
  EXPECT_EQ(find(o, "sel_fwd.split_kv.b")->status, cache::MeasurementStatus::ok)
      << "a fresh worker is sent the cubins again: " << find(o, "sel_fwd.split_kv.b")->detail;
  EXPECT_EQ(sup.stats().starts, 2);
}

TEST(Supervisor, EveryVariantCrashingStillEndsTheJob) {
  WorkerSupervisor sup(config_for("sel_fwd=segv"));
  const JobOutcome o = sup.run(job_of(21, {"sel_fwd.a", "sel_fwd.b", "sel_fwd.c"}));
  EXPECT_TRUE(o.complete);
  EXPECT_EQ(o.results.size(), 3u);
  for (const auto& r : o.results) EXPECT_EQ(r.status, cache::MeasurementStatus::crashed);
  EXPECT_EQ(sup.stats().starts, 3);
}

TEST(DescribeWaitStatus, NamesSignalsAndExitCodes) {
  EXPECT_EQ(describe_wait_status(7 << 8), "exited with code 7");
  EXPECT_EQ(describe_wait_status(SIGSEGV), "killed by signal 11 (SIGSEGV)");
  EXPECT_EQ(describe_wait_status(SIGKILL), "killed by signal 9 (SIGKILL)");
}
