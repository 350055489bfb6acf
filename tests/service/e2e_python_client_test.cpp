// The pure-Python client against the real daemon: tests/service/python_client_e2e.py does the
// checks (it needs to stop and restart the daemon mid-way); this case starts the daemon, runs
// the script with the client on PYTHONPATH, and reports its output.

#include <gtest/gtest.h>

#include "service_test_support.hpp"

namespace nsa::service::testing {
namespace {

std::optional<fs::path> find_python() {
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  std::size_t at = 0;
  while (at <= p.size()) {
    std::size_t end = p.find(':', at);
    if (end == std::string::npos) end = p.size();
    fs::path candidate = fs::path(p.substr(at, end - at)) / "python3";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    at = end + 1;
  }
  return std::nullopt;
}

TEST(PythonClient, DispatchMemoEpochFallbackAndRecoveryAgainstTheRealDaemon) {
  auto python = find_python();
  if (!python) GTEST_SKIP() << "python3 is not on PATH";
  TempDir dir;
  Daemon d(dir.path());
  ASSERT_TRUE(d.start());
  const fs::path script = fs::path(NSA_SOURCE_DIR) / "tests" / "service" / "python_client_e2e.py";
  const fs::path pythonpath = fs::path(NSA_SOURCE_DIR) / "api" / "python";
  ProcessResult r = run_process({python->string(), script.string(), d.socket().string(), std::to_string(d.pid()),
                                 json(d.argv()).dump()},
                                {{"PYTHONPATH", pythonpath.string()}, {"PYTHONDONTWRITEBYTECODE", "1"}}, 60s);
  EXPECT_EQ(r.code, 0) << r.out << r.err << "\ndaemon log:\n" << d.log();
  EXPECT_NE(r.out.find("ok   the client answers again after the restart"), std::string::npos) << r.out << r.err;
  EXPECT_EQ(d.wait(5s), 0) << "the first daemon should have exited 0 on the script's SIGTERM";
}

}  // namespace
}  // namespace nsa::service::testing
