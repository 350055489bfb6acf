// service/tuning.cpp without a daemon: the test-only device list, the worker lookup, and the
// reasons a daemon does not tune (each must reach status and a refused retune as said).

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include <sys/stat.h>

#include "nsa/cache/verdict_store.hpp"
#include "nsa/service/tuning.hpp"
#include "service_test_support.hpp"

namespace nsa::service {
namespace {

using testing::TempDir;
using nlohmann::json;

void make_file(const std::filesystem::path& p, mode_t mode) {
  std::ofstream(p) << "#!/bin/sh\nexit 0\n";
  ::chmod(p.c_str(), mode);
}

/// Sets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : m_name(name) {
    if (const char* old = std::getenv(name)) m_old = old;
    ::setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (m_old) ::setenv(m_name, m_old->c_str(), 1);
    else ::unsetenv(m_name);
  }

 private:
  const char* m_name;
  std::optional<std::string> m_old;
};

HostInfo host_with(std::vector<std::string> archs, std::string problem = {}) {
  HostInfo h;
  h.driver_loaded = !archs.empty();
  h.driver_version = 13000;
  h.driver_problem = std::move(problem);
  for (std::size_t i = 0; i < archs.size(); ++i) {
    LocalDevice d;
    d.record.ordinal = static_cast<int>(i);
    d.record.uuid = "GPU-t-" + std::to_string(i);
    d.record.name = "Test GPU";
    d.record.arch = archs[i];
    h.devices.push_back(d);
  }
  return h;
}

TEST(TestDevices, AFullListBecomesAProbeWithOrdinalsAndDefaults) {
  auto p = probe_from_test_devices(
      R"({"driver_version": 12080, "devices": [{"arch": "sm_90", "name": "H", "uuid": "GPU-a", "sm_count": 132,
          "memory_bytes": 85899345920}, {"arch": "sm_80"}]})");
  ASSERT_TRUE(p) << p.error();
  EXPECT_TRUE(p->available());
  EXPECT_EQ(p->driver_version, 12080);
  ASSERT_EQ(p->devices.size(), 2u);
  EXPECT_EQ(p->devices[0].name, "H");
  EXPECT_EQ(p->devices[0].uuid, "GPU-a");
  EXPECT_EQ(p->devices[0].cc_major, 9);
  EXPECT_EQ(p->devices[0].cc_minor, 0);
  EXPECT_EQ(p->devices[1].ordinal, 1);
  EXPECT_EQ(p->devices[1].uuid, "GPU-test-1");
  EXPECT_EQ(p->devices[1].arch, "sm_80");
  EXPECT_EQ(p->devices[1].cc_major, 8);
  EXPECT_GT(p->devices[1].memory_bytes, 0u);
}

TEST(TestDevices, AnEmptyListIsAHostWithoutAGpuAndSaysSo) {
  auto p = probe_from_test_devices(R"({"devices": []})");
  ASSERT_TRUE(p) << p.error();
  EXPECT_FALSE(p->available());
  EXPECT_NE(p->problem.find("NSA_TUNE_TEST_DEVICES lists no devices"), std::string::npos);
}

TEST(TestDevices, BadInputIsRefusedNamingWhatIsWrong) {
  const std::pair<const char*, const char*> cases[] = {
      {"not json", "must be a JSON object"},
      {R"([{"arch":"sm_90"}])", "must be a JSON object"},
      {R"({"devices": {}})", "\"devices\" must be an array"},
      {R"({})", "\"devices\" must be an array"},
      {R"({"gpus": []})", "unknown key \"gpus\""},
      {R"({"devices": [{"name": "x"}]})", "devices[0]: \"arch\" is required"},
      {R"({"devices": [{"arch": "hopper"}]})", "devices[0]: \"arch\" is required and looks like"},
      {R"({"devices": [{"arch": "sm_90", "sms": 4}]})", "devices[0]: unknown key \"sms\""},
      {R"({"devices": [{"arch": "sm_90", "memory_bytes": -1}]})", "\"memory_bytes\" must be a positive integer"},
      {R"({"driver_version": "13.0", "devices": []})", "\"driver_version\" must be a positive integer"},
  };
  for (const auto& [text, expected] : cases) {
    auto p = probe_from_test_devices(text);
    ASSERT_FALSE(p) << text;
    EXPECT_NE(p.error().find(expected), std::string::npos) << text << " -> " << p.error();
    EXPECT_NE(p.error().find("NSA_TUNE_TEST_DEVICES"), std::string::npos) << p.error();
  }
}

TEST(ResolveWorker, AnExecutableFileIsUsedAndAnythingElseSaysWhatToDo) {
  TempDir dir;
  make_file(dir / "worker", 0755);
  make_file(dir / "plain", 0644);
  auto ok = resolve_worker(dir / "worker");
  ASSERT_TRUE(ok) << ok.error();
  EXPECT_EQ(*ok, dir / "worker");
  auto missing = resolve_worker(dir / "nope");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().find("does not exist"), std::string::npos) << missing.error();
  EXPECT_NE(missing.error().find("NSA_TUNE_WORKER"), std::string::npos) << missing.error();
  auto plain = resolve_worker(dir / "plain");
  ASSERT_FALSE(plain);
  EXPECT_NE(plain.error().find("is not an executable file"), std::string::npos) << plain.error();
  auto directory = resolve_worker(dir.path());
  ASSERT_FALSE(directory);
}

TEST(ResolveWorker, ABareNameIsLookedUpInPath) {
  TempDir dir;
  std::filesystem::create_directories(dir / "bin");
  make_file(dir / "bin" / "my-worker", 0755);
  ScopedEnv path("PATH", "/nonexistent:" + (dir / "bin").string());
  auto found = resolve_worker("my-worker");
  ASSERT_TRUE(found) << found.error();
  EXPECT_EQ(*found, dir / "bin" / "my-worker");
  auto missing = resolve_worker("other-worker");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().find("in PATH"), std::string::npos) << missing.error();
}

TEST(Tuning, NoTuneIsTheFirstReasonAndRetuneIsRefusedWithIt) {
  Config c;
  c.no_tune = true;
  c.sources["no_tune"] = "env NSA_TUNE_NO_TUNE";
  Tuning t(c, host_with({"sm_90"}));
  t.start([](std::int64_t) {});
  EXPECT_FALSE(t.on());
  EXPECT_EQ(t.off_reason(), "disabled (--no-tune, set by env NSA_TUNE_NO_TUNE)");
  auto r = t.request("all", "uid:0");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), t.off_reason());
  const json st = t.status({cache::RetuneRequest{7, "all", "uid:0", 1, 0, ""}});
  EXPECT_EQ(st["state"], "off");
  EXPECT_EQ(st["reason"], t.off_reason());
  EXPECT_EQ(st["pending_requests"], json::array({7}));
  EXPECT_TRUE(st["devices"].empty());
  EXPECT_TRUE(st["config"].contains("margin"));
  EXPECT_EQ(t.summary(1), "off: " + t.off_reason() + "; 1 retune request pending");
}

TEST(Tuning, AHostWithoutAGpuDoesNotTuneAndNamesTheDriversProblem) {
  Config c;
  c.tuning.worker = "/nonexistent/worker";  // never looked at: there is nothing to tune
  Tuning t(c, host_with({}, "libcuda.so.1 not found"));
  t.start([](std::int64_t) {});
  EXPECT_FALSE(t.on());
  EXPECT_EQ(t.off_reason(), "no usable GPU on this host, nothing to tune (libcuda.so.1 not found)");
  EXPECT_TRUE(t.worker().empty());
}

TEST(Tuning, AMissingWorkerIsTheReasonWhenThereAreGpus) {
  TempDir dir;
  Config c;
  c.tuning.worker = dir / "missing-worker";
  Tuning t(c, host_with({"sm_90"}));
  EXPECT_FALSE(t.on());
  EXPECT_NE(t.off_reason().find("missing-worker does not exist"), std::string::npos) << t.off_reason();
}

TEST(Tuning, AStartedTunerReportsItsDevicesAndStopsOnRequest) {
  TempDir dir;
  make_file(dir / "worker", 0755);  // never run: the plan below is empty and nobody asks
  Config c;
  c.state_dir = dir.path();
  c.tuning.worker = dir / "worker";
  c.tuning.plan.families.clear();
  c.tuning.idle_poll = std::chrono::milliseconds(50);
  ASSERT_TRUE(cache::VerdictStore::open(c.store_path()));
  Tuning t(c, host_with({"sm_90"}));
  t.start([](std::int64_t) {});
  ASSERT_TRUE(t.on()) << t.off_reason();
  EXPECT_EQ(t.worker(), dir / "worker");
  const json st = t.status({});
  EXPECT_TRUE(st["reason"].is_null());
  ASSERT_EQ(st["devices"].size(), 1u);
  EXPECT_EQ(st["devices"][0]["arch"], "sm_90");
  auto other = t.request("sm_80", "uid:0");
  ASSERT_TRUE(other) << other.error();
  EXPECT_FALSE(other->pending) << "no sm_80 here: completed at once";
  EXPECT_EQ(t.summary(0).rfind("on: ", 0), 0u) << t.summary(0);
  t.stop();
  EXPECT_FALSE(t.on());
  EXPECT_EQ(t.status({})["state"], "stopped");
  auto late = t.request("all", "uid:0");
  ASSERT_FALSE(late);
  EXPECT_NE(late.error().find("stopping"), std::string::npos);
}

}  // namespace
}  // namespace nsa::service
