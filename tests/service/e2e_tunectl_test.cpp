// nsa-tunectl run as a process against the real daemon, and against no daemon at all.

#include <gtest/gtest.h>

#include <array>
#include <cstdio>

#include "nsa/cache/verdict_store.hpp"
#include "service_test_support.hpp"

namespace nsa::service::testing {
namespace {

class TunectlTest : public ::testing::Test {
 protected:
  TempDir dir;
  Daemon daemon{dir.path()};

  ProcessResult ctl(std::vector<std::string> args) {
    std::vector<std::string> argv{tunectl_binary().string(), "--socket", daemon.socket().string(), "--state-dir",
                                  daemon.state_dir().string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_process(argv);
  }
};

const std::vector<std::string> kShape = {"--d-qk", "128", "--d-v", "128", "--h",    "16",
                                         "--h-kv", "4",   "--block", "64", "--n", "16", "--t-kv", "32768"};

std::vector<std::string> query(std::vector<std::string> target) {
  std::vector<std::string> a{"query"};
  a.insert(a.end(), target.begin(), target.end());
  a.insert(a.end(), kShape.begin(), kShape.end());
  return a;
}

TEST_F(TunectlTest, ReportShowsTheSm89PinAndItsReasonWithAndWithoutADaemon) {
  ASSERT_TRUE(daemon.start());
  ProcessResult live = ctl({"report"});
  ASSERT_EQ(live.code, 0) << live.err;
  EXPECT_NE(live.out.find("sm_89"), std::string::npos) << live.out;
  EXPECT_NE(live.out.find("M4-02"), std::string::npos) << live.out;
  EXPECT_EQ(live.err.find("reading the store"), std::string::npos) << live.err;

  ASSERT_EQ(daemon.stop(), 0);
  ProcessResult offline = ctl({"report"});
  ASSERT_EQ(offline.code, 0) << offline.err;
  EXPECT_NE(offline.out.find("sm_89"), std::string::npos) << offline.out;
  EXPECT_NE(offline.out.find("M4-02"), std::string::npos) << offline.out;
  EXPECT_NE(offline.err.find("reading the store"), std::string::npos) << offline.err;
}

TEST_F(TunectlTest, ReportFormatsAreParseableAndAnUnknownOneIsAUsageError) {
  ASSERT_TRUE(daemon.start());
  ProcessResult j = ctl({"report", "--format", "json"});
  ASSERT_EQ(j.code, 0) << j.err;
  json model = json::parse(j.out, nullptr, false);
  ASSERT_FALSE(model.is_discarded()) << j.out;
  EXPECT_NE(model.dump().find("sm_89"), std::string::npos);
  ProcessResult csv = ctl({"report", "--format", "csv"});
  ASSERT_EQ(csv.code, 0) << csv.err;
  EXPECT_NE(csv.out.find("arch,"), std::string::npos) << csv.out;
  ProcessResult md = ctl({"report", "--format", "markdown"});
  ASSERT_EQ(md.code, 0) << md.err;
  EXPECT_NE(md.out.find("## sm_89"), std::string::npos) << md.out;
  ProcessResult bad = ctl({"report", "--format", "pdf"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("pdf"), std::string::npos);
}

TEST_F(TunectlTest, StatusWorksWithAndWithoutADaemon) {
  ASSERT_TRUE(daemon.start());
  ProcessResult live = ctl({"status"});
  ASSERT_EQ(live.code, 0) << live.err;
  EXPECT_NE(live.out.find("nsa-tuned"), std::string::npos) << live.out;
  EXPECT_NE(live.out.find("off: disabled (--no-tune"), std::string::npos) << live.out;
  ProcessResult as_json = ctl({"status", "--json"});
  ASSERT_EQ(as_json.code, 0);
  EXPECT_EQ(json::parse(as_json.out)["pid"], daemon.pid());
  ASSERT_EQ(daemon.stop(), 0);
  ProcessResult offline = ctl({"status"});
  ASSERT_EQ(offline.code, 0) << offline.err;
  EXPECT_NE(offline.out.find("not running"), std::string::npos) << offline.out;
  EXPECT_NE(offline.out.find("sm_89"), std::string::npos) << offline.out;
  EXPECT_NE(offline.err.find("reading the store"), std::string::npos);
}

TEST_F(TunectlTest, QueryPrintsTheAnswerAsTextOrJson) {
  ASSERT_TRUE(daemon.start());
  ProcessResult text = ctl(query({"--arch", "sm_89"}));
  ASSERT_EQ(text.code, 0) << text.err;
  EXPECT_NE(text.out.find("backend     sdpa"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("provenance  pinned"), std::string::npos) << text.out;
  auto args = query({"--arch", "sm_90"});
  args.push_back("--json");
  ProcessResult j = ctl(args);
  ASSERT_EQ(j.code, 0) << j.err;
  json answer = json::parse(j.out);
  EXPECT_EQ(answer["provenance"], "untuned");
  EXPECT_EQ(answer["arch"], "sm_90");
}

TEST_F(TunectlTest, QueryErrorsAndAMissingDaemonHaveTheirExitCodes) {
  ASSERT_TRUE(daemon.start());
  std::vector<std::string> bad{"query", "--d-qk", "100", "--d-v", "128", "--h", "16", "--h-kv", "4",
                               "--block", "64", "--n", "16", "--t-kv", "1024"};
  ProcessResult shape = ctl(bad);
  EXPECT_EQ(shape.code, 1);
  EXPECT_NE(shape.err.find("bad_shape"), std::string::npos) << shape.err;
  ProcessResult usage = ctl({"query", "--d-qk", "128"});
  EXPECT_EQ(usage.code, 2) << usage.err;
  ProcessResult unknown = ctl({"frobnicate"});
  EXPECT_EQ(unknown.code, 2);
  ASSERT_EQ(daemon.stop(), 0);
  ProcessResult gone = ctl(query({"--arch", "sm_89"}));
  EXPECT_EQ(gone.code, 3);
  EXPECT_NE(gone.err.find("no daemon answers on " + daemon.socket().string()), std::string::npos) << gone.err;
  ProcessResult pin = ctl({"pin", "sm_80", "--reason", "x"});
  EXPECT_EQ(pin.code, 3);
}

TEST_F(TunectlTest, PinAndUnpinChangeAnswersAndTheSeededPinCannotBeRemoved) {
  ASSERT_TRUE(daemon.start());
  ProcessResult pin = ctl({"pin", "sm_80", "--reason", "A100 driver regression INC-7"});
  ASSERT_EQ(pin.code, 0) << pin.err;
  EXPECT_NE(pin.out.find("pinned sm_80"), std::string::npos);
  ProcessResult pins = ctl({"pins"});
  ASSERT_EQ(pins.code, 0);
  EXPECT_NE(pins.out.find("INC-7"), std::string::npos) << pins.out;
  ProcessResult q = ctl(query({"--arch", "sm_80"}));
  EXPECT_NE(q.out.find("provenance  pinned"), std::string::npos) << q.out;
  ProcessResult report = ctl({"report"});
  EXPECT_NE(report.out.find("INC-7"), std::string::npos) << report.out;

  ProcessResult unpin = ctl({"unpin", "sm_80"});
  ASSERT_EQ(unpin.code, 0) << unpin.err;
  ProcessResult after = ctl(query({"--arch", "sm_80"}));
  EXPECT_NE(after.out.find("provenance  untuned"), std::string::npos) << after.out;

  ProcessResult seeded = ctl({"unpin", "sm_89"});
  EXPECT_EQ(seeded.code, 1);
  EXPECT_NE(seeded.err.find("refused"), std::string::npos) << seeded.err;
  EXPECT_NE(seeded.err.find("seeded"), std::string::npos) << seeded.err;
  ProcessResult again = ctl({"unpin", "sm_80"});
  EXPECT_EQ(again.code, 1);
  EXPECT_NE(again.err.find("not_found"), std::string::npos);

  ProcessResult retune = ctl({"retune"});
  EXPECT_EQ(retune.code, 1);
  EXPECT_NE(retune.err.find("tuning_disabled"), std::string::npos) << retune.err;
}

TEST_F(TunectlTest, PinsAreReadFromTheStoreWithoutADaemon) {
  ASSERT_TRUE(daemon.start());
  ASSERT_EQ(ctl({"pin", "sm_75", "--reason", "turing is out of scope"}).code, 0);
  ASSERT_EQ(daemon.stop(), 0);
  ProcessResult pins = ctl({"pins", "--json"});
  ASSERT_EQ(pins.code, 0) << pins.err;
  auto list = json::parse(pins.out);
  ASSERT_EQ(list.size(), 2u);
  EXPECT_NE(pins.out.find("turing is out of scope"), std::string::npos);
}

TEST_F(TunectlTest, PathsComeFromTheEnvironmentLikeTheDaemons) {
  ASSERT_TRUE(daemon.start());
  ProcessResult r = run_process({tunectl_binary().string(), "status", "--json"},
                                {{"NSA_TUNE_SOCKET", daemon.socket().string()}});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["socket"], daemon.socket().string());
  std::ofstream(dir / "c.json") << json{{"socket", daemon.socket().string()}}.dump();
  ProcessResult f = run_process({tunectl_binary().string(), "--config", (dir / "c.json").string(), "pins"});
  ASSERT_EQ(f.code, 0) << f.err;
  EXPECT_NE(f.out.find("sm_89"), std::string::npos);
}

/// "N variants for sm_90: C compiled, K from the cache, F failed in S s" -> {N, C, K, F}.
std::array<long, 4> compile_counts(const std::string& out) {
  std::array<long, 4> n{-1, -1, -1, -1};
  std::sscanf(out.c_str(), "%ld variants for sm_90: %ld compiled, %ld from the cache, %ld failed", &n[0], &n[1], &n[2],
              &n[3]);
  return n;
}

TEST_F(TunectlTest, CompileFillsTheStoreWithoutAGpuAndASecondRunCompilesNothing) {
  // One small family and the two designs with the fewest settings keep this within seconds;
  // the full default set is the same code on more variants.
  const std::vector<std::string> args{"compile", "--arch", "sm_90", "--family", "bf16.dqk64.dv64.h16.blk64.n16",
                                      "--design", "reference", "--design", "sdpa_packed", "--threads", "2"};
  ProcessResult first = ctl(args);
  ASSERT_EQ(first.code, 0) << first.out << first.err;
  const auto a = compile_counts(first.out);
  ASSERT_GT(a[0], 1) << first.out;
  EXPECT_EQ(a[1], a[0]) << first.out;
  EXPECT_EQ(a[2], 0) << first.out;
  EXPECT_EQ(a[3], 0) << first.out;
  EXPECT_NE(first.err.find("[1/" + std::to_string(a[0]) + "] compiled sel_fwd."), std::string::npos)
      << "a progress line per variant on a stderr that is not a terminal:\n" << first.err;
  {
    auto store = cache::VerdictStore::open_read_only(daemon.state_dir() / "state.db");
    ASSERT_TRUE(store);
    EXPECT_EQ(store->kernel_count(), a[0]);
  }
  ProcessResult second = ctl(args);
  ASSERT_EQ(second.code, 0) << second.err;
  const auto b = compile_counts(second.out);
  EXPECT_EQ(b[0], a[0]) << second.out;
  EXPECT_EQ(b[1], 0) << "everything is in the store already: " << second.out;
  EXPECT_EQ(b[2], a[0]) << second.out;

  // A family phase suffix is accepted; the same variants come from the cache.
  auto with_phase = args;
  with_phase[4] += ".prefill";
  ProcessResult third = ctl(with_phase);
  ASSERT_EQ(third.code, 0) << third.err;
  EXPECT_EQ(compile_counts(third.out)[2], a[0]) << third.out;
}

TEST_F(TunectlTest, CompileRefusesBadArgumentsAndReportsAnArchNvrtcCannotTarget) {
  ProcessResult arch = ctl({"compile", "--arch", "hopper"});
  EXPECT_EQ(arch.code, 2);
  EXPECT_NE(arch.err.find("--arch 'hopper' is not an arch name"), std::string::npos) << arch.err;
  ProcessResult family = ctl({"compile", "--arch", "sm_90", "--family", "dqk128"});
  EXPECT_EQ(family.code, 2);
  EXPECT_NE(family.err.find("--family 'dqk128' is not a family key"), std::string::npos) << family.err;
  ProcessResult design = ctl({"compile", "--arch", "sm_90", "--design", "warp_speed"});
  EXPECT_EQ(design.code, 2);
  EXPECT_NE(design.err.find("--design 'warp_speed' is not a design"), std::string::npos) << design.err;
  ProcessResult old = ctl({"compile", "--arch", "sm_35", "--family", "bf16.dqk64.dv64.h16.blk64.n16", "--design",
                           "reference"});
  EXPECT_EQ(old.code, 1) << old.out << old.err;
  EXPECT_NE(old.err.find("supported:"), std::string::npos) << "NVRTC's list of targets: " << old.err;
  EXPECT_NE(old.out.find("1 failed"), std::string::npos) << old.out;
}

TEST_F(TunectlTest, StatusSaysWhyTheDaemonDoesNotTune) {
  ASSERT_TRUE(daemon.start());
  ProcessResult st = ctl({"status"});
  ASSERT_EQ(st.code, 0) << st.err;
  EXPECT_NE(st.out.find("tuning      off: disabled (--no-tune, set by flag)"), std::string::npos) << st.out;
  ProcessResult wait = ctl({"retune", "--wait"});
  EXPECT_EQ(wait.code, 1);
  EXPECT_NE(wait.err.find("tuning_disabled"), std::string::npos) << wait.err;
}

TEST_F(TunectlTest, ReportPlotWorksWithoutADaemonAndWithoutVerdicts) {
  ASSERT_TRUE(daemon.start());
  ASSERT_EQ(daemon.stop(), 0);  // leaves a store with the seeded pin and no verdicts
  const auto svg = dir / "empty.svg";
  ProcessResult plot = ctl({"report", "--plot", svg.string()});
  ASSERT_EQ(plot.code, 0) << plot.err;
  EXPECT_NE(plot.out.find("0 charts"), std::string::npos) << plot.out;
  EXPECT_NE(plot.err.find("reading the store"), std::string::npos) << plot.err;
  const std::string text = read_file(svg);
  EXPECT_EQ(text.rfind("<?xml", 0), 0u) << text.substr(0, 200);
  EXPECT_NE(text.find("nothing to plot"), std::string::npos);
  ProcessResult unwritable = ctl({"report", "--plot", (dir / "no-such-dir" / "x.svg").string()});
  EXPECT_EQ(unwritable.code, 1);
  EXPECT_NE(unwritable.err.find("cannot write"), std::string::npos) << unwritable.err;
}

}  // namespace
}  // namespace nsa::service::testing
