// nsa-bench-dispatch: how long a dispatch round trip to nsa-tuned takes, with 1 and with 32
// concurrent clients, and what a memoized answer costs in the C client. A benchmark that prints
// a table, not a test: it asserts nothing about time.
//
// Method. Each client is a thread with its own connection (hello done before timing). A request
// is one pre-encoded dispatch frame; the round trip is timed from the send to the complete reply
// line, so client-side JSON work is not counted (the daemon's parsing, decision and encoding
// are). Every client first sends `--warmup` requests untimed, then its timed ones, all released
// at once by a barrier; a phase stops early when `--max-seconds` pass. Throughput is timed
// requests of all clients / wall time of the phase.
//
// Two loads per client count:
//   closed  every client sends its next request as soon as the previous reply is in: the daemon
//           is saturated, so by Little's law latency ~= clients / throughput. This measures
//           capacity, not responsiveness (32 clients at 100k req/s cannot average under 320 us).
//   paced   the clients together send `--rate` requests per second, each on its own fixed
//           schedule (staggered), the way independent jobs ask: this measures the latency a
//           client sees while 31 others are also asking, below saturation. The problem is an arch query for an
// unpinned arch (the untuned path: a snapshot lookup plus a demand count, the daemon's most
// common answer before tuning) unless --pinned asks for sm_89.
//
// The memoized hit is nsa_tune_dispatch() on a problem answered once before, timed over
// `--hits` calls in a loop on one thread: a hash lookup under a shared lock, no system call.
//
// Unless --socket names a running daemon, the benchmark starts nsa-tuned itself (found next to
// this binary, in ../service/ of a build tree, or given by --daemon) on a temp state dir with
// --no-tune, and stops it at the end.

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "nsa/api/client.h"
#include "nsa/api/protocol.hpp"
#include "nsa/service/sync_client.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
using nsa::service::SyncClient;

namespace {

struct Options {
  std::string socket;
  std::string daemon;
  int requests = 20000;   // per client in the 1-client phase; split over clients in the others
  int warmup = 500;
  std::vector<int> clients = {1, 32};
  double max_seconds = 20;
  int problems = 1;
  int hits = 2'000'000;
  bool pinned = false;
  double rate = 20000;  // paced phases: requests per second, all clients together
};

/// A daemon the benchmark started; stopped (SIGTERM, then SIGKILL) when it goes away.
class OwnedDaemon {
 public:
  static std::optional<OwnedDaemon> start(const fs::path& binary, std::string& why) {
    char tmpl[] = "/tmp/nsa-bench-XXXXXX";
    if (!mkdtemp(tmpl)) {
      why = "mkdtemp failed";
      return std::nullopt;
    }
    OwnedDaemon d;
    d.m_dir = tmpl;
    d.m_socket = d.m_dir / "s.sock";
    pid_t pid = fork();
    if (pid == 0) {
      std::string state = (d.m_dir / "state").string(), sock = d.m_socket.string(), log = (d.m_dir / "d.log").string();
      freopen(log.c_str(), "w", stderr);
      execl(binary.c_str(), binary.c_str(), "--state-dir", state.c_str(), "--socket", sock.c_str(), "--no-tune",
            "--log-level", "warn", static_cast<char*>(nullptr));
      _exit(127);
    }
    d.m_pid = pid;
    for (int i = 0; i < 1500; ++i) {
      if (auto c = SyncClient::connect(d.m_socket, std::chrono::milliseconds(1000))) return d;
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        d.m_pid = -1;
        why = "nsa-tuned exited at start (" + binary.string() + "); see " + (d.m_dir / "d.log").string();
        return std::nullopt;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    why = "nsa-tuned did not answer within 15 s";
    return std::nullopt;
  }
  OwnedDaemon(OwnedDaemon&& o) noexcept
      : m_pid(std::exchange(o.m_pid, -1)), m_dir(std::move(o.m_dir)), m_socket(std::move(o.m_socket)) {}
  OwnedDaemon(const OwnedDaemon&) = delete;
  ~OwnedDaemon() {
    if (m_pid > 0) {
      kill(m_pid, SIGTERM);
      int status = 0;
      for (int i = 0; i < 500 && waitpid(m_pid, &status, WNOHANG) != m_pid; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      kill(m_pid, SIGKILL);
      waitpid(m_pid, &status, 0);
    }
    if (!m_dir.empty()) {
      std::error_code ec;
      fs::remove_all(m_dir, ec);
    }
  }
  const fs::path& socket() const { return m_socket; }

 private:
  OwnedDaemon() = default;
  pid_t m_pid = -1;
  fs::path m_dir, m_socket;
};

fs::path find_daemon(const std::string& given) {
  if (!given.empty()) return given;
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec).parent_path();
  for (const fs::path& p : {self / "nsa-tuned", self / ".." / ".." / "service" / "nsa-tuned", self / ".." / "bin" / "nsa-tuned"})
    if (fs::exists(p, ec)) return p;
  return "nsa-tuned";
}

json bench_problem(bool pinned, int index) {
  // Distinct points per problem so a multi-problem request is not one answer repeated.
  return json{{"arch", pinned ? "sm_89" : "sm_90"}, {"dtype", "bf16"}, {"d_qk", 128}, {"d_v", 128}, {"h", 16},
              {"h_kv", 4}, {"block", 64}, {"n", 16}, {"t_q", 1}, {"t_kv", 32768 + 64 * index}, {"batch", 64}};
}

struct PhaseResult {
  int clients = 0;
  bool paced = false;
  std::vector<double> latencies_us;
  double wall_s = 0;
  std::string error;
};

PhaseResult run_phase(const fs::path& socket, const Options& o, int clients, bool paced) {
  PhaseResult result;
  result.clients = clients;
  result.paced = paced;
  // Paced: client c sends at t0 + c*gap/clients + k*gap, gap = clients / rate.
  const auto gap = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(clients / o.rate));
  json problems = json::array();
  for (int i = 0; i < o.problems; ++i) problems.push_back(bench_problem(o.pinned, i));
  const std::string frame = nsa::api::encode_frame(json{{"op", "dispatch"}, {"id", 1}, {"problems", problems}});
  const int per_client = std::max(1, clients == 1 ? o.requests : o.requests * 2 / clients);

  std::vector<std::optional<SyncClient>> conns(clients);
  for (int c = 0; c < clients; ++c) {
    auto conn = SyncClient::connect(socket, std::chrono::milliseconds(5000), true, "nsa-bench-dispatch");
    if (!conn) {
      result.error = "connect: " + conn.error().message;
      return result;
    }
    conns[c].emplace(std::move(*conn));
  }
  std::vector<std::vector<double>> lat(clients);
  std::atomic<bool> failed{false};
  std::string failure;
  std::barrier start(clients + 1);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      SyncClient& conn = *conns[c];
      auto once = [&]() -> bool {
        if (!conn.send_raw(frame)) return false;
        auto reply = conn.read_frame();
        return reply && reply->rfind("{\"answers\":", 0) == 0;  // sorted keys: answers first on success
      };
      for (int i = 0; i < o.warmup && !failed; ++i)
        if (!once()) failed = true;
      start.arrive_and_wait();
      lat[c].reserve(per_client);
      const auto begin = Clock::now() + gap * c / clients;
      for (int i = 0; i < per_client && !failed && !stop; ++i) {
        if (paced) std::this_thread::sleep_until(begin + gap * i);
        const auto t0 = Clock::now();
        if (!once()) {
          failed = true;
          break;
        }
        lat[c].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
    });
  }
  start.arrive_and_wait();
  const auto t0 = Clock::now();
  std::thread watchdog([&] {
    while (!stop) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (std::chrono::duration<double>(Clock::now() - t0).count() > o.max_seconds) stop = true;
    }
  });
  for (auto& t : threads) t.join();
  result.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  stop = true;
  watchdog.join();
  if (failed) result.error = "a request failed or got an error reply (is the daemon running this protocol?)";
  for (auto& l : lat) result.latencies_us.insert(result.latencies_us.end(), l.begin(), l.end());
  std::sort(result.latencies_us.begin(), result.latencies_us.end());
  return result;
}

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  std::size_t i = static_cast<std::size_t>(p / 100.0 * (sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

/// ns per memoized nsa_tune_dispatch, or a negative value with `why` set.
double memo_hit_ns(const fs::path& socket, int hits, std::string& why) {
  nsa_tune_client_options opts;
  nsa_tune_client_options_init(&opts);
  const std::string path = socket.string();
  opts.socket_path = path.c_str();
  opts.budget_us = 1'000'000;
  opts.client_name = "nsa-bench-dispatch";
  nsa_tune_client* c = nsa_tune_client_open(&opts);
  if (!c) {
    why = "nsa_tune_client_open failed";
    return -1;
  }
  nsa_tune_problem p;
  nsa_tune_problem_init(&p);
  std::strcpy(p.arch, "sm_89");
  p.d_qk = 128;
  p.d_v = 128;
  p.h = 16;
  p.h_kv = 4;
  p.block = 64;
  p.n = 16;
  p.t_q = 1;
  p.t_kv = 32768;
  p.batch = 64;
  nsa_tune_answer a;
  if (nsa_tune_dispatch(c, &p, &a) != NSA_TUNE_OK) {
    why = std::string("the first dispatch was not answered: ") + a.reason;
    nsa_tune_client_close(c);
    return -1;
  }
  for (int i = 0; i < 1000; ++i) nsa_tune_dispatch(c, &p, &a);
  nsa_tune_stats before{};
  nsa_tune_client_stats(c, &before);
  const auto t0 = Clock::now();
  for (int i = 0; i < hits; ++i) nsa_tune_dispatch(c, &p, &a);
  const double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / hits;
  nsa_tune_stats after{};
  nsa_tune_client_stats(c, &after);
  nsa_tune_client_close(c);
  if (after.hits - before.hits != static_cast<std::uint64_t>(hits)) {
    why = "not every call was a memo hit (" + std::to_string(after.hits - before.hits) + " of " +
          std::to_string(hits) + "): the epoch moved during the run";
    return -1;
  }
  return ns;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"nsa-bench-dispatch: dispatch round-trip latency and throughput of nsa-tuned, and the cost of a "
               "memoized C-client answer.",
               "nsa-bench-dispatch"};
  app.add_option("--socket", o.socket, "measure a running daemon on this socket (default: start one)");
  app.add_option("--daemon", o.daemon, "the nsa-tuned binary to start (default: found next to this binary)");
  app.add_option("--requests", o.requests, "timed requests of the 1-client phase; other phases send 2x this in all")
      ->check(CLI::Range(1, 100'000'000));
  app.add_option("--warmup", o.warmup, "untimed requests per client first")->check(CLI::Range(0, 1'000'000));
  app.add_option("--clients", o.clients, "client counts, one phase each (default 1 32)")->check(CLI::Range(1, 1000));
  app.add_option("--max-seconds", o.max_seconds, "stop a phase after this long")->check(CLI::Range(0.1, 3600.0));
  app.add_option("--problems", o.problems, "problems per dispatch request")->check(CLI::Range(1, 256));
  app.add_option("--hits", o.hits, "memoized C-client calls to time")->check(CLI::Range(1, 1'000'000'000));
  app.add_flag("--pinned", o.pinned, "ask about sm_89 (pinned) instead of sm_90 (untuned)");
  app.add_option("--rate", o.rate, "paced phases: requests per second of all clients together (default 20000)")
      ->check(CLI::Range(1.0, 10'000'000.0));
  CLI11_PARSE(app, argc, argv);

  std::string why;
  std::optional<OwnedDaemon> owned = o.socket.empty() ? OwnedDaemon::start(find_daemon(o.daemon), why) : std::nullopt;
  fs::path socket = o.socket;
  if (socket.empty()) {
    if (!owned) {
      std::fprintf(stderr, "nsa-bench-dispatch: %s\n", why.c_str());
      return 1;
    }
    socket = owned->socket();
  }
  auto probe = SyncClient::connect(socket, std::chrono::milliseconds(5000), true, "nsa-bench-dispatch");
  if (!probe) {
    std::fprintf(stderr, "nsa-bench-dispatch: %s\n", probe.error().message.c_str());
    return 1;
  }
  std::printf("nsa-bench-dispatch: nsa-tuned %s on %s (%s), %u CPUs, %d problem(s) per request, %s\n",
              probe->hello_reply().value("daemon", "?").c_str(), socket.c_str(),
              owned ? "started by the benchmark" : "already running", std::thread::hardware_concurrency(),
              o.problems, o.pinned ? "pinned arch sm_89" : "untuned arch sm_90");
  std::printf("%-16s %8s %9s %9s %9s %9s %9s %10s\n", "load", "clients", "requests", "p50 us", "p90 us",
              "p99 us", "max us", "req/s");
  int rc = 0;
  for (bool paced : {false, true}) {
    for (int clients : o.clients) {
      PhaseResult r = run_phase(socket, o, clients, paced);
      if (!r.error.empty()) {
        std::fprintf(stderr, "nsa-bench-dispatch: %d clients: %s\n", clients, r.error.c_str());
        rc = 1;
        continue;
      }
      const auto& l = r.latencies_us;
      char load[32];
      if (paced) std::snprintf(load, sizeof load, "paced %.0f/s", o.rate);
      else std::snprintf(load, sizeof load, "closed loop");
      std::printf("%-16s %8d %9zu %9.1f %9.1f %9.1f %9.1f %10.0f\n", load, clients, l.size(), percentile(l, 50),
                  percentile(l, 90), percentile(l, 99), l.empty() ? 0.0 : l.back(), l.size() / r.wall_s);
      std::fflush(stdout);
    }
  }
  double ns = memo_hit_ns(socket, o.hits, why);
  if (ns < 0) {
    std::fprintf(stderr, "nsa-bench-dispatch: memoized hit: %s\n", why.c_str());
    rc = 1;
  } else {
    std::printf("memoized C-client hit: %.1f ns per call (%d calls, one thread)\n", ns, o.hits);
  }
  return rc;
}
