// How the worker measures one shape point.
//
// Setup (step "setup"), once per job:
//   1. Inputs. Q, K and V are fresh standard normals made on the device by a counter-based
//      generator (worker_kernels.cu) from the job's seed; block_idx is made on the host by the
//      shared selection-pattern code from the same seed. A worker that restarts after a crash
//      therefore rebuilds bit-identical inputs, and the numerics of all variants of a point are
//      compared on the same data even when several workers measured them.
//   2. Rotation. A timed run that finds its data in L2 (left there by the previous run) is
//      faster than any real call. So the inputs exist in `copies` copies and run i uses copy
//      i % copies, with copies chosen so that one cycle touches at least `rotate_bytes`
//      (default 4x L2). What a run touches is estimated as Q + block_idx + O + the selected
//      K/V rows (at most all of K and V), so a small decode, whose tensors are large but whose
//      selection touches little, gets many copies. Copies are capped by free memory.
//   3. The device reference (design `reference`, fp32 arithmetic) runs once on copy 0; its O
//      and LSE are the yardstick of every variant.
//
// Each variant (steps named by variant key):
//   check   O and LSE poisoned with NaN, one run on copy 0, then the error against the
//           reference reduced on the device: rel_l2 = ||O - R|| / ||R||, max and mean |O - R|,
//           and how many outputs are not finite (unwritten elements stay NaN). LSE is compared
//           on the host (it is small). Non-finite outputs or LSE -> numerics_failed, not timed.
//   time    `warmup` untimed runs, then `probe_runs` timed ones. When the probe median is more
//           than cut_factor x the best time of the point so far, the variant stops there
//           (skipped, "cut early"): it cannot win, and the tuning budget is better spent
//           elsewhere. Otherwise enough runs to fill target_ms (within min_runs..max_runs). Each
//           run is bracketed by CUDA events; the result is the median and the p10..p90 spread.
//
// Any driver error is data: a sticky one (illegal address, trap, ...) is reported as the
// variant's `crashed` result and ends the process (the supervisor restarts it); others give
// `crashed` and the job goes on. A workspace that does not fit gives `skipped`.

#include "job_runner.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>

#include "nsa/jit/selection_patterns.hpp"

namespace nsa::tuner::worker {

namespace {

using jit::DeviceBuffer;
using jit::DriverError;
using jit::DriverResult;

constexpr std::uint64_t kGiB = 1ull << 30;
constexpr unsigned kFillGrid = 4096;
constexpr std::size_t kMaxModules = 1024;  // beyond this the module cache starts over
constexpr int kMaxCopies = 64;

std::string gib(std::uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / kGiB);
  return buf;
}

std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t copy, std::uint64_t tensor) {
  std::uint64_t x = seed ^ (copy * 0x9E3779B97F4A7C15ull) ^ (tensor * 0xD1B54A32D192ED03ull);
  x = (x ^ (x >> 31)) * 0x7FB5D329728EA185ull;
  return x ^ (x >> 27);
}

double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const std::size_t lo = static_cast<std::size_t>(std::floor(pos));
  const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

struct Inputs {
  DeviceBuffer q, k, v, idx;
};

jit::LaunchPlan single_launch(const char* entry, unsigned grid) {
  jit::LaunchPlan plan;
  jit::Launch l;
  l.entry = entry;
  l.grid[0] = grid;
  l.block[0] = kWorkerKernelThreads;
  plan.launches.push_back(l);
  return plan;
}

}  // namespace

struct JobRunner::State {
  jit::Context context;
  jit::Stream stream;
  jit::DeviceInfo info;
  int driver_version = 0;
  Log log;

  std::map<std::string, jit::Module> modules;  // by variant key, for this process's lifetime
  std::vector<jit::Event> starts, ends;

  // The current job's buffers (kept after the job for download_inputs()).
  jit::SelectionShape shape;
  jit::ElemType dtype = jit::ElemType::bf16;
  std::vector<Inputs> copies;
  DeviceBuffer o, lse, ref_o, ref_lse, partials, workspace;
  std::vector<float> ref_lse_host;

  State(jit::Context c, jit::Stream s) : context(std::move(c)), stream(std::move(s)) {}

  void say(const std::string& text) const {
    if (log) log(text);
  }

  /// The module of `v`: loaded from its cubin when one came with it, else the one loaded
  /// before. Loading a new cubin for a key replaces the old module.
  DriverResult<const jit::Module*> module_for(const JobVariant& v) {
    if (v.cubin && !v.cubin->empty()) {
      if (modules.size() >= kMaxModules) modules.clear();
      auto m = jit::Module::load(*v.cubin, v.key);
      if (!m) return std::unexpected(m.error());
      modules.insert_or_assign(v.key, std::move(*m));
    }
    auto it = modules.find(v.key);
    if (it == modules.end()) {
      DriverError e;
      e.call = "cuModuleLoadData";
      e.result = CUDA_ERROR_NOT_FOUND;
      e.result_name = "CUDA_ERROR_NOT_FOUND";
      e.variant = v.key;
      e.detail = "no cubin for this variant reached this worker (a supervisor bug: it must send each cubin once per worker)";
      return std::unexpected(e);
    }
    return &it->second;
  }

  DriverResult<void> ensure_events(std::size_t n) {
    while (starts.size() < n) {
      auto a = jit::Event::create();
      if (!a) return std::unexpected(a.error());
      auto b = jit::Event::create();
      if (!b) return std::unexpected(b.error());
      starts.push_back(std::move(*a));
      ends.push_back(std::move(*b));
    }
    return {};
  }

  SelectionParams params_for(std::size_t copy, CUdeviceptr out, CUdeviceptr out_lse) const {
    SelectionParams p{};
    const Inputs& in = copies[copy % copies.size()];
    p.q = in.q.ptr();
    p.k = in.k.ptr();
    p.v = in.v.ptr();
    p.block_idx = in.idx.ptr();
    p.o = out;
    p.lse = out_lse;
    p.workspace = workspace.ptr();
    p.batch = shape.batch;
    p.t_q = shape.t_q;
    p.t_kv = shape.t_kv;
    p.h_kv = shape.h_kv;
    p.scale = shape.effective_scale();
    return p;
  }
};

JobRunner::JobRunner(std::unique_ptr<State> s) : m(std::move(s)) {}
JobRunner::JobRunner(JobRunner&&) noexcept = default;
JobRunner& JobRunner::operator=(JobRunner&&) noexcept = default;
JobRunner::~JobRunner() = default;

DriverResult<JobRunner> JobRunner::create(const jit::DeviceInfo& info, int driver_version, Log log) {
  auto context = jit::Context::retain_primary(info.ordinal);
  if (!context) return std::unexpected(context.error());
  auto stream = jit::Stream::create();
  if (!stream) return std::unexpected(stream.error());
  auto state = std::make_unique<State>(std::move(*context), std::move(*stream));
  state->info = info;
  state->driver_version = driver_version;
  state->log = std::move(log);
  return JobRunner(std::move(state));
}

WorkerHello JobRunner::hello() const {
  WorkerHello h;
  h.device = m->info.ordinal;
  h.pid = static_cast<int>(::getpid());
  h.uuid = m->info.uuid;
  h.name = m->info.name;
  h.arch = m->info.arch;
  h.memory_bytes = m->info.memory_bytes;
  h.l2_bytes = m->info.l2_bytes;
  h.driver_version = m->driver_version;
  return h;
}

std::optional<WorkerFatal> JobRunner::run(const Job& job, const Send& send) {
  using Clock = std::chrono::steady_clock;
  const auto job_start = Clock::now();
  State& s = *m;
  send(StepBegin{job.id, kSetupStep});

  // A driver error in setup: sticky ones end the process, others fail the job.
  auto setup_error = [&](const DriverError& e, const std::string& what) -> std::optional<WorkerFatal> {
    if (e.sticky) return WorkerFatal{"setup (" + what + "): " + e.message(), true};
    send(JobFailed{job.id, what + ": " + e.message()});
    return std::nullopt;
  };

  // Setup -------------------------------------------------------------------------------------
  s.copies.clear();
  s.o = {};
  s.lse = {};
  s.ref_o = {};
  s.ref_lse = {};
  s.workspace = {};
  s.shape = jit::SelectionShape::from(spec_of(job.family), shape_of(job.point));
  s.dtype = spec_of(job.family).dtype;
  if (auto bad = s.shape.validate()) {
    send(JobFailed{job.id, "the point " + job.point.key() + " of " + job.family.key() + " is not a valid shape: " + *bad});
    return std::nullopt;
  }
  const jit::SelectionShape& sh = s.shape;
  const std::uint64_t eb = 2;  // bf16 and fp16
  const std::uint64_t q_bytes = sh.q_elems() * eb, k_bytes = sh.k_elems() * eb, v_bytes = sh.v_elems() * eb;
  const std::uint64_t idx_bytes = sh.idx_elems() * 4, o_bytes = sh.o_elems() * eb, lse_bytes = sh.lse_elems() * 4;
  const std::uint64_t copy_bytes = q_bytes + k_bytes + v_bytes + idx_bytes;
  const std::uint64_t selected_rows = static_cast<std::uint64_t>(sh.batch * sh.h_kv * sh.t_q) *
                                      static_cast<std::uint64_t>(std::min<std::int64_t>(std::int64_t{sh.n} * sh.block, sh.t_kv));
  const std::uint64_t kv_touched = std::min<std::uint64_t>(k_bytes + v_bytes, selected_rows * (sh.d_qk + sh.d_v) * eb);
  const std::uint64_t touched = q_bytes + idx_bytes + o_bytes + kv_touched;
  const std::uint64_t rotate = job.rotate_bytes ? job.rotate_bytes : 4 * std::max<std::uint64_t>(s.info.l2_bytes, 1 << 20);
  std::uint64_t max_ws = 0;
  for (const auto& v : job.variants) max_ws = std::max(max_ws, v.plan.workspace_bytes);
  max_ws = std::max(max_ws, job.reference.plan.workspace_bytes);

  auto mem = s.context.memory_info();
  if (!mem) return setup_error(mem.error(), "reading free memory");
  const std::uint64_t free_bytes = mem->first;
  const std::uint64_t fixed = 2 * o_bytes + 2 * lse_bytes + kErrorGrid * kErrorPartialFields * 8 + (64u << 20);
  const std::uint64_t usable = free_bytes / 10 * 9;
  if (fixed + copy_bytes > usable) {
    send(JobFailed{job.id, "the inputs of " + job.point.key() + " need " + gib(fixed + copy_bytes) + " but device " +
                               std::to_string(s.info.ordinal) + " has " + gib(free_bytes) +
                               " free: a point this large cannot be tuned here"});
    return std::nullopt;
  }
  int copies = static_cast<int>(std::clamp<std::uint64_t>((rotate + touched - 1) / std::max<std::uint64_t>(touched, 1), 1, kMaxCopies));
  // Copies give way to the largest workspace, but there is always one.
  const std::uint64_t room = usable > fixed + max_ws ? usable - fixed - max_ws : 0;
  copies = static_cast<int>(std::clamp<std::uint64_t>(std::min<std::uint64_t>(copies, room / copy_bytes), 1, kMaxCopies));

  auto alloc = [&](DeviceBuffer& b, std::uint64_t bytes, const char* what) -> std::optional<DriverError> {
    auto r = DeviceBuffer::allocate(bytes, what);
    if (!r) return r.error();
    b = std::move(*r);
    return std::nullopt;
  };

  auto support = s.module_for(job.support);
  if (!support) return setup_error(support.error(), "loading the worker kernels");
  const bool bf16 = s.dtype == jit::ElemType::bf16;
  auto fill = jit::PreparedPlan::prepare(**support, single_launch(bf16 ? kFillNormalBf16 : kFillNormalFp16, kFillGrid));
  if (!fill) return setup_error(fill.error(), "preparing the input generator");
  auto error_plan = jit::PreparedPlan::prepare(**support, single_launch(bf16 ? kErrorBf16 : kErrorFp16, kErrorGrid));
  if (!error_plan) return setup_error(error_plan.error(), "preparing the error reduction");

  std::mt19937_64 rng(job.seed);
  const std::vector<std::int32_t> idx_host = jit::make_block_idx(sh, job.pattern, rng);
  for (int c = 0; c < copies; ++c) {
    Inputs in;
    if (auto e = alloc(in.q, q_bytes, "Q")) return setup_error(*e, "allocating input copy " + std::to_string(c));
    if (auto e = alloc(in.k, k_bytes, "K")) return setup_error(*e, "allocating input copy " + std::to_string(c));
    if (auto e = alloc(in.v, v_bytes, "V")) return setup_error(*e, "allocating input copy " + std::to_string(c));
    if (auto e = alloc(in.idx, idx_bytes, "block_idx")) return setup_error(*e, "allocating input copy " + std::to_string(c));
    int tensor = 0;
    for (const DeviceBuffer* b : {&in.q, &in.k, &in.v}) {
      SelectionParams p{};
      p.o = b->ptr();
      p.batch = static_cast<std::int64_t>(b->size() / eb);
      p.t_kv = static_cast<std::int64_t>(mix_seed(job.seed, static_cast<std::uint64_t>(c), static_cast<std::uint64_t>(++tensor)));
      if (auto r = fill->launch(p, s.stream); !r) return setup_error(r.error(), "filling the inputs");
    }
    if (auto r = in.idx.upload(idx_host.data(), idx_bytes); !r) return setup_error(r.error(), "uploading block_idx");
    s.copies.push_back(std::move(in));
  }
  if (auto e = alloc(s.o, o_bytes, "O")) return setup_error(*e, "allocating the output");
  if (auto e = alloc(s.lse, lse_bytes, "LSE")) return setup_error(*e, "allocating the LSE");
  if (auto e = alloc(s.ref_o, o_bytes, "reference O")) return setup_error(*e, "allocating the reference output");
  if (auto e = alloc(s.ref_lse, lse_bytes, "reference LSE")) return setup_error(*e, "allocating the reference LSE");
  if (auto e = alloc(s.partials, kErrorGrid * kErrorPartialFields * 8, "error partials"))
    return setup_error(*e, "allocating the error partials");

  // The device reference on copy 0.
  auto ref_module = s.module_for(job.reference);
  if (!ref_module) return setup_error(ref_module.error(), "loading the reference");
  auto ref_plan = jit::PreparedPlan::prepare(**ref_module, job.reference.plan);
  if (!ref_plan) return setup_error(ref_plan.error(), "preparing the reference");
  if (job.reference.plan.workspace_bytes > 0)
    if (auto e = alloc(s.workspace, job.reference.plan.workspace_bytes, "workspace"))
      return setup_error(*e, "allocating the reference's workspace");
  if (auto r = s.ensure_events(1); !r) return setup_error(r.error(), "creating events");
  double reference_ms = 0;
  {
    if (auto r = s.starts[0].record(s.stream); !r) return setup_error(r.error(), "timing the reference");
    if (auto r = ref_plan->launch(s.params_for(0, s.ref_o.ptr(), s.ref_lse.ptr()), s.stream); !r)
      return setup_error(r.error(), "running the reference");
    if (auto r = s.ends[0].record(s.stream); !r) return setup_error(r.error(), "timing the reference");
    if (auto r = s.stream.synchronize(); !r) return setup_error(r.error(), "running the reference");
    auto ms = jit::Event::elapsed_ms(s.starts[0], s.ends[0]);
    reference_ms = ms ? *ms : 0;
  }
  s.ref_lse_host.assign(static_cast<std::size_t>(sh.lse_elems()), 0.f);
  if (auto r = s.ref_lse.download(s.ref_lse_host.data(), lse_bytes); !r)
    return setup_error(r.error(), "downloading the reference LSE");
  s.say("job " + std::to_string(job.id) + " " + job.family.key() + " @ " + job.point.key() + ": " +
        std::to_string(copies) + " input copies (" + gib(copies * copy_bytes) + "), reference " +
        std::to_string(reference_ms) + " ms, " + std::to_string(job.variants.size()) + " variants");

  // Variants ------------------------------------------------------------------------------------
  double best_us = job.best_so_far_us > 0 ? job.best_so_far_us : 0;
  std::vector<float> lse_host(static_cast<std::size_t>(sh.lse_elems()));
  std::vector<double> partials(kErrorGrid * kErrorPartialFields);
  const std::uint16_t nan16 = jit::nan_bits(s.dtype);

  for (const JobVariant& v : job.variants) {
    send(StepBegin{job.id, v.key});
    VariantResult res;
    res.job = job.id;
    res.variant = v.key;
    res.backend = v.backend;
    // A driver error of this variant: crashed; sticky ones end the worker after the result.
    auto driver_failed = [&](const DriverError& e, const std::string& when) -> std::optional<WorkerFatal> {
      res.status = cache::MeasurementStatus::crashed;
      res.detail = when + ": " + e.message();
      send(res);
      if (e.sticky) return WorkerFatal{v.key + ": " + e.message(), true};
      return std::nullopt;
    };

    auto module = s.module_for(v);
    if (!module) {
      if (auto f = driver_failed(module.error(), "loading the cubin")) return f;
      continue;
    }
    auto prepared = jit::PreparedPlan::prepare(**module, v.plan);
    if (!prepared) {
      if (auto f = driver_failed(prepared.error(), "preparing the launches")) return f;
      continue;
    }
    if (v.plan.workspace_bytes > s.workspace.size()) {
      s.workspace = {};
      auto ws = DeviceBuffer::allocate(v.plan.workspace_bytes, "workspace");
      if (!ws) {
        if (ws.error().sticky) return driver_failed(ws.error(), "allocating the workspace");
        auto free_now = s.context.memory_info();
        res.status = cache::MeasurementStatus::skipped;
        res.detail = "needs " + gib(v.plan.workspace_bytes) + " of workspace at this point; " +
                     (free_now ? gib(free_now->first) : std::string("unknown")) + " free after the inputs";
        send(res);
        continue;
      }
      s.workspace = std::move(*ws);
    }

    // Check: poisoned outputs, one run on copy 0, error against the reference.
    if (auto r = s.o.fill_u16(nan16); !r) return driver_failed(r.error(), "poisoning O");
    if (auto r = s.lse.fill_u32(0x7FC00000u); !r) return driver_failed(r.error(), "poisoning LSE");
    if (auto r = prepared->launch(s.params_for(0, s.o.ptr(), s.lse.ptr()), s.stream); !r) {
      if (auto f = driver_failed(r.error(), "launching")) return f;
      continue;
    }
    if (auto r = s.stream.synchronize(); !r) {
      if (auto f = driver_failed(r.error(), "running")) return f;
      continue;
    }
    {
      SelectionParams p{};
      p.q = s.o.ptr();
      p.k = s.ref_o.ptr();
      p.batch = sh.o_elems();
      p.workspace = s.partials.ptr();
      if (auto r = error_plan->launch(p, s.stream); !r) return driver_failed(r.error(), "reducing the error");
      if (auto r = s.stream.synchronize(); !r) return driver_failed(r.error(), "reducing the error");
      if (auto r = s.partials.download(partials.data(), partials.size() * 8); !r)
        return driver_failed(r.error(), "downloading the error");
      double d2 = 0, r2 = 0, ad = 0, md = 0, bad = 0;
      for (unsigned b = 0; b < kErrorGrid; ++b) {
        d2 += partials[b * 5 + 0];
        r2 += partials[b * 5 + 1];
        ad += partials[b * 5 + 2];
        md = std::max(md, partials[b * 5 + 3]);
        bad += partials[b * 5 + 4];
      }
      res.nonfinite = static_cast<std::int64_t>(bad);
      res.rel_l2 = r2 > 0 ? std::sqrt(d2 / r2) : (d2 > 0 ? std::numeric_limits<double>::infinity() : 0.0);
      res.max_abs = md;
      const double finite_count = static_cast<double>(sh.o_elems()) - bad;
      res.mean_abs = finite_count > 0 ? ad / finite_count : 0;
    }
    if (auto r = s.lse.download(lse_host.data(), lse_bytes); !r) return driver_failed(r.error(), "downloading LSE");
    std::int64_t lse_bad = 0;
    for (std::size_t i = 0; i < lse_host.size(); ++i) {
      const float g = lse_host[i], r = s.ref_lse_host[i];
      if (std::isinf(r) && r < 0) {
        if (!(std::isinf(g) && g < 0)) ++lse_bad;
      } else if (!std::isfinite(g)) {
        ++lse_bad;
      } else {
        res.lse_max_abs = std::max(res.lse_max_abs, static_cast<double>(std::fabs(g - r)));
      }
    }
    if (res.nonfinite > 0 || lse_bad > 0) {
      res.status = cache::MeasurementStatus::numerics_failed;
      res.detail = std::to_string(res.nonfinite) + " of " + std::to_string(sh.o_elems()) +
                   " outputs and " + std::to_string(lse_bad) + " of " + std::to_string(sh.lse_elems()) +
                   " LSE values are not finite where the reference is (unwritten or overflowed); not timed";
      send(res);
      continue;
    }

    // Timing.
    std::vector<double> times;
    std::size_t run_index = 0;
    auto timed = [&](int runs) -> std::optional<DriverError> {
      if (auto r = s.ensure_events(static_cast<std::size_t>(runs)); !r) return r.error();
      for (int i = 0; i < runs; ++i) {
        if (auto r = s.starts[i].record(s.stream); !r) return r.error();
        if (auto r = prepared->launch(s.params_for(run_index++, s.o.ptr(), s.lse.ptr()), s.stream); !r) return r.error();
        if (auto r = s.ends[i].record(s.stream); !r) return r.error();
      }
      if (auto r = s.stream.synchronize(); !r) return r.error();
      for (int i = 0; i < runs; ++i) {
        auto ms = jit::Event::elapsed_ms(s.starts[i], s.ends[i]);
        if (!ms) return ms.error();
        times.push_back(static_cast<double>(*ms) * 1000.0);
      }
      return std::nullopt;
    };
    bool failed = false;
    for (int i = 0; i < job.reps.warmup && !failed; ++i) {
      if (auto r = prepared->launch(s.params_for(run_index++, s.o.ptr(), s.lse.ptr()), s.stream); !r) {
        if (auto f = driver_failed(r.error(), "warming up")) return f;
        failed = true;
      }
    }
    if (failed) continue;
    if (auto e = timed(job.reps.probe_runs)) {
      if (auto f = driver_failed(*e, "timing")) return f;
      continue;
    }
    std::vector<double> sorted = times;
    std::sort(sorted.begin(), sorted.end());
    const double probe_median = percentile(sorted, 0.5);
    if (job.cut_factor > 0 && best_us > 0 && probe_median > job.cut_factor * best_us) {
      res.status = cache::MeasurementStatus::skipped;
      res.median_us = probe_median;
      res.p10_us = percentile(sorted, 0.1);
      res.p90_us = percentile(sorted, 0.9);
      res.runs = static_cast<int>(times.size());
      char buf[160];
      std::snprintf(buf, sizeof buf, "cut early: the probe median %.2f us is over %.3gx the best time so far (%.2f us)",
                    probe_median, job.cut_factor, best_us);
      res.detail = buf;
      send(res);
      continue;
    }
    const double wanted = std::ceil(job.reps.target_ms * 1000.0 / std::max(probe_median, 1e-3));
    const int total = static_cast<int>(std::clamp<double>(wanted, job.reps.min_runs, job.reps.max_runs));
    if (total > job.reps.probe_runs) {
      if (auto e = timed(total - job.reps.probe_runs)) {
        if (auto f = driver_failed(*e, "timing")) return f;
        continue;
      }
    }
    std::sort(times.begin(), times.end());
    res.status = cache::MeasurementStatus::ok;
    res.median_us = percentile(times, 0.5);
    res.p10_us = percentile(times, 0.1);
    res.p90_us = percentile(times, 0.9);
    res.runs = static_cast<int>(times.size());
    if (best_us == 0 || res.median_us < best_us) best_us = res.median_us;
    send(res);
  }

  JobDone done;
  done.job = job.id;
  done.copies = copies;
  done.input_bytes = copies * copy_bytes;
  done.reference_ms = reference_ms;
  done.seconds = std::chrono::duration<double>(Clock::now() - job_start).count();
  send(done);
  return std::nullopt;
}

DriverResult<HostInputs> JobRunner::download_inputs() const {
  const State& s = *m;
  HostInputs out;
  out.shape = s.shape;
  out.dtype = s.dtype;
  if (s.copies.empty()) {
    DriverError e;
    e.call = "download_inputs";
    e.result = CUDA_ERROR_INVALID_VALUE;
    e.result_name = "CUDA_ERROR_INVALID_VALUE";
    e.detail = "no job has set up inputs yet";
    return std::unexpected(e);
  }
  auto widen = [&](const DeviceBuffer& b, std::vector<float>& to) -> DriverResult<void> {
    std::vector<std::uint16_t> bits(b.size() / 2);
    if (auto r = b.download(bits.data(), b.size()); !r) return r;
    to = jit::decode(s.dtype, bits);
    return {};
  };
  const Inputs& in = s.copies.front();
  if (auto r = widen(in.q, out.q); !r) return std::unexpected(r.error());
  if (auto r = widen(in.k, out.k); !r) return std::unexpected(r.error());
  if (auto r = widen(in.v, out.v); !r) return std::unexpected(r.error());
  if (auto r = widen(s.ref_o, out.reference_o); !r) return std::unexpected(r.error());
  out.block_idx.resize(in.idx.size() / 4);
  if (auto r = in.idx.download(out.block_idx.data(), in.idx.size()); !r) return std::unexpected(r.error());
  return out;
}

}  // namespace nsa::tuner::worker
