// nsa-tune-worker: owns one GPU's CUDA context for nsa-tuned's tuner and measures the jobs it
// is sent (worker_protocol.hpp, docs/tuning.md). It is a separate process so that a kernel that
// crashes, hangs or poisons the context takes down nothing but this process.
//
//   nsa-tune-worker --device N              serve jobs on stdin (protocol on stdout, logs on stderr)
//   nsa-tune-worker --device N --self-test  compile and run one small job end to end, print it
//
// stdout carries only protocol lines: at start the process moves its real stdout to a private
// descriptor and points fd 1 at stderr, so nothing a library prints can corrupt the protocol.

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>

#include "job_runner.hpp"
#include "nsa/jit/catalog.hpp"
#include "nsa/jit/device.hpp"
#include "nsa/jit/host_reference.hpp"
#include "nsa/jit/nvrtc.hpp"
#include "nsa/tuner/worker_protocol.hpp"

namespace {

using namespace nsa;
using namespace nsa::tuner;

constexpr const char* kUsage =
    "usage: nsa-tune-worker --device N [--self-test]\n"
    "\n"
    "The tuning worker of nsa-tuned (one per GPU). nsa-tuned starts it; run it by hand only\n"
    "with --self-test, to check that this GPU can compile and run the kernels:\n"
    "  --device N    the CUDA device ordinal to own (0 = the first GPU)\n"
    "  --self-test   compile the default variants of one small family with NVRTC, measure one\n"
    "                decode point end to end, check the device reference against the host\n"
    "                reference, and print the results (exit 0 when all is well)\n"
    "Without --self-test it reads jobs (one JSON object per line) on stdin and writes results\n"
    "on stdout; docs/tuning.md describes the protocol. Exit codes: 0 stdin closed, 3 sticky CUDA\n"
    "error, 4 self-test failed, 64 usage, 65 bad job line, 69 no usable GPU.\n";

int g_protocol_fd = 1;

void log_line(const std::string& text) {
  std::fprintf(stderr, "nsa-tune-worker: %s\n", text.c_str());
  std::fflush(stderr);
}

/// Writes one protocol line; a failed write means the supervisor is gone: exit quietly.
void send_line(const WorkerMessage& message) {
  std::string line = encode_message(message) + "\n";
  const char* p = line.data();
  std::size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(g_protocol_fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) std::_Exit(worker_exit::ok);
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

struct Args {
  int device = -1;
  bool self_test = false;
};

/// Parses the command line; prints and exits for --help, --version and usage errors.
Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(worker_exit::ok);
    } else if (arg == "--version") {
      std::printf("nsa-tune-worker (worker protocol %d)\n", kWorkerProtocolVersion);
      std::exit(worker_exit::ok);
    } else if (arg == "--self-test") {
      a.self_test = true;
    } else if (arg == "--device" || arg.starts_with("--device=")) {
      std::string value;
      if (arg == "--device") {
        if (i + 1 >= argc) {
          std::fprintf(stderr, "nsa-tune-worker: --device needs a value (a device ordinal such as 0)\n%s", kUsage);
          std::exit(worker_exit::usage);
        }
        value = argv[++i];
      } else {
        value = arg.substr(9);
      }
      char* end = nullptr;
      errno = 0;
      const long d = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || errno != 0 || d < 0 || d > 1023) {
        std::fprintf(stderr, "nsa-tune-worker: --device '%s' is not a device ordinal (0..1023)\n", value.c_str());
        std::exit(worker_exit::usage);
      }
      a.device = static_cast<int>(d);
    } else {
      std::fprintf(stderr, "nsa-tune-worker: unknown argument '%s'\n%s", arg.c_str(), kUsage);
      std::exit(worker_exit::usage);
    }
  }
  if (a.device < 0) {
    std::fprintf(stderr, "nsa-tune-worker: --device N is required\n%s", kUsage);
    std::exit(worker_exit::usage);
  }
  return a;
}

// The self-test ----------------------------------------------------------------------------------------

int self_test(worker::JobRunner& runner, const jit::DeviceInfo& info) {
  const std::string arch = info.arch;
  api::Family family;
  family.dtype = api::DType::bf16;
  family.d_qk = 128;
  family.d_v = 128;
  family.h = 16;
  family.block = 64;
  family.n = 16;
  family.phase = api::Phase::decode;
  api::Point point;
  point.batch = 2;
  point.h_kv = 2;
  point.t_q = 1;
  point.t_kv = 4096;
  const jit::FamilySpec spec = spec_of(family);
  const jit::RuntimeShape shape = shape_of(point);
  std::printf("self-test on device %d (%s, %s): %s @ %s\n", info.ordinal, info.name.c_str(), arch.c_str(),
              family.key().c_str(), point.key().c_str());

  Job job;
  job.id = 1;
  job.family = family;
  job.point = point;
  job.seed = std::random_device{}();
  job.seed = (job.seed << 32) ^ std::random_device{}();
  bool ok = true;

  auto worker_kernels = compile_worker_kernels(arch, nullptr);
  if (!worker_kernels) {
    std::printf("FAIL  worker kernels do not compile: %s\n", worker_kernels.error().message().c_str());
    return worker_exit::self_test_failed;
  }
  job.support = {"nsa_worker.kernels." + arch, "support", {},
                 std::make_shared<const std::vector<std::uint8_t>>(worker_kernels->image)};

  for (jit::Design design : {jit::Design::reference, jit::Design::sdpa_packed, jit::Design::query_outer, jit::Design::split_kv}) {
    const jit::KernelVariant variant = jit::default_variant(design, spec, arch);
    auto cubin = jit::compile_to_cubin(variant);
    if (!cubin) {
      std::printf("FAIL  %s does not compile: %s\n", variant.key().c_str(), cubin.error().message().c_str());
      ok = false;
      if (design == jit::Design::reference) return worker_exit::self_test_failed;
      continue;
    }
    JobVariant v;
    v.key = variant.key();
    v.backend = design == jit::Design::reference ? "reference" : jit::is_sparse(design) ? "sparse" : "sdpa";
    try {
      v.plan = jit::plan_for(variant, shape);
    } catch (const std::exception& e) {
      std::printf("FAIL  %s has no launch plan: %s\n", v.key.c_str(), e.what());
      ok = false;
      continue;
    }
    v.cubin = std::make_shared<const std::vector<std::uint8_t>>(cubin->image);
    if (design == jit::Design::reference) job.reference = v;
    else job.variants.push_back(v);
  }

  bool job_ok = false;
  std::optional<WorkerFatal> fatal = runner.run(job, [&](const WorkerMessage& m) {
    if (auto* r = std::get_if<VariantResult>(&m)) {
      const bool passed = r->status == cache::MeasurementStatus::ok && r->rel_l2 < 2e-2;
      ok = ok && passed;
      std::printf("%-5s %-80s %-15s median %9.2f us  p10..p90 %8.2f..%8.2f  rel_l2 %.2e  max_abs %.2e%s%s\n",
                  passed ? "ok" : "FAIL", r->variant.c_str(), cache::to_string(r->status).c_str(), r->median_us,
                  r->p10_us, r->p90_us, r->rel_l2, r->max_abs, r->detail.empty() ? "" : "  ", r->detail.c_str());
    } else if (auto* d = std::get_if<JobDone>(&m)) {
      job_ok = true;
      std::printf("done  %d input copies (%.1f MiB), reference %.3f ms, %.2f s in all\n", d->copies,
                  static_cast<double>(d->input_bytes) / (1 << 20), d->reference_ms, d->seconds);
    } else if (auto* f = std::get_if<JobFailed>(&m)) {
      std::printf("FAIL  the job failed: %s\n", f->error.c_str());
    }
  });
  std::fflush(stdout);
  if (fatal) {
    std::printf("FAIL  sticky CUDA error: %s\nself-test FAILED\n", fatal->error.c_str());
    std::fflush(stdout);
    std::_Exit(worker_exit::self_test_failed);  // no teardown on a poisoned context
  }
  if (!job_ok) return worker_exit::self_test_failed;

  // The device reference against the host reference (fp64) on the same inputs.
  auto inputs = runner.download_inputs();
  if (!inputs) {
    std::printf("FAIL  cannot download the inputs: %s\n", inputs.error().message().c_str());
    return worker_exit::self_test_failed;
  }
  auto host = jit::selection_reference(inputs->shape, inputs->q, inputs->k, inputs->v, inputs->block_idx);
  if (!host) {
    std::printf("FAIL  host reference: %s\n", host.error().c_str());
    return worker_exit::self_test_failed;
  }
  const jit::ErrorStats stats = jit::compare(inputs->reference_o, host->o);
  // The device reference rounds O to bf16 on output: half an ulp is 2^-9 relative.
  const bool ref_ok = stats.nan_count == 0 && stats.rel_l2 < 8e-3;
  std::printf("%-5s device reference vs host fp64 reference: %s\n", ref_ok ? "ok" : "FAIL", stats.describe().c_str());
  ok = ok && ref_ok;
  std::printf("self-test %s\n", ok ? "passed" : "FAILED");
  return ok ? worker_exit::ok : worker_exit::self_test_failed;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse_args(argc, argv);

  if (!args.self_test) {
    // Keep the protocol stream private (see the file comment).
    g_protocol_fd = ::dup(1);
    if (g_protocol_fd < 0 || ::dup2(2, 1) < 0) {
      std::fprintf(stderr, "nsa-tune-worker: cannot set up the protocol stream: %s\n", std::strerror(errno));
      return worker_exit::no_device;
    }
  }

  const jit::DriverProbe probe = jit::probe_devices();
  if (!probe.available()) {
    // The probe's text is written for the daemon ("...: every answer will be the SDPA
    // fallback"); the worker only needs the cause.
    std::string why = probe.problem.empty() ? "the driver reports no devices" : probe.problem;
    if (const auto cut = why.find(": every answer"); cut != std::string::npos) why.resize(cut);
    std::fprintf(stderr, "nsa-tune-worker: no usable GPU, nothing to tune: %s\n", why.c_str());
    return worker_exit::no_device;
  }
  if (args.device >= static_cast<int>(probe.devices.size())) {
    std::fprintf(stderr, "nsa-tune-worker: device %d does not exist: this host has %zu GPU(s), ordinals 0..%zu\n",
                 args.device, probe.devices.size(), probe.devices.size() - 1);
    return worker_exit::no_device;
  }
  const jit::DeviceInfo& info = probe.devices[static_cast<std::size_t>(args.device)];
  auto runner = worker::JobRunner::create(info, probe.driver_version, log_line);
  if (!runner) {
    std::fprintf(stderr, "nsa-tune-worker: cannot use device %d (%s): %s\n", args.device, info.name.c_str(),
                 runner.error().message().c_str());
    return worker_exit::no_device;
  }
  if (args.self_test) return self_test(*runner, info);

  send_line(runner->hello());
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    auto job = decode_job(line);
    if (!job) {
      send_line(WorkerFatal{"bad job line: " + job.error(), false});
      return worker_exit::bad_input;
    }
    if (auto fatal = runner->run(*job, send_line)) {
      log_line(fatal->error);
      send_line(*fatal);
      // No destructors: releasing modules and memory of a poisoned context can block, and the
      // process exit releases everything anyway.
      std::fflush(stderr);
      std::_Exit(worker_exit::sticky);
    }
  }
  return worker_exit::ok;
}
