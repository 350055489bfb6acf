// A stand-in for nsa-tune-worker that needs no GPU: a real child process speaking the real
// worker protocol (it links the same encoder and decoder), whose behaviour per step is scripted
// so that the supervisor's containment can be tested on any host.
//
// Script: the environment variable FAKE_WORKER_SCRIPT holds rules "pattern=action" separated by
// ';'. A step uses the first rule whose pattern is a substring of its name (the variant key, or
// "setup"); the pattern "start" applies before the hello. Unmatched variants answer ok:100.
// Actions:
//   ok:US[:REL]      result ok, median US microseconds, rel_l2 REL (default 1e-3)
//   numerics         result numerics_failed
//   abort            std::abort() (SIGABRT) after `begin`
//   segv             raise SIGSEGV after `begin`
//   hang             sleep forever after `begin`
//   garbage          print a line that is not JSON after `begin`
//   wrongresult      send the result of a variant that is not running
//   exit:CODE        exit with CODE after `begin` (mid-job)
//   sticky           result crashed (a sticky error), `fatal`, exit 3: what the real worker does
//   fail             (setup only) job_failed with a reason
//   exit:CODE:TEXT   (start only) print TEXT on stderr and exit with CODE before the hello
//   deaf             (start only) say hello, then never read stdin
//   badhello         (start only) say hello with another protocol version
//   slow:MS:US       sleep MS milliseconds, then ok:US
// Every variant without a cubin that this process has not been sent before is answered crashed
// "no cubin" (the supervisor must send each cubin once per worker process). FAKE_WORKER_LOG, if
// set, names a file that gets one line per process start and per step.

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "nsa/tuner/worker_protocol.hpp"

using namespace nsa::tuner;

namespace {

std::vector<std::pair<std::string, std::string>> g_rules;

void send(const WorkerMessage& m) {
  std::string line = encode_message(m) + "\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
}

void note(const std::string& text) {
  std::fprintf(stderr, "fake worker %d: %s\n", static_cast<int>(::getpid()), text.c_str());
  std::fflush(stderr);
  if (const char* log = std::getenv("FAKE_WORKER_LOG")) {
    std::ofstream out(log, std::ios::app);
    out << ::getpid() << " " << text << "\n";
  }
}

std::string action_for(const std::string& step, const std::string& fallback) {
  for (const auto& [pattern, action] : g_rules)
    if (step.find(pattern) != std::string::npos) return action;
  return fallback;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const auto pos = s.find(sep, start);
    out.push_back(s.substr(start, pos - start));
    if (pos == std::string::npos) return out;
    start = pos + 1;
  }
}

[[noreturn]] void hang() {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

}  // namespace

int main(int argc, char** argv) {
  int device = 0;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--device") device = std::atoi(argv[i + 1]);
  if (const char* script = std::getenv("FAKE_WORKER_SCRIPT"))
    for (const auto& rule : split(script, ';')) {
      const auto eq = rule.find('=');
      if (eq != std::string::npos) g_rules.emplace_back(rule.substr(0, eq), rule.substr(eq + 1));
    }
  note("start");

  const std::string start = action_for("start", "");
  if (start.starts_with("exit:")) {
    // exit:CODE:TEXT, where TEXT may contain ':' itself.
    const std::string rest = start.substr(5);
    const auto colon = rest.find(':');
    std::fprintf(stderr, "%s\n", colon == std::string::npos ? "fake worker exits before its hello" : rest.substr(colon + 1).c_str());
    return std::atoi(rest.substr(0, colon).c_str());
  }
  WorkerHello hello;
  hello.device = device;
  hello.pid = static_cast<int>(::getpid());
  hello.uuid = "GPU-fake-" + std::to_string(device);
  hello.name = "Fake GPU";
  hello.arch = "sm_90";
  hello.memory_bytes = 80ull << 30;
  hello.l2_bytes = 50ull << 20;
  hello.driver_version = 13000;
  if (start == "badhello") hello.protocol = kWorkerProtocolVersion + 1;
  send(hello);
  if (start == "deaf") hang();

  std::set<std::string> have_cubin;
  std::string line;
  while (std::getline(std::cin, line)) {
    auto job = decode_job(line);
    if (!job) {
      send(WorkerFatal{"bad job line: " + job.error(), false});
      return worker_exit::bad_input;
    }
    for (const JobVariant* v : {&job->support, &job->reference})
      if (v->cubin && !v->cubin->empty()) have_cubin.insert(v->key);
    send(StepBegin{job->id, kSetupStep});
    note("job " + std::to_string(job->id) + " setup with " + std::to_string(job->variants.size()) + " variants");
    const std::string setup = action_for("setup", "");
    if (setup == "fail") {
      send(JobFailed{job->id, "the inputs need 90 GiB but the fake device has 80"});
      continue;
    }
    if (setup == "segv") ::raise(SIGSEGV);
    if (setup == "hang") hang();

    for (const auto& v : job->variants) {
      if (v.cubin && !v.cubin->empty()) have_cubin.insert(v.key);
      send(StepBegin{job->id, v.key});
      note("step " + v.key);
      VariantResult r;
      r.job = job->id;
      r.variant = v.key;
      r.backend = v.backend;
      if (!have_cubin.contains(v.key)) {
        r.status = nsa::cache::MeasurementStatus::crashed;
        r.detail = "no cubin";
        send(r);
        continue;
      }
      const std::string action = action_for(v.key, "ok:100");
      const auto parts = split(action, ':');
      const std::string& verb = parts[0];
      if (verb == "abort") std::abort();
      if (verb == "segv") ::raise(SIGSEGV);
      if (verb == "hang") hang();
      if (verb == "exit") std::_Exit(std::atoi(parts.at(1).c_str()));
      if (verb == "garbage") {
        std::fputs("this is not a protocol line\n", stdout);
        std::fflush(stdout);
        hang();
      }
      if (verb == "wrongresult") {
        r.variant = "sel_fwd.not_running";
        send(r);
        hang();
      }
      if (verb == "sticky") {
        r.status = nsa::cache::MeasurementStatus::crashed;
        r.detail = "running: cuStreamSynchronize failed for " + v.key +
                   ": CUDA_ERROR_ILLEGAL_ADDRESS (sticky: the context is unusable; restart the process)";
        send(r);
        send(WorkerFatal{v.key + ": CUDA_ERROR_ILLEGAL_ADDRESS", true});
        return worker_exit::sticky;
      }
      if (verb == "numerics") {
        r.status = nsa::cache::MeasurementStatus::numerics_failed;
        r.nonfinite = 12;
        r.detail = "12 of 4096 outputs are not finite";
        send(r);
        continue;
      }
      double us = 100, rel = 1e-3;
      if (verb == "slow") {
        std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(parts.at(1).c_str())));
        us = std::atof(parts.at(2).c_str());
      } else if (verb == "ok") {
        if (parts.size() > 1) us = std::atof(parts[1].c_str());
        if (parts.size() > 2) rel = std::atof(parts[2].c_str());
      }
      r.status = nsa::cache::MeasurementStatus::ok;
      r.median_us = us;
      r.p10_us = us * 0.98;
      r.p90_us = us * 1.03;
      r.runs = 20;
      r.rel_l2 = rel;
      r.max_abs = rel * 10;
      r.mean_abs = rel / 2;
      send(r);
    }
    JobDone done;
    done.job = job->id;
    done.copies = 2;
    done.input_bytes = 1 << 20;
    done.reference_ms = 1.5;
    done.seconds = 0.01;
    send(done);
  }
  return worker_exit::ok;
}
