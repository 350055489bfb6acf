// The daemon's tuner end to end: the real nsa-tuned with tuning on, on this host (without a GPU:
// it must say why it does not tune, spawn nothing and serve on), and with made-up GPUs
// (NSA_TUNE_TEST_DEVICES, test only) measured by the worker stand-in nsa_fake_worker: verdicts
// land while clients run, a subscriber sees the epoch move, the C client's answer turns from
// untuned to measured without a restart, `nsa-tunectl retune --wait` and `report --plot` work
// against it, and SIGTERM stops a hung worker promptly.
//
// The kernels are really compiled (NVRTC, one small family, one setting per design); only the
// measuring process is a stand-in.

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <set>

#include <signal.h>

#include "nsa/api/client.h"
#include "nsa/cache/verdict_store.hpp"
#include "nsa/jit/device.hpp"
#include "service_test_support.hpp"

namespace nsa::service::testing {
namespace {

constexpr const char* kFamily = "bf16.dqk128.dv128.h16.blk64.n16.decode";
constexpr const char* kOneFakeGpu = R"({"devices":[{"arch":"sm_90","name":"Fake GPU","uuid":"GPU-fake-0"}]})";

/// A config file with a tuning plan small enough for a test: one decode family (when `startup`),
/// one point, one knob setting per design, short watchdogs, a fast idle poll.
fs::path write_config(const TempDir& dir, bool startup, int step_timeout_s = 5) {
  json tuning{{"phases", {"decode"}},
              {"decode_points", {"b1.hkv4.tq1.tkv8192"}},
              {"max_variants_per_design", 1},
              {"idle_poll_s", 0.1},
              {"compile_threads", 2},
              {"start_timeout_s", 10},
              {"setup_timeout_s", 10},
              {"step_timeout_s", step_timeout_s},
              {"families", json::array()}};
  if (startup)
    tuning["families"] = json::array({json{{"dtype", "bf16"}, {"d_qk", 128}, {"d_v", 128}, {"h", 16}, {"block", 64},
                                          {"n", {16}}}});
  const fs::path p = dir / "nsa-tuned.json";
  std::ofstream(p) << json{{"tuning", tuning}}.dump(2);
  return p;
}

std::vector<std::pair<std::string, std::string>> fake_env(const TempDir& dir, const std::string& script) {
  return {{"NSA_TUNE_TEST_DEVICES", kOneFakeGpu},
          {"NSA_TUNE_WORKER", NSA_FAKE_WORKER},
          {"FAKE_WORKER_SCRIPT", script},
          {"FAKE_WORKER_LOG", (dir / "worker.log").string()}};
}

/// Polls status until `done(status)` or `limit`; returns the last status.
json status_until(SyncClient& c, const std::function<bool(const json&)>& done, std::chrono::milliseconds limit = 60s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  json last;
  for (;;) {
    auto s = c.request(json{{"op", "status"}});
    if (s) last = *s;
    if ((s && done(last)) || std::chrono::steady_clock::now() >= deadline) return last;
    std::this_thread::sleep_for(50ms);
  }
}

struct ClientCloser {
  void operator()(nsa_tune_client* c) const { nsa_tune_client_close(c); }
};
using ClientPtr = std::unique_ptr<nsa_tune_client, ClientCloser>;

ClientPtr open_c_client(const Daemon& d) {
  nsa_tune_client_options o;
  nsa_tune_client_options_init(&o);
  const std::string socket = d.socket().string();
  o.socket_path = socket.c_str();
  o.budget_us = 500'000;  // generous: this machine may be busy compiling
  o.client_name = "e2e_tuning_test";
  o.backoff_min_us = 10'000;
  o.backoff_max_us = 100'000;
  return ClientPtr(nsa_tune_client_open(&o));
}

/// The decode problem the C client asks about: device 0, the test family, a point the plan
/// does not list (so the tuner measures it because it was asked for).
nsa_tune_problem c_problem() {
  nsa_tune_problem p;
  nsa_tune_problem_init(&p);
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

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

ProcessResult ctl(const Daemon& d, std::vector<std::string> args, std::chrono::milliseconds limit = 60s) {
  std::vector<std::string> argv{tunectl_binary().string(), "--socket", d.socket().string(), "--state-dir",
                                d.state_dir().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv, {}, limit);
}

TEST(TuningE2E, OnAHostWithoutAGpuTheDaemonSaysWhyItDoesNotTuneSpawnsNothingAndServesOn) {
  TempDir dir;
  auto env = fake_env(dir, "");
  env.erase(env.begin());  // no made-up GPUs: this host as it is...
  // ...unless it has a GPU, where an empty made-up list stands in for "no GPU".
  if (jit::probe_devices().available()) env.emplace_back("NSA_TUNE_TEST_DEVICES", R"({"devices":[]})");
  Daemon d(dir.path(), {"--config", write_config(dir, true).string(), "--log-level", "info"});
  d.with_tuning(env);
  ASSERT_TRUE(d.start());
  auto c = d.client();

  auto s = c.request(json{{"op", "status"}});
  ASSERT_TRUE(s);
  EXPECT_EQ((*s)["tuning_enabled"], false);
  EXPECT_EQ((*s)["tuning"]["state"], "off") << s->dump(2);
  const std::string reason = (*s)["tuning"]["reason"].get<std::string>();
  EXPECT_NE(reason.find("no usable GPU on this host, nothing to tune"), std::string::npos) << reason;
  EXPECT_TRUE((*s)["tuning"]["devices"].empty());
  EXPECT_EQ((*s)["tuning"]["config"]["decode_points"], json::array({"b1.hkv4.tq1.tkv8192"}))
      << "the configuration file's tuning object is read even when tuning is off";
  EXPECT_EQ((*s)["tuning_note"], "off: " + reason);

  auto answer = c.request(dispatch_request(json::array({problem()})));
  ASSERT_TRUE(answer);
  ASSERT_TRUE((*answer)["ok"].get<bool>()) << answer->dump();
  EXPECT_EQ((*answer)["answers"][0]["provenance"], "no_device");

  auto retune = c.request(json{{"op", "retune"}, {"scope", "all"}});
  ASSERT_TRUE(retune);
  EXPECT_EQ(error_code(*retune), "tuning_disabled") << retune->dump();
  EXPECT_NE((*retune)["error"]["message"].get<std::string>().find("no usable GPU"), std::string::npos);
  auto after = c.request(json{{"op", "status"}});
  ASSERT_TRUE(after);
  EXPECT_TRUE((*after)["pending_retunes"].empty()) << "nothing was queued";

  ProcessResult st = ctl(d, {"status"});
  ASSERT_EQ(st.code, 0) << st.err;
  EXPECT_NE(st.out.find("tuning      off: no usable GPU"), std::string::npos) << st.out;

  std::this_thread::sleep_for(300ms);  // more than the tuner's idle poll, had it started
  EXPECT_FALSE(fs::exists(dir / "worker.log")) << "a worker was spawned on a host without a GPU";
  ASSERT_EQ(d.stop(), 0);
  const std::string log = d.log();
  EXPECT_EQ(count_of(log, "tuning off: "), 1u) << log;
  EXPECT_NE(log.find("tuning off: no usable GPU"), std::string::npos) << log;
}

TEST(TuningE2E, AMissingWorkerBinaryTurnsTuningOffWithTheReasonAndTheDaemonServesOn) {
  TempDir dir;
  Daemon d(dir.path(), {"--config", write_config(dir, true).string(), "--log-level", "info"});
  d.with_tuning({{"NSA_TUNE_TEST_DEVICES", kOneFakeGpu}, {"NSA_TUNE_WORKER", (dir / "no-such-worker").string()}});
  ASSERT_TRUE(d.start());
  auto c = d.client();
  auto s = c.request(json{{"op", "status"}});
  ASSERT_TRUE(s);
  EXPECT_EQ((*s)["tuning"]["state"], "off") << s->dump(2);
  EXPECT_NE((*s)["tuning"]["reason"].get<std::string>().find("no-such-worker does not exist"), std::string::npos)
      << s->dump(2);
  auto answer = c.request(dispatch_request(json::array({problem()})));
  ASSERT_TRUE(answer);
  EXPECT_EQ((*answer)["answers"][0]["provenance"], "untuned") << "the made-up GPU is served; it is just not tuned";
  ASSERT_EQ(d.stop(), 0);
  EXPECT_EQ(count_of(d.log(), "tuning off: "), 1u) << d.log();
}

TEST(TuningE2E, VerdictsLandWhileClientsRunAndTheCClientTurnsFromUntunedToMeasuredWithoutARestart) {
  TempDir dir;
  // No startup families: the tuner measures what a client asked for (the demand), which is
  // exactly the issue's story: untuned -> demand recorded -> tuned -> measured.
  Daemon d(dir.path(), {"--config", write_config(dir, false).string(), "--log-level", "info"});
  d.with_tuning(fake_env(dir, "sdpa_packed=ok:100;split_kv=ok:40;query_outer=ok:80"));
  ASSERT_TRUE(d.start());

  auto subscriber = d.client();
  auto sub = subscriber.request(json{{"op", "subscribe"}});
  ASSERT_TRUE(sub && (*sub)["ok"].get<bool>());
  const std::int64_t epoch0 = (*sub)["epoch"].get<std::int64_t>();

  auto admin = d.client();
  const json idle = status_until(admin, [](const json& s) { return s["tuning"]["state"] == "idle"; }, 10s);
  ASSERT_EQ(idle["tuning"]["state"], "idle") << idle.dump(2);
  EXPECT_EQ(idle["tuning_enabled"], true);
  ASSERT_EQ(idle["tuning"]["devices"].size(), 1u);
  EXPECT_EQ(idle["tuning"]["devices"][0]["name"], "Fake GPU");

  ClientPtr client = open_c_client(d);
  ASSERT_TRUE(client);
  const nsa_tune_problem p = c_problem();
  nsa_tune_answer a{};
  ASSERT_EQ(nsa_tune_dispatch(client.get(), &p, &a), NSA_TUNE_OK) << a.reason;
  EXPECT_EQ(a.backend, NSA_TUNE_BACKEND_SDPA);
  EXPECT_EQ(a.provenance, NSA_TUNE_PROVENANCE_UNTUNED) << a.reason;

  // The demand reaches the store, the tuner compiles and measures, verdicts land: the
  // subscriber is told the epoch moved.
  subscriber.set_timeout(90s);
  auto event = subscriber.read_json();
  ASSERT_TRUE(event) << event.error().message << "\n" << d.log();
  EXPECT_EQ((*event)["event"], "epoch") << event->dump();
  EXPECT_GT((*event)["epoch"].get<std::int64_t>(), epoch0);

  // The C client's subscription drops its memo; the same problem is now answered measured.
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    ASSERT_EQ(nsa_tune_dispatch(client.get(), &p, &a), NSA_TUNE_OK) << a.reason;
    if (a.provenance == NSA_TUNE_PROVENANCE_MEASURED) break;
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_EQ(a.provenance, NSA_TUNE_PROVENANCE_MEASURED) << a.reason << "\n" << d.log();
  EXPECT_EQ(a.backend, NSA_TUNE_BACKEND_SPARSE) << a.reason;
  EXPECT_NE(std::strstr(a.variant, "split_kv"), nullptr) << a.variant << ": 40 us beats 80 us and the 100 us baseline";
  EXPECT_NEAR(a.speedup, 2.5, 1e-9);
  EXPECT_GT(a.run_id, 0);
  EXPECT_NE(std::strstr(a.launch_json, "launches"), nullptr) << a.launch_json;

  // status shows what the tuner did.
  const json done = status_until(admin, [](const json& s) {
    return s["tuning"]["state"] == "idle" && s["tuning"]["devices"][0]["verdicts"].get<int>() >= 1;
  });
  const json& dev = done["tuning"]["devices"][0];
  EXPECT_EQ(dev["family"], kFamily) << done.dump(2);
  EXPECT_EQ(dev["trigger"], "demand");
  EXPECT_EQ(dev["points"], 2) << "the demanded point and the configured decode point";
  EXPECT_EQ(dev["verdicts"], 2);
  EXPECT_GE(done["counts"]["current_verdicts"].get<int>(), 2);

  // nsa-tunectl status reads it; retune --wait (not a terminal: plain lines) runs a pass again
  // from the compiled-kernel cache and prints the outcome.
  ProcessResult st = ctl(d, {"status"});
  ASSERT_EQ(st.code, 0) << st.err;
  EXPECT_NE(st.out.find("GPU 0 (Fake GPU, sm_90): idle"), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("2 verdicts"), std::string::npos) << st.out;
  ProcessResult rt = ctl(d, {"retune", kFamily, "--wait", "--wait-timeout", "60"}, 90s);
  ASSERT_EQ(rt.code, 0) << rt.out << rt.err << d.log();
  EXPECT_NE(rt.out.find("queued retune #"), std::string::npos) << rt.out;
  EXPECT_NE(rt.out.find(std::string("of ") + kFamily + " done in"), std::string::npos) << rt.out;
  EXPECT_NE(rt.out.find("2 points measured, 2 verdicts (2 sparse)"), std::string::npos) << rt.out;
  EXPECT_EQ(rt.err.find('\r'), std::string::npos) << "stderr is not a terminal: no carriage returns";

  // A scope that names no GPU of this host is done at once and --wait does not wait.
  ProcessResult none = ctl(d, {"retune", "sm_80", "--wait"});
  ASSERT_EQ(none.code, 0) << none.err;
  EXPECT_NE(none.out.find("no device of this host is named by 'sm_80'"), std::string::npos) << none.out;

  // The report, and its plot, show the verdicts.
  ProcessResult report = ctl(d, {"report"});
  ASSERT_EQ(report.code, 0) << report.err;
  EXPECT_NE(report.out.find(kFamily), std::string::npos) << report.out;
  const fs::path svg = dir / "speedup.svg";
  ProcessResult plot = ctl(d, {"report", "--plot", svg.string()});
  ASSERT_EQ(plot.code, 0) << plot.err;
  EXPECT_NE(plot.out.find("1 chart, 1 line, 2 points"), std::string::npos) << plot.out;
  const std::string text = read_file(svg);
  EXPECT_EQ(count_of(text, "class=\"point\""), 2u) << text;
  EXPECT_NE(text.find("data-point=\"b64.hkv4.tq1.tkv32768\""), std::string::npos);
  EXPECT_NE(text.find("data-speedup=\"2.5\""), std::string::npos);

  ASSERT_EQ(d.stop(), 0);
  // The verdicts stay: a daemon started again on the same state dir serves them at once.
  Daemon again(dir.path(), {"--config", write_config(dir, false).string(), "--log-level", "info"});
  again.with_tuning(fake_env(dir, "sdpa_packed=ok:100;split_kv=ok:40;query_outer=ok:80"));
  ASSERT_TRUE(again.start());
  auto c2 = again.client();
  auto served = c2.request(dispatch_request(json::array({problem()})));
  ASSERT_TRUE(served);
  EXPECT_EQ((*served)["answers"][0]["provenance"], "measured") << served->dump();
  EXPECT_EQ(again.stop(), 0);
}

TEST(TuningE2E, SigtermStopsATunerWhoseKernelHangsPromptlyAndTheDaemonExitsZero) {
  TempDir dir;
  Daemon d(dir.path(), {"--config", write_config(dir, true, 120).string(), "--log-level", "info"});
  d.with_tuning(fake_env(dir, "sdpa_packed=ok:100;split_kv=hang;query_outer=ok:80"));
  ASSERT_TRUE(d.start());
  auto c = d.client();
  const json hung = status_until(c, [](const json& s) {
    const json& devs = s["tuning"]["devices"];
    return !devs.empty() && devs[0]["variant"].get<std::string>().find("split_kv") != std::string::npos;
  });
  ASSERT_NE(hung["tuning"]["devices"][0]["variant"].get<std::string>().find("split_kv"), std::string::npos)
      << hung.dump(2) << d.log();
  EXPECT_EQ(hung["tuning"]["state"], "tuning");

  // While the kernel hangs, a retune cannot complete: --wait gives up at --wait-timeout with
  // exit 4, after drawing the pass's progress (plain lines: stderr is not a terminal).
  ProcessResult waited = ctl(d, {"retune", "all", "--wait", "--wait-timeout", "1"});
  EXPECT_EQ(waited.code, 4) << waited.out << waited.err;
  EXPECT_NE(waited.err.find("did not complete within --wait-timeout 1 s; it stays queued"), std::string::npos)
      << waited.err;
  EXPECT_NE(waited.err.find("] 1/1 points  GPU 0 sm_90  tuning " + std::string(kFamily)), std::string::npos)
      << waited.err;

  // The worker's pid, from the stand-in's log ("<pid> start").
  std::set<pid_t> workers;
  {
    std::istringstream lines(read_file(dir / "worker.log"));
    std::string line;
    while (std::getline(lines, line))
      if (line.find(" start") != std::string::npos) workers.insert(static_cast<pid_t>(std::stol(line)));
  }
  ASSERT_FALSE(workers.empty());

  const auto t0 = std::chrono::steady_clock::now();
  auto code = d.stop(10s);
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(code) << "nsa-tuned did not exit after SIGTERM:\n" << d.log();
  EXPECT_EQ(*code, 0) << d.log();
  EXPECT_LT(took, 5s) << "the hung worker should be killed, not waited for (the step watchdog is 120 s)";
  EXPECT_NE(d.log().find("tuner stopped"), std::string::npos) << d.log();
  for (pid_t w : workers) {
    // Gone, or a zombie waiting for a reaper that is not the daemon any more.
    const std::string stat = read_file("/proc/" + std::to_string(w) + "/stat");
    EXPECT_TRUE(stat.empty() || stat.find(") Z ") != std::string::npos) << "worker " << w << " still runs: " << stat;
  }
  auto store = cache::VerdictStore::open_read_only(d.store_path());
  ASSERT_TRUE(store);
  const auto runs = store->runs();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].status, cache::RunStatus::abandoned) << runs[0].note;
}

}  // namespace
}  // namespace nsa::service::testing
