#pragma once
// The supervisor of one GPU's tuning worker: it starts `nsa-tune-worker --device N` as a child
// process in its own process group, feeds it jobs (worker_protocol.hpp), watches it, and turns
// everything that can go wrong with a kernel into a measurement status instead of a daemon
// failure:
//
//   the worker ...                          the variant it was running gets ...
//   dies (signal, exit) mid-variant         crashed  ("killed by signal 11 (SIGSEGV)", its last log)
//   makes no progress within the deadline   timeout  (the process group is SIGKILLed)
//   reports a sticky CUDA error             crashed  (the worker's own result), then it exits
//   prints a line that is not the protocol  crashed  ("wrote garbage: ...")
//
// and then a new worker is started and the job goes on with the variants not yet measured, on
// the same inputs (the job's seed). A failure of the setup step (inputs, the device reference)
// makes the whole point unmeasurable: its variants are recorded `skipped` with the reason. A
// worker that cannot be started at all (no GPU, wrong binary) fails the job with
// `worker_unavailable` and nothing is recorded.
//
// One WorkerSupervisor drives one worker at a time, from one thread: every member but
// interrupt() and clear_interrupt() belongs to the thread that calls run(). interrupt() may be
// called from any thread and makes a running run() return promptly (the worker is killed).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "nsa/tuner/worker_protocol.hpp"

namespace nsa::tuner {

enum class LogLevel { debug, info, warn, error };
/// Where the tuning machinery logs (the daemon passes its logger). Called from tuning threads.
using LogSink = std::function<void(LogLevel, const std::string&)>;

/// How to start a worker: `executable --device N extra_args...`, with `env` set on top of the
/// daemon's environment.
struct WorkerCommand {
  std::filesystem::path executable;
  std::vector<std::string> extra_args;
  std::vector<std::pair<std::string, std::string>> env;
};

/// nsa-tune-worker next to the running executable (the install puts both in bin/), else where
/// the build tree puts it relative to service/ (../tuner/worker/), else the bare name (PATH).
std::filesystem::path default_worker_path();

struct SupervisorConfig {
  int device = 0;
  WorkerCommand command;
  /// From spawn to the worker's hello (driver load and context creation).
  std::chrono::milliseconds start_timeout{60000};
  /// From sending a job to the end of its setup step (allocating and filling the inputs,
  /// running the device reference).
  std::chrono::milliseconds setup_timeout{180000};
  /// Each variant step, and the gap between steps: the watchdog deadline.
  std::chrono::milliseconds step_timeout{30000};
  /// How long a worker that said `fatal` or lost its stdin may take to exit before SIGKILL.
  std::chrono::milliseconds exit_grace{3000};
  /// Lines of the worker's stderr kept for crash reports.
  std::size_t log_tail_lines = 12;
  /// Workers that die between steps (blaming no variant) before the job is given up.
  int max_restarts_without_progress = 3;
};

/// What became of one job.
struct JobOutcome {
  /// One result per variant the job got through, in the order they finished.
  std::vector<VariantResult> results;
  /// Every variant of the job has a result.
  bool complete = false;
  /// interrupt() was called: results are partial, nothing is wrong with the variants.
  bool interrupted = false;
  /// Non-empty when the point could not be measured (setup failed: the remaining variants have
  /// `skipped` results saying so) or the worker could not be run (see worker_unavailable).
  std::string failure;
  /// The worker could not be started or keeps dying without running anything: the device is
  /// not tunable now. The job's remaining variants have no result.
  bool worker_unavailable = false;
  int restarts = 0;                 // workers started for this job after the first one
  std::optional<JobDone> done;      // the last worker's summary of the job
};

class WorkerSupervisor {
 public:
  explicit WorkerSupervisor(SupervisorConfig config, LogSink log = {});
  ~WorkerSupervisor();
  WorkerSupervisor(const WorkerSupervisor&) = delete;
  WorkerSupervisor& operator=(const WorkerSupervisor&) = delete;

  /// Runs `job` to the end (see the file comment), starting a worker when none runs.
  /// `on_step` is told each step the worker begins ("setup" or a variant key), `on_result` each
  /// result as it is recorded, both on the calling thread. Never throws for worker behaviour.
  JobOutcome run(const Job& job, const std::function<void(const VariantResult&)>& on_result = {},
                 const std::function<void(const std::string& step)>& on_step = {});

  /// Thread-safe. The running run() (or the next one) kills the worker and returns with
  /// `interrupted`; stays in effect until clear_interrupt().
  void interrupt();
  void clear_interrupt();

  /// Closes the worker's stdin (it exits 0), waits up to exit_grace, then kills its process
  /// group. A later run() starts a new worker. Frees the GPU between tuning passes.
  void shutdown();

  /// The running worker's hello; nullopt when none runs.
  std::optional<WorkerHello> hello() const;
  /// The pid of the running worker; 0 when none runs.
  int worker_pid() const;

  struct Stats {
    int starts = 0;       // workers spawned
    int crashes = 0;      // died or wrote garbage while a variant ran
    int timeouts = 0;     // killed by the watchdog
    int sticky = 0;       // exited after reporting a sticky CUDA error
    int start_failures = 0;
  };
  Stats stats() const;
  /// The most recent thing that went wrong, as a sentence ("" when nothing did).
  std::string last_error() const;

 private:
  struct Process;
  enum class Wait;
  struct Event;

  std::optional<std::string> start_worker();
  void stop_worker(bool graceful);
  Event next_event(std::chrono::steady_clock::time_point deadline, std::string* pending_out);
  std::string tail() const;
  void log(LogLevel, const std::string&) const;

  SupervisorConfig m_config;
  LogSink m_log;
  std::unique_ptr<Process> m_process;
  std::set<std::string> m_sent;  // cubins the running worker has
  int m_wake[2] = {-1, -1};      // interrupt() writes here; run() polls it
  std::atomic<bool> m_interrupted{false};
  std::vector<std::string> m_tail;  // the worker's last stderr lines
  Stats m_stats;
  std::string m_last_error;
};

/// "killed by signal 11 (SIGSEGV)", "exited with code 3" for a waitpid status.
std::string describe_wait_status(int status);

}  // namespace nsa::tuner
