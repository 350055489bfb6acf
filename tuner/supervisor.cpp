// The worker supervisor: containment of everything a kernel can do to a process.
//
// A tuning worker runs untrusted code in the most literal sense: kernels nobody has run on this
// GPU before. Any of them may write out of bounds (a sticky CUDA error: the context is dead),
// spin forever, or take the process down. The daemon must survive all of it and still measure
// the other variants. So the worker is a child process and this file is its keeper.
//
// The job is one line on the worker's stdin. While the worker runs it, the supervisor waits in
// one poll() loop on four descriptors: the worker's stdout (protocol lines), its stderr (logs,
// kept as a tail for crash reports), its stdin (the rest of a large job still being written:
// a hung worker that stops reading must not block the daemon either) and a wake pipe
// (interrupt()). Every wait has a deadline; the deadline moves with progress:
//
//   hello         start_timeout after spawn
//   setup         setup_timeout after the job is sent
//   <variant>     step_timeout after its `begin`, and again after its `result`
//
// Worked example, a job of variants [S, A, B] where A dereferences garbage:
//
//   worker 1: begin setup, begin S, result S ok, begin A, <exits: killed by SIGSEGV>
//     -> A: crashed "worker killed by signal 11 (SIGSEGV) while running A; last log: ..."
//   worker 2 (same seed, job of [B] only, best_so_far from S): begin setup, begin B,
//     result B ok, done
//   -> results S ok, A crashed, B ok; complete; restarts 1
//
// The worker's stdin is a socketpair rather than a pipe so that writing to a dead worker is an
// EPIPE from send(MSG_NOSIGNAL), never a SIGPIPE in the daemon. The worker runs in its own
// process group, so a SIGKILL to the group also takes any helper it may have started.

#include "nsa/tuner/supervisor.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <map>

extern char** environ;

namespace nsa::tuner {

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t kMaxLineBytes = 16u << 20;  // a worker line longer than this is garbage

std::string errno_text(int e) { return std::strerror(e); }

/// Moves `fd` to a number >= 3 (close-on-exec), so that dup2 onto 0..2 in the child always
/// clears the flag; closes the original.
int above_stdio(int fd) {
  if (fd >= 3) return fd;
  const int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  ::close(fd);
  return moved;
}

void set_nonblocking(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

std::string quote_excerpt(std::string_view s, std::size_t max = 120) {
  std::string out;
  for (char c : s.substr(0, max)) out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  if (s.size() > max) out += "...";
  return "'" + out + "'";
}

std::string seconds_text(std::chrono::milliseconds ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g s", ms.count() / 1000.0);
  return buf;
}

}  // namespace

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    // A table rather than sigabbrev_np, which needs glibc 2.32 on the GPU host.
    static const std::map<int, const char*> names = {
        {SIGSEGV, "SIGSEGV"}, {SIGABRT, "SIGABRT"}, {SIGKILL, "SIGKILL"}, {SIGBUS, "SIGBUS"},
        {SIGFPE, "SIGFPE"},   {SIGILL, "SIGILL"},   {SIGTERM, "SIGTERM"}, {SIGINT, "SIGINT"},
        {SIGPIPE, "SIGPIPE"}, {SIGTRAP, "SIGTRAP"}, {SIGHUP, "SIGHUP"},   {SIGSYS, "SIGSYS"}};
    const int sig = WTERMSIG(status);
    const auto it = names.find(sig);
    return "killed by signal " + std::to_string(sig) + (it != names.end() ? std::string(" (") + it->second + ")" : std::string());
  }
  return "stopped (wait status " + std::to_string(status) + ")";
}

std::filesystem::path default_worker_path() {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    // Installed: bin/nsa-tuned next to bin/nsa-tune-worker. Build tree: build/service/nsa-tuned
    // and build/tuner/worker/nsa-tune-worker.
    for (const auto& candidate : {self.parent_path() / "nsa-tune-worker",
                                  self.parent_path().parent_path() / "tuner" / "worker" / "nsa-tune-worker"})
      if (std::filesystem::exists(candidate, ec)) return candidate;
  }
  return "nsa-tune-worker";
}

// The child process ---------------------------------------------------------------------------------

struct WorkerSupervisor::Process {
  pid_t pid = -1;
  int in = -1, out = -1, err = -1;
  std::string out_buf, err_buf;
  bool out_eof = false, err_eof = false;
  bool reaped = false;
  int wait_status = 0;
  bool status_known = false;
  std::optional<WorkerHello> hello;

  ~Process() {
    kill_and_reap();
    for (int fd : {in, out, err})
      if (fd >= 0) ::close(fd);
  }

  void close_stdin() {
    if (in >= 0) ::close(in);
    in = -1;
  }

  /// Non-blocking reap; true once the child is gone.
  bool try_reap() {
    if (reaped) return true;
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      reaped = true;
      wait_status = status;
      status_known = true;
    } else if (r < 0 && errno == ECHILD) {
      reaped = true;  // someone else reaped it (SIGCHLD ignored): the status is unknown
    }
    return reaped;
  }

  /// Waits up to `grace` for the child to exit on its own, then SIGKILLs its process group.
  void reap_within(std::chrono::milliseconds grace) {
    const auto until = Clock::now() + grace;
    while (!try_reap() && Clock::now() < until) ::usleep(2000);
    kill_and_reap();
  }

  void kill_and_reap() {
    if (pid <= 0 || reaped) return;
    ::kill(-pid, SIGKILL);  // the group: the worker and anything it started
    int status = 0;
    pid_t r;
    do r = ::waitpid(pid, &status, 0);
    while (r < 0 && errno == EINTR);
    reaped = true;
    if (r == pid) {
      wait_status = status;
      status_known = true;
    }
  }

  std::string exit_text() const {
    if (!reaped) return "still running";
    return status_known ? describe_wait_status(wait_status) : "exited (status unknown: reaped elsewhere)";
  }
};

/// What next_event() saw.
enum class WorkerSupervisor::Wait { line, eof, timeout, interrupted };
struct WorkerSupervisor::Event {
  Wait kind = Wait::line;
  std::string line;
};

// Construction -------------------------------------------------------------------------------------

WorkerSupervisor::WorkerSupervisor(SupervisorConfig config, LogSink log)
    : m_config(std::move(config)), m_log(std::move(log)) {
  if (::pipe2(m_wake, O_CLOEXEC | O_NONBLOCK) != 0) m_wake[0] = m_wake[1] = -1;
}

WorkerSupervisor::~WorkerSupervisor() {
  m_process.reset();
  for (int fd : m_wake)
    if (fd >= 0) ::close(fd);
}

void WorkerSupervisor::log(LogLevel level, const std::string& text) const {
  if (m_log) m_log(level, text);
}

void WorkerSupervisor::interrupt() {
  m_interrupted = true;
  if (m_wake[1] >= 0) {
    const char c = 1;
    [[maybe_unused]] auto n = ::write(m_wake[1], &c, 1);
  }
}

void WorkerSupervisor::clear_interrupt() {
  m_interrupted = false;
  char buf[64];
  while (m_wake[0] >= 0 && ::read(m_wake[0], buf, sizeof buf) > 0) {
  }
}

std::optional<WorkerHello> WorkerSupervisor::hello() const {
  return m_process ? m_process->hello : std::nullopt;
}
int WorkerSupervisor::worker_pid() const { return m_process ? m_process->pid : 0; }
WorkerSupervisor::Stats WorkerSupervisor::stats() const { return m_stats; }
std::string WorkerSupervisor::last_error() const { return m_last_error; }

std::string WorkerSupervisor::tail() const {
  if (m_tail.empty()) return "no output on stderr";
  std::string out = "last log: ";
  const std::size_t from = m_tail.size() > 3 ? m_tail.size() - 3 : 0;
  for (std::size_t i = from; i < m_tail.size(); ++i) out += (i > from ? " | " : "") + m_tail[i];
  return out;
}

// Starting and stopping ---------------------------------------------------------------------------------

std::optional<std::string> WorkerSupervisor::start_worker() {
  m_process.reset();
  m_sent.clear();
  m_tail.clear();
  const std::string exe = m_config.command.executable.string();
  const std::string who = "worker for device " + std::to_string(m_config.device) + " (" + exe + ")";
  if (exe.empty()) return "no worker executable configured";

  int in_pair[2], out_pipe[2], err_pipe[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_pair) != 0)
    return "cannot create the worker's stdin: " + errno_text(errno);
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    const int e = errno;
    ::close(in_pair[0]);
    ::close(in_pair[1]);
    return "cannot create the worker's stdout: " + errno_text(e);
  }
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    const int e = errno;
    for (int fd : {in_pair[0], in_pair[1], out_pipe[0], out_pipe[1]}) ::close(fd);
    return "cannot create the worker's stderr: " + errno_text(e);
  }
  for (int* fd : {&in_pair[0], &in_pair[1], &out_pipe[0], &out_pipe[1], &err_pipe[0], &err_pipe[1]})
    *fd = above_stdio(*fd);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_pair[1], 0);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);

  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);  // its own group, so that SIGKILL of the group is precise
  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &empty);    // the daemon may block signals in its threads
  posix_spawnattr_setsigdefault(&attr, &all);   // and ignore SIGPIPE: the worker gets defaults

  std::vector<std::string> args = {exe, "--device", std::to_string(m_config.device)};
  args.insert(args.end(), m_config.command.extra_args.begin(), m_config.command.extra_args.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::map<std::string, std::string> env_map;
  for (char** e = environ; e && *e; ++e) {
    std::string_view kv(*e);
    const auto eq = kv.find('=');
    if (eq != std::string_view::npos) env_map[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
  }
  for (const auto& [k, v] : m_config.command.env) env_map[k] = v;
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env_map) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);

  pid_t pid = -1;
  const bool has_slash = exe.find('/') != std::string::npos;
  const int rc = has_slash ? ::posix_spawn(&pid, exe.c_str(), &actions, &attr, argv.data(), envp.data())
                           : ::posix_spawnp(&pid, exe.c_str(), &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(in_pair[1]);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(in_pair[0]);
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    ++m_stats.start_failures;
    return "cannot start the " + who + ": " + errno_text(rc) +
           (rc == ENOENT ? " (is nsa-tune-worker installed next to nsa-tuned, or set NSA_TUNE_WORKER?)" : "");
  }
  ++m_stats.starts;
  m_process = std::make_unique<Process>();
  m_process->pid = pid;
  m_process->in = in_pair[0];
  m_process->out = out_pipe[0];
  m_process->err = err_pipe[0];
  for (int fd : {m_process->in, m_process->out, m_process->err}) set_nonblocking(fd);
  log(LogLevel::debug, "started " + who + ", pid " + std::to_string(pid));

  // Wait for the hello: the worker has its CUDA context and says which device it owns.
  const auto deadline = Clock::now() + m_config.start_timeout;
  for (;;) {
    Event ev = next_event(deadline, nullptr);
    std::string problem;
    if (ev.kind == Wait::interrupted) {
      m_process.reset();
      return "interrupted while the worker started";
    }
    if (ev.kind == Wait::timeout) {
      m_process->kill_and_reap();
      problem = "did not say hello within " + seconds_text(m_config.start_timeout) + " (killed)";
    } else if (ev.kind == Wait::eof) {
      m_process->reap_within(m_config.exit_grace);
      problem = m_process->exit_text() + " before it was ready";
    } else {
      auto msg = decode_message(ev.line);
      if (!msg || !std::holds_alternative<WorkerHello>(*msg)) {
        problem = "wrote " + quote_excerpt(ev.line) + " instead of its hello" + (msg ? "" : " (" + msg.error() + ")");
      } else {
        const auto& hello = std::get<WorkerHello>(*msg);
        if (hello.protocol != kWorkerProtocolVersion)
          problem = "speaks worker protocol " + std::to_string(hello.protocol) + ", this daemon " +
                    std::to_string(kWorkerProtocolVersion) + ": install the nsa-tune-worker of this build";
        else if (hello.device != m_config.device)
          problem = "says it owns device " + std::to_string(hello.device);
        else {
          m_process->hello = hello;
          log(LogLevel::debug, "worker pid " + std::to_string(pid) + " ready on device " + std::to_string(hello.device) +
                                   " (" + hello.name + ", " + hello.arch + ")");
          return std::nullopt;
        }
      }
    }
    ++m_stats.start_failures;
    std::string message = "the " + who + " " + problem + "; " + tail();
    m_process.reset();
    return message;
  }
}

void WorkerSupervisor::stop_worker(bool graceful) {
  if (!m_process) return;
  if (graceful) {
    m_process->close_stdin();
    m_process->reap_within(m_config.exit_grace);
  }
  m_process.reset();
  m_sent.clear();
}

void WorkerSupervisor::shutdown() { stop_worker(true); }

// Waiting ------------------------------------------------------------------------------------------------

WorkerSupervisor::Event WorkerSupervisor::next_event(Clock::time_point deadline, std::string* pending_out) {
  Process& p = *m_process;
  auto take_stderr_lines = [&](bool flush_partial) {
    std::size_t nl;
    while ((nl = p.err_buf.find('\n')) != std::string::npos || (flush_partial && !p.err_buf.empty())) {
      std::string line = nl == std::string::npos ? std::move(p.err_buf) : p.err_buf.substr(0, nl);
      p.err_buf.erase(0, nl == std::string::npos ? p.err_buf.size() : nl + 1);
      if (line.size() > 400) line = line.substr(0, 400) + "...";
      log(LogLevel::debug, "worker " + std::to_string(p.pid) + ": " + line);
      m_tail.push_back(std::move(line));
      if (m_tail.size() > m_config.log_tail_lines) m_tail.erase(m_tail.begin());
    }
  };
  auto drain = [&](int fd, std::string& buf, bool& eof) {
    char chunk[65536];
    for (;;) {
      const ssize_t n = ::read(fd, chunk, sizeof chunk);
      if (n > 0) {
        buf.append(chunk, static_cast<std::size_t>(n));
        if (buf.size() > kMaxLineBytes) return;
        continue;
      }
      if (n == 0) eof = true;
      else if (errno == EINTR) continue;
      else if (errno != EAGAIN) eof = true;
      return;
    }
  };

  for (;;) {
    if (const auto nl = p.out_buf.find('\n'); nl != std::string::npos) {
      Event ev{Wait::line, p.out_buf.substr(0, nl)};
      p.out_buf.erase(0, nl + 1);
      return ev;
    }
    if (p.out_buf.size() > kMaxLineBytes) {
      Event ev{Wait::line, p.out_buf.substr(0, 200)};
      p.out_buf.clear();
      return ev;  // not JSON: the caller treats it as garbage
    }
    if (p.out_eof) {
      drain(p.err, p.err_buf, p.err_eof);
      take_stderr_lines(true);
      if (!p.out_buf.empty()) {  // a last line without its newline: hand it over first
        Event ev{Wait::line, std::move(p.out_buf)};
        p.out_buf.clear();
        return ev;
      }
      return Event{Wait::eof, {}};
    }
    if (m_interrupted) return Event{Wait::interrupted, {}};
    const auto now = Clock::now();
    if (now >= deadline) return Event{Wait::timeout, {}};

    pollfd fds[4];
    int n = 0;
    const int out_i = n;
    fds[n++] = {p.out, POLLIN, 0};
    const int err_i = p.err_eof ? -1 : n;
    if (!p.err_eof) fds[n++] = {p.err, POLLIN, 0};
    const int wake_i = m_wake[0] >= 0 ? n : -1;
    if (m_wake[0] >= 0) fds[n++] = {m_wake[0], POLLIN, 0};
    const bool writing = pending_out && !pending_out->empty() && p.in >= 0;
    const int in_i = writing ? n : -1;
    if (writing) fds[n++] = {p.in, POLLOUT, 0};

    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
    const int timeout = static_cast<int>(std::clamp<long long>(left + 1, 1, 1000));
    const int r = ::poll(fds, n, timeout);
    if (r < 0) {
      if (errno == EINTR) continue;
      return Event{Wait::eof, {}};  // cannot wait on the worker: treat it as gone
    }
    if (r == 0) continue;
    if (wake_i >= 0 && (fds[wake_i].revents & POLLIN)) {
      char buf[64];
      while (::read(m_wake[0], buf, sizeof buf) > 0) {
      }
    }
    if (err_i >= 0 && fds[err_i].revents) {
      drain(p.err, p.err_buf, p.err_eof);
      take_stderr_lines(p.err_eof);
    }
    if (in_i >= 0 && fds[in_i].revents) {
      if (fds[in_i].revents & POLLOUT) {
        const ssize_t w = ::send(p.in, pending_out->data(), pending_out->size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) pending_out->erase(0, static_cast<std::size_t>(w));
        else if (w < 0 && errno != EAGAIN && errno != EINTR) pending_out->clear();  // gone: EOF follows
      } else {
        pending_out->clear();  // POLLERR/POLLHUP: the worker closed its stdin
      }
    }
    if (fds[out_i].revents) drain(p.out, p.out_buf, p.out_eof);
  }
}

// Running a job ----------------------------------------------------------------------------------------

JobOutcome WorkerSupervisor::run(const Job& job, const std::function<void(const VariantResult&)>& on_result,
                                 const std::function<void(const std::string& step)>& on_step) {
  JobOutcome outcome;
  std::map<std::string, std::size_t> index;  // variant key -> position in job.variants
  for (std::size_t i = 0; i < job.variants.size(); ++i) index.emplace(job.variants[i].key, i);
  std::vector<bool> have(job.variants.size(), false);
  std::size_t remaining = job.variants.size();
  double best_us = job.best_so_far_us > 0 ? job.best_so_far_us : 0;

  auto record = [&](VariantResult r) {
    const auto it = index.find(r.variant);
    if (it == index.end() || have[it->second]) return;
    have[it->second] = true;
    --remaining;
    r.job = job.id;
    if (r.backend.empty()) r.backend = job.variants[it->second].backend;
    if (r.status == cache::MeasurementStatus::ok && r.median_us > 0 && (best_us == 0 || r.median_us < best_us))
      best_us = r.median_us;
    if (on_result) on_result(r);
    outcome.results.push_back(std::move(r));
  };
  auto blame = [&](const std::string& key, cache::MeasurementStatus status, const std::string& detail) {
    VariantResult r;
    r.variant = key;
    r.status = status;
    r.detail = detail;
    record(std::move(r));
  };
  // The point cannot be measured: the variants not yet measured are skipped, with the reason.
  auto fail_point = [&](const std::string& why) {
    outcome.failure = why;
    m_last_error = why;
    for (std::size_t i = 0; i < job.variants.size(); ++i)
      if (!have[i]) blame(job.variants[i].key, cache::MeasurementStatus::skipped, "point not measured: " + why);
  };

  int restarts_without_progress = 0;
  bool first_worker = true;
  while (remaining > 0 || !outcome.done) {
    if (m_interrupted) {
      stop_worker(false);
      outcome.interrupted = true;
      return outcome;
    }
    if (!m_process) {
      if (!first_worker) ++outcome.restarts;
      if (auto error = start_worker()) {
        if (m_interrupted) {
          outcome.interrupted = true;
          return outcome;
        }
        outcome.failure = *error;
        outcome.worker_unavailable = true;
        m_last_error = *error;
        log(LogLevel::error, *error);
        return outcome;
      }
    }
    first_worker = false;

    // The job, reduced to the variants still to measure, with cubins this worker lacks.
    Job sub = job;
    sub.variants.clear();
    for (std::size_t i = 0; i < job.variants.size(); ++i)
      if (!have[i]) sub.variants.push_back(job.variants[i]);
    sub.best_so_far_us = best_us;
    std::string pending = encode_job(sub, [&](const std::string& key) { return !m_sent.contains(key); }) + "\n";
    for (const JobVariant* v : {&sub.support, &sub.reference})
      if (v->cubin && !v->cubin->empty()) m_sent.insert(v->key);
    for (const auto& v : sub.variants)
      if (v.cubin && !v.cubin->empty()) m_sent.insert(v.key);

    std::string step;  // what the worker is doing now ("" between steps)
    bool setup_done = false;
    auto deadline = Clock::now() + m_config.setup_timeout;
    std::optional<WorkerFatal> fatal;
    const std::size_t remaining_before = remaining;

    // The worker's end, whatever it was: blame the step it was in.
    auto worker_ended = [&](const std::string& how, cache::MeasurementStatus status) {
      const std::string where = step.empty() ? std::string() : step == kSetupStep ? " during setup" : " while running " + step;
      const std::string what = how + where + "; " + tail();
      m_last_error = "worker " + std::to_string(m_process ? m_process->pid : 0) + " " + what;
      log(LogLevel::warn, m_last_error);
      if (step == kSetupStep) {
        fail_point("the worker " + what);
      } else if (!step.empty()) {
        blame(step, status, "worker " + what);
      }
    };

    bool job_over = false;
    while (!job_over) {
      Event ev = next_event(deadline, &pending);
      if (ev.kind == Wait::interrupted) {
        stop_worker(false);
        outcome.interrupted = true;
        return outcome;
      }
      if (ev.kind == Wait::timeout) {
        ++m_stats.timeouts;
        const auto limit = step == kSetupStep || !setup_done ? m_config.setup_timeout : m_config.step_timeout;
        m_process->kill_and_reap();
        worker_ended("made no progress for " + seconds_text(limit) + " and was killed",
                     cache::MeasurementStatus::timeout);
        stop_worker(false);
        job_over = true;
        break;
      }
      if (ev.kind == Wait::eof) {
        m_process->reap_within(m_config.exit_grace);
        if (fatal) {
          ++m_stats.sticky;
          worker_ended("exited after '" + fatal->error + "' (" + m_process->exit_text() + ")",
                       cache::MeasurementStatus::crashed);
        } else {
          if (!step.empty()) ++m_stats.crashes;
          worker_ended(m_process->exit_text(), cache::MeasurementStatus::crashed);
        }
        stop_worker(false);
        job_over = true;
        break;
      }

      auto msg = decode_message(ev.line);
      std::string garbage;
      if (!msg) {
        garbage = msg.error();
      } else if (auto* begin = std::get_if<StepBegin>(&*msg)) {
        if (begin->job != job.id) garbage = "a step of job " + std::to_string(begin->job);
        else if (begin->step != kSetupStep && !index.contains(begin->step)) garbage = "a step of no variant of the job";
        else if (begin->step != kSetupStep && have[index.at(begin->step)]) garbage = "a step that already has a result";
        else {
          if (step == kSetupStep) setup_done = true;
          step = begin->step;
          deadline = Clock::now() + (step == kSetupStep ? m_config.setup_timeout : m_config.step_timeout);
          if (on_step) on_step(step);
        }
      } else if (auto* result = std::get_if<VariantResult>(&*msg)) {
        if (result->job != job.id) garbage = "a result of job " + std::to_string(result->job);
        else if (result->variant != step) garbage = "a result for " + result->variant + " while running " + step;
        else {
          record(*result);
          step.clear();
          setup_done = true;
          deadline = Clock::now() + m_config.step_timeout;
        }
      } else if (auto* done = std::get_if<JobDone>(&*msg)) {
        if (done->job != job.id) garbage = "the end of job " + std::to_string(done->job);
        else {
          outcome.done = *done;
          if (remaining > 0) {
            // The worker says the job is over but some variants have no result: a worker bug,
            // recorded against those variants rather than silently dropped.
            for (std::size_t i = 0; i < job.variants.size(); ++i)
              if (!have[i])
                blame(job.variants[i].key, cache::MeasurementStatus::crashed,
                      "the worker ended the job without measuring this variant");
          }
          job_over = true;
        }
      } else if (auto* failed = std::get_if<JobFailed>(&*msg)) {
        if (failed->job != job.id) garbage = "the failure of job " + std::to_string(failed->job);
        else {
          fail_point(failed->error);
          outcome.done = JobDone{job.id, 0, 0, 0, 0};
          job_over = true;
        }
      } else if (auto* f = std::get_if<WorkerFatal>(&*msg)) {
        fatal = *f;  // the worker exits next; its EOF decides what is blamed
        log(LogLevel::warn, "worker " + std::to_string(m_process->pid) + " reports: " + f->error);
      } else {
        garbage = "a second hello";
      }
      if (!garbage.empty()) {
        ++m_stats.crashes;
        m_process->kill_and_reap();
        worker_ended("wrote garbage " + quote_excerpt(ev.line) + " (" + garbage + ") and was killed",
                     cache::MeasurementStatus::crashed);
        stop_worker(false);
        job_over = true;
      }
    }

    if (remaining < remaining_before) restarts_without_progress = 0;
    else if (!m_process && remaining > 0 && ++restarts_without_progress >= m_config.max_restarts_without_progress) {
      const std::string why = "the worker keeps exiting without finishing a variant (" +
                              std::to_string(restarts_without_progress) + " times; " + m_last_error + ")";
      outcome.failure = why;
      outcome.worker_unavailable = true;
      m_last_error = why;
      log(LogLevel::error, why);
      return outcome;
    }
    if (remaining == 0 && !outcome.done) {
      // Every variant has a result, the last one through a crash: the job is over.
      outcome.done = JobDone{job.id, 0, 0, 0, 0};
    }
  }
  outcome.complete = remaining == 0;
  return outcome;
}

}  // namespace nsa::tuner
