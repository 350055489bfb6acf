// tests/tuner/tuning/worker_test.cpp: the real nsa-tune-worker (tuner/worker/), run as a process.
// On a host without a GPU it must exit at once with a message that says so; the measuring
// itself is exercised on a GPU host with `nsa-tune-worker --device 0 --self-test`.

#include <gtest/gtest.h>

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include "nsa/jit/device.hpp"
#include "nsa/tuner/supervisor.hpp"
#include "nsa/tuner/worker_protocol.hpp"

using namespace nsa::tuner;

namespace {

struct WorkerRun {
  int code = -1;
  std::string output;  // stdout and stderr together
};

WorkerRun run_worker(const std::string& args) {
  const std::string command = std::string(NSA_TUNE_WORKER_EXE) + " " + args + " 2>&1 </dev/null";
  WorkerRun r;
  FILE* p = ::popen(command.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

bool host_has_gpu() { return nsa::jit::probe_devices().available(); }

}  // namespace

TEST(Worker, WithoutGpuExitsAtOnceWithAClearMessage) {
  if (host_has_gpu()) GTEST_SKIP() << "this host has a GPU: the worker would serve jobs";
  const WorkerRun r = run_worker("--device 0");
  EXPECT_EQ(r.code, worker_exit::no_device) << r.output;
  EXPECT_NE(r.output.find("nsa-tune-worker: no usable GPU, nothing to tune:"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("{"), std::string::npos) << "no protocol line (no hello) without a device";
}

TEST(Worker, SelfTestWithoutGpuFailsTheSameWay) {
  if (host_has_gpu()) GTEST_SKIP() << "this host has a GPU";
  const WorkerRun r = run_worker("--device 0 --self-test");
  EXPECT_EQ(r.code, worker_exit::no_device) << r.output;
  EXPECT_NE(r.output.find("no usable GPU"), std::string::npos) << r.output;
}

TEST(Worker, UsageErrorsNameTheArgument) {
  WorkerRun r = run_worker("");
  EXPECT_EQ(r.code, worker_exit::usage);
  EXPECT_NE(r.output.find("--device N is required"), std::string::npos) << r.output;
  r = run_worker("--device banana");
  EXPECT_EQ(r.code, worker_exit::usage);
  EXPECT_NE(r.output.find("'banana' is not a device ordinal"), std::string::npos) << r.output;
  r = run_worker("--device 0 --turbo");
  EXPECT_EQ(r.code, worker_exit::usage);
  EXPECT_NE(r.output.find("unknown argument '--turbo'"), std::string::npos) << r.output;
  r = run_worker("--help");
  EXPECT_EQ(r.code, worker_exit::ok);
  EXPECT_NE(r.output.find("--self-test"), std::string::npos);
}

TEST(Worker, SupervisorReportsTheRealWorkersReasonOnAHostWithoutGpu) {
  if (host_has_gpu()) GTEST_SKIP() << "this host has a GPU";
  SupervisorConfig c;
  c.command.executable = NSA_TUNE_WORKER_EXE;
  WorkerSupervisor sup(c);
  Job job;
  job.id = 1;
  job.family = *nsa::api::Family::parse("bf16.dqk128.dv128.h16.blk64.n16.decode");
  job.point = *nsa::api::Point::parse("b1.hkv4.tq1.tkv8192");
  const JobOutcome o = sup.run(job);
  EXPECT_TRUE(o.worker_unavailable);
  EXPECT_NE(o.failure.find("exited with code 69 before it was ready"), std::string::npos) << o.failure;
  EXPECT_NE(o.failure.find("no usable GPU"), std::string::npos) << o.failure;
}
