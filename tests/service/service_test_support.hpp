#pragma once
// Shared by the service tests: a fresh temp directory per case, the real binaries as child
// processes (the daemon with its socket and state dir inside that directory, nsa-tunectl run to
// completion with its output captured), and the protocol's problem objects.
//
// Binaries are found under $NSA_BUILD_DIR when it is set (so an installed test can be pointed at
// a build), else under the build directory this test was compiled in.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "nsa/service/sync_client.hpp"
#include "../support/temp_dir.hpp"

namespace nsa::service::testing {

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace std::chrono_literals;

inline fs::path build_dir() {
  if (const char* d = std::getenv("NSA_BUILD_DIR"); d && *d) return d;
  return NSA_BUILD_DIR;
}
inline fs::path daemon_binary() { return build_dir() / "service" / "nsa-tuned"; }
inline fs::path tunectl_binary() { return build_dir() / "service" / "nsa-tunectl"; }

using nsa::test::TempDir;

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Waits for `pid` up to `limit`; the exit code, 128+signal for a signal, nullopt if still running.
inline std::optional<int> wait_exit(pid_t pid, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -1;
    }
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(5ms);
  }
}

/// The child's half of a fork: adds `env`, runs `before_exec`, execs `argv[0]` (a path, no
/// $PATH search) and exits 127 if that fails.
[[noreturn]] inline void exec_in_child(const std::vector<std::string>& argv,
                                       const std::vector<std::pair<std::string, std::string>>& env,
                                       const std::function<void()>& before_exec) {
  for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
  if (before_exec) before_exec();
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  ::execv(args[0], args.data());
  ::_exit(127);
}

/// A child process that is killed and reaped when its owner goes away.
class Child {
 public:
  Child() = default;
  /// Forks and execs `argv[0]` with stdout and stderr appended to `log` (or inherited when
  /// empty) and `env` added to the environment. `before_exec` runs in the child (e.g. setuid).
  static Child spawn(const std::vector<std::string>& argv, const fs::path& log,
                     const std::vector<std::pair<std::string, std::string>>& env = {},
                     const std::function<void()>& before_exec = {}) {
    pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error(std::string("fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      if (!log.empty()) {
        int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
          ::dup2(fd, 1);
          ::dup2(fd, 2);
          ::close(fd);
        }
      }
      exec_in_child(argv, env, before_exec);
    }
    Child c;
    c.m_pid = pid;
    return c;
  }
  Child(Child&& o) noexcept : m_pid(std::exchange(o.m_pid, -1)) {}
  Child& operator=(Child&& o) noexcept {
    if (this != &o) {
      reap();
      m_pid = std::exchange(o.m_pid, -1);
    }
    return *this;
  }
  ~Child() { reap(); }
  pid_t pid() const { return m_pid; }
  bool running() const { return m_pid > 0; }
  void signal(int sig) const {
    if (m_pid > 0) ::kill(m_pid, sig);
  }
  /// The exit code (128+signal when killed), or nullopt if it did not end within `limit`.
  std::optional<int> wait(std::chrono::milliseconds limit) {
    if (m_pid <= 0) return std::nullopt;
    auto r = wait_exit(m_pid, limit);
    if (r) m_pid = -1;
    return r;
  }

 private:
  void reap() {
    if (m_pid > 0) {
      ::kill(m_pid, SIGKILL);
      int status = 0;
      ::waitpid(m_pid, &status, 0);
      m_pid = -1;
    }
  }
  pid_t m_pid = -1;
};

/// What a finished process said.
struct ProcessResult {
  int code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

/// Runs `argv` to completion (at most `limit`) with stdout and stderr captured separately.
inline ProcessResult run_process(const std::vector<std::string>& argv,
                       const std::vector<std::pair<std::string, std::string>>& env = {},
                       std::chrono::milliseconds limit = 20s, const std::function<void()>& before_exec = {}) {
  static int counter = 0;
  fs::path base = fs::temp_directory_path() / ("nsa-svc-run-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::path out = base.string() + ".out", err = base.string() + ".err";
  pid_t pid = ::fork();
  if (pid == 0) {
    int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0666);
    int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0666);
    ::dup2(o, 1);
    ::dup2(e, 2);
    exec_in_child(argv, env, before_exec);
  }
  ProcessResult r;
  auto code = wait_exit(pid, limit);
  if (!code) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    r.code = -2;
  } else {
    r.code = *code;
  }
  r.out = read_file(out);
  r.err = read_file(err);
  std::error_code ec;
  fs::remove(out, ec);
  fs::remove(err, ec);
  return r;
}

/// The real nsa-tuned on a socket and state dir inside `dir`, started with --no-tune and short
/// timeouts so the tests stay fast: frames must complete within 1 s, demand flushes every 100 ms.
/// with_tuning() drops --no-tune and adds environment variables (the tuning tests point the
/// daemon at the worker stand-in and, with NSA_TUNE_TEST_DEVICES, at made-up GPUs).
class Daemon {
 public:
  explicit Daemon(const fs::path& dir, std::vector<std::string> extra = {}, std::string name = "d")
      : m_socket(dir / (name + ".sock")), m_state_dir(dir / (name + "-state")), m_log(dir / (name + ".log")),
        m_extra(std::move(extra)) {}
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  /// The command line; a flag given in `extra` replaces the fixture's default for it.
  std::vector<std::string> argv() const {
    std::vector<std::string> a{daemon_binary().string(), "--state-dir", m_state_dir.string(), "--socket",
                               m_socket.string()};
    if (!m_tune) a.push_back("--no-tune");
    const std::pair<const char*, const char*> defaults[] = {
        {"--frame-timeout-ms", "1000"}, {"--demand-flush-ms", "100"}, {"--log-level", "debug"}};
    for (const auto& [flag, value] : defaults) {
      if (std::find(m_extra.begin(), m_extra.end(), flag) != m_extra.end()) continue;
      a.push_back(flag);
      a.push_back(value);
    }
    a.insert(a.end(), m_extra.begin(), m_extra.end());
    return a;
  }

  /// Runs it without --no-tune, with `env` added to its environment.
  Daemon& with_tuning(std::vector<std::pair<std::string, std::string>> env = {}) {
    m_tune = true;
    m_env = std::move(env);
    return *this;
  }

  /// Starts it and waits until it answers a hello (up to 15 s). False (with the log in the
  /// failure message) when it exited or never answered.
  ::testing::AssertionResult start(std::chrono::milliseconds limit = 15s) {
    m_child = Child::spawn(argv(), m_log, m_env);
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto code = m_child.wait(0ms))
        return ::testing::AssertionFailure() << "nsa-tuned exited with " << *code << " at start:\n" << log();
      if (auto c = SyncClient::connect(m_socket, 1000ms)) return ::testing::AssertionSuccess();
      std::this_thread::sleep_for(10ms);
    }
    return ::testing::AssertionFailure() << "nsa-tuned did not answer within " << limit.count() << " ms:\n" << log();
  }
  /// SIGTERM and wait; the exit code.
  std::optional<int> stop(std::chrono::milliseconds limit = 10s) {
    m_child.signal(SIGTERM);
    return m_child.wait(limit);
  }
  void kill9() {
    m_child.signal(SIGKILL);
    m_child.wait(5s);
  }
  std::optional<int> wait(std::chrono::milliseconds limit) { return m_child.wait(limit); }

  SyncClient client(std::chrono::milliseconds timeout = 5000ms) const {
    auto c = SyncClient::connect(m_socket, timeout);
    if (!c) throw std::runtime_error("cannot connect to the test daemon: " + c.error().message);
    return std::move(*c);
  }
  /// A connection without the hello, for tests of what happens before it.
  SyncClient raw_client(std::chrono::milliseconds timeout = 5000ms) const {
    auto c = SyncClient::connect(m_socket, timeout, false);
    if (!c) throw std::runtime_error("cannot connect to the test daemon: " + c.error().message);
    return std::move(*c);
  }

  const fs::path& socket() const { return m_socket; }
  const fs::path& state_dir() const { return m_state_dir; }
  fs::path store_path() const { return m_state_dir / "state.db"; }
  std::string log() const { return read_file(m_log); }
  pid_t pid() const { return m_child.pid(); }

 private:
  fs::path m_socket, m_state_dir, m_log;
  std::vector<std::string> m_extra;
  bool m_tune = false;
  std::vector<std::pair<std::string, std::string>> m_env;
  Child m_child;
};

/// A valid problem object of the protocol (NSA's common decode shape) with `target` merged in.
inline json problem(json target = json::object()) {
  json p{{"dtype", "bf16"}, {"d_qk", 128}, {"d_v", 128}, {"h", 16},     {"h_kv", 4},
         {"block", 64},     {"n", 16},     {"t_q", 1},   {"t_kv", 32768}, {"batch", 64}};
  for (auto& [k, v] : target.items()) p[k] = v;
  return p;
}

inline json dispatch_request(json problems) { return json{{"op", "dispatch"}, {"problems", std::move(problems)}}; }

/// The error code of a reply, or "" for a success.
inline std::string error_code(const json& reply) {
  if (reply.value("ok", false)) return "";
  return reply.contains("error") ? reply["error"].value("code", "?") : "?";
}

}  // namespace nsa::service::testing
