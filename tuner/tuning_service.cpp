// The tuning service: from a plan to stored verdicts, in the background of the daemon.
//
// Threads. One thread per device class ("group") plans and waits; while a plan runs, one thread
// per device of the group takes the plan's families in turn (an atomic index), so identical GPUs
// share the work. Compiles run ahead on their own threads: when a device takes family i, the
// compiles of families i and i+1 are started (the pool de-duplicates, the store-backed cache
// makes a restart compile nothing). Every wait checks `stopping`; stop() interrupts the
// supervisors, whose poll loops return at once, and joins.
//
// One point, start to finish (family F, point P, device d, run r):
//   1. Job: the reference, every compiled sdpa_packed setting, then the candidates (the test
//      fault variant first, on the first point of a pass, when the test switch is on). Variants
//      that did not compile, or have no launch plan at P, are not sent: they are recorded
//      compile_failed / skipped directly.
//   2. The supervisor runs it (restarting the worker as often as kernels kill it).
//   3. The baseline is the fastest sdpa setting that is `ok` and within the dtype's absolute
//      error bound (else the fastest `ok` one): the SDPA fallback at its best, so the bar is
//      high. The other settings are kept as `skipped` rows ("not the baseline: ..."), since the
//      policy takes exactly one baseline per point.
//   4. Every row goes to the store (history); decide_point() (verdict_policy.hpp) makes the
//      verdict, put_verdict() stores it, and the callback tells the daemon the epoch moved.
//   A point that yields no verdict (setup failed, no baseline) is remembered for retry_after so
//   that the idle loop does not measure it again and again.

#include "nsa/tuner/tuning_service.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "nsa/cache/verdict_store.hpp"
#include "nsa/jit/catalog.hpp"
#include "nsa/jit/compiler.hpp"
#include "nsa/jit/device.hpp"
#include "nsa/jit/nvrtc.hpp"
#include "nsa/jit/sources.hpp"
#include "nsa/tuner/kernel_cache.hpp"

namespace nsa::tuner {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Configuration -----------------------------------------------------------------------------------------

namespace {

std::optional<jit::Design> parse_design(std::string_view s) {
  for (jit::Design d : jit::all_designs())
    if (jit::to_string(d) == s) return d;
  return std::nullopt;
}

std::optional<bool> parse_bool_text(std::string_view s) {
  if (s == "1" || s == "true" || s == "yes" || s == "on") return true;
  if (s == "0" || s == "false" || s == "no" || s == "off") return false;
  return std::nullopt;
}

std::string fmt(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

}  // namespace

std::optional<std::string> TuningConfig::validate() const {
  if (auto e = plan.validate()) return "plan: " + *e;
  if (auto e = policy.validate()) return *e;
  if (auto e = reps.validate()) return *e;
  if (!(cut_factor == 0 || cut_factor >= 1.5))
    return "cut_factor " + fmt("%g", cut_factor) + " must be 0 (no early cut) or at least 1.5: a cut closer to 1 "
           "would drop candidates that might still win after a full measurement";
  for (const auto* designs : {&decode_designs, &prefill_designs})
    for (jit::Design d : *designs)
      if (!jit::is_sparse(d))
        return std::string(designs == &decode_designs ? "decode_designs" : "prefill_designs") + ": '" +
               std::string(jit::to_string(d)) + "' is not a sparse design (" + jit::design_names(true) + ")";
  if (max_variants_per_design < 0) return "max_variants_per_design must be 0 (all) or positive";
  for (auto [name, ms] : {std::pair{"start_timeout_s", start_timeout}, std::pair{"setup_timeout_s", setup_timeout},
                          std::pair{"step_timeout_s", step_timeout}})
    if (ms.count() < 100 || ms.count() > 3600 * 1000)
      return std::string(name) + " must be between 0.1 and 3600 seconds";
  if (idle_poll.count() < 10) return "idle_poll_s must be at least 0.01";
  if (retry_after.count() < 0 || failure_backoff.count() < 0) return "retry_after_s and failure_backoff_s must be >= 0";
  return std::nullopt;
}

std::expected<TuningConfig, std::string> tuning_config_from_json(const json& j, TuningConfig c) {
  if (!j.is_object()) return std::unexpected("tuning: expected a JSON object");
  static const std::set<std::string> plan_keys = {"families",     "phases",
                                                  "decode_points", "prefill_points",
                                                  "demand_limit", "max_demand_points_per_family",
                                                  "experimental_pinned"};
  json plan = json::object();
  auto number = [](const json& v, const std::string& key, double& out) -> std::optional<std::string> {
    if (!v.is_number()) return "tuning." + key + ": expected a number";
    out = v.get<double>();
    return std::nullopt;
  };
  auto integer = [](const json& v, const std::string& key, int& out) -> std::optional<std::string> {
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() > 1000000)
      return "tuning." + key + ": expected an integer in [0, 1000000]";
    out = static_cast<int>(v.get<std::int64_t>());
    return std::nullopt;
  };
  auto millis = [&](const json& v, const std::string& key, std::chrono::milliseconds& out) -> std::optional<std::string> {
    double s = 0;
    if (auto e = number(v, key, s)) return e;
    if (!(s >= 0) || s > 1e7) return "tuning." + key + ": expected seconds in [0, 1e7]";
    out = std::chrono::milliseconds(static_cast<std::int64_t>(s * 1000));
    return std::nullopt;
  };
  for (const auto& [key, v] : j.items()) {
    std::optional<std::string> e;
    if (plan_keys.contains(key)) plan[key] = v;
    else if (key == "margin") e = number(v, key, c.policy.margin);
    else if (key == "gate_factor") e = number(v, key, c.policy.gate_factor);
    else if (key == "bf16_abs_bound") e = number(v, key, c.policy.bf16_abs_bound);
    else if (key == "fp16_abs_bound") e = number(v, key, c.policy.fp16_abs_bound);
    else if (key == "warmup") e = integer(v, key, c.reps.warmup);
    else if (key == "probe_runs") e = integer(v, key, c.reps.probe_runs);
    else if (key == "min_runs") e = integer(v, key, c.reps.min_runs);
    else if (key == "max_runs") e = integer(v, key, c.reps.max_runs);
    else if (key == "target_ms") e = number(v, key, c.reps.target_ms);
    else if (key == "cut_factor") e = number(v, key, c.cut_factor);
    else if (key == "decode_pattern" || key == "prefill_pattern") {
      auto p = v.is_string() ? jit::parse_selection_pattern(v.get<std::string>()) : std::nullopt;
      if (!p) return std::unexpected("tuning." + key + ": expected \"random\" or \"clustered\"");
      (key == "decode_pattern" ? c.decode_pattern : c.prefill_pattern) = *p;
    } else if (key == "decode_designs" || key == "prefill_designs") {
      if (!v.is_array()) return std::unexpected("tuning." + key + ": expected an array of design names");
      std::vector<jit::Design> designs;
      for (const auto& d : v) {
        auto parsed = d.is_string() ? parse_design(d.get<std::string>()) : std::nullopt;
        if (!parsed) return std::unexpected("tuning." + key + ": " + d.dump() + " is not a design (" + jit::design_names(true) + ")");
        designs.push_back(*parsed);
      }
      (key == "decode_designs" ? c.decode_designs : c.prefill_designs) = std::move(designs);
    } else if (key == "max_variants_per_design") e = integer(v, key, c.max_variants_per_design);
    else if (key == "worker") {
      if (!v.is_string() || v.get<std::string>().empty()) return std::unexpected("tuning.worker: expected a path");
      c.worker = v.get<std::string>();
    } else if (key == "start_timeout_s") e = millis(v, key, c.start_timeout);
    else if (key == "setup_timeout_s") e = millis(v, key, c.setup_timeout);
    else if (key == "step_timeout_s") e = millis(v, key, c.step_timeout);
    else if (key == "compile_threads") {
      int t = 0;
      e = integer(v, key, t);
      c.compile_threads = static_cast<unsigned>(t);
    } else if (key == "idle_poll_s") e = millis(v, key, c.idle_poll);
    else if (key == "retry_after_s" || key == "failure_backoff_s") {
      std::chrono::milliseconds ms{};
      e = millis(v, key, ms);
      (key == "retry_after_s" ? c.retry_after : c.failure_backoff) = std::chrono::duration_cast<std::chrono::seconds>(ms);
    } else {
      return std::unexpected("tuning: unknown key '" + key + "' (docs/tuning.md lists the keys)");
    }
    if (e) return std::unexpected(*e);
  }
  if (!plan.empty())
    if (auto e = parse_plan_config(plan, c.plan)) return std::unexpected("tuning." + *e);
  if (auto e = c.validate()) return std::unexpected("tuning: " + *e);
  return c;
}

std::optional<std::string> apply_tuning_env(TuningConfig& c,
                                            const std::function<std::optional<std::string>(const char*)>& env) {
  if (auto v = env("NSA_TUNE_EXPERIMENTAL_PINNED")) {
    auto b = parse_bool_text(*v);
    if (!b) return "NSA_TUNE_EXPERIMENTAL_PINNED='" + *v + "': expected 1/0, true/false, yes/no or on/off";
    c.plan.experimental_pinned = *b;
  }
  if (auto v = env("NSA_TUNE_TEST_FAULT")) {
    auto f = parse_test_fault(*v);
    if (!f) return "NSA_TUNE_TEST_FAULT='" + *v + "': expected illegal_address, hang, abort or none (test only)";
    c.test_fault = *f;
  }
  if (auto v = env("NSA_TUNE_WORKER")) {
    if (v->empty()) return std::string("NSA_TUNE_WORKER is empty: give the path of nsa-tune-worker");
    c.worker = *v;
  }
  return std::nullopt;
}

json to_json(const TuningConfig& c) {
  auto designs = [](const std::vector<jit::Design>& ds) {
    json a = json::array();
    for (auto d : ds) a.push_back(std::string(jit::to_string(d)));
    return a;
  };
  json j = to_json(c.plan);
  j["margin"] = c.policy.margin;
  j["gate_factor"] = c.policy.gate_factor;
  j["bf16_abs_bound"] = c.policy.bf16_abs_bound;
  j["fp16_abs_bound"] = c.policy.fp16_abs_bound;
  j["warmup"] = c.reps.warmup;
  j["probe_runs"] = c.reps.probe_runs;
  j["min_runs"] = c.reps.min_runs;
  j["max_runs"] = c.reps.max_runs;
  j["target_ms"] = c.reps.target_ms;
  j["cut_factor"] = c.cut_factor;
  j["decode_pattern"] = std::string(jit::to_string(c.decode_pattern));
  j["prefill_pattern"] = std::string(jit::to_string(c.prefill_pattern));
  j["decode_designs"] = designs(c.decode_designs);
  j["prefill_designs"] = designs(c.prefill_designs);
  j["max_variants_per_design"] = c.max_variants_per_design;
  j["worker"] = c.worker.string();
  j["start_timeout_s"] = c.start_timeout.count() / 1000.0;
  j["setup_timeout_s"] = c.setup_timeout.count() / 1000.0;
  j["step_timeout_s"] = c.step_timeout.count() / 1000.0;
  j["compile_threads"] = c.compile_threads;
  j["idle_poll_s"] = c.idle_poll.count() / 1000.0;
  j["retry_after_s"] = c.retry_after.count();
  j["failure_backoff_s"] = c.failure_backoff.count();
  j["test_fault"] = std::string(to_string(c.test_fault));
  return j;
}

// Compiled families ---------------------------------------------------------------------------------------

namespace {

/// One variant ready to be measured, or the reason it cannot be.
struct ReadyVariant {
  std::optional<jit::KernelVariant> variant;     // catalog variants: plan_for at each point
  std::optional<jit::LaunchPlan> fixed_plan;     // the test fault: one plan for every point
  std::string key;
  std::string backend;                           // "support", "reference", "sdpa", "sparse"
  std::shared_ptr<const std::vector<std::uint8_t>> cubin;  // null when the compile failed
  std::string error;                             // the compile error, one line
};

struct CompiledFamily {
  std::string error;  // the family cannot be measured at all (worker kernels or reference failed)
  ReadyVariant support, reference;
  std::vector<ReadyVariant> sdpa, candidates;
  std::optional<ReadyVariant> fault;
  std::size_t compiled = 0, from_cache = 0, failed = 0;
  double seconds = 0;
};

ReadyVariant ready_from(const jit::CompileOutcome& o, std::string backend) {
  ReadyVariant r;
  r.variant = o.variant;
  r.key = o.key;
  r.backend = std::move(backend);
  if (o.result) r.cubin = std::make_shared<const std::vector<std::uint8_t>>(o.result->image);
  else r.error = o.result.error().message();
  return r;
}

std::string fault_key(TestFault mode, const jit::FamilySpec& spec, const std::string& arch) {
  std::string a = arch;
  a.erase(std::remove(a.begin(), a.end(), '_'), a.end());
  return "sel_fwd.test_fault." + spec.key() + "." + std::string(to_string(mode)) + "." + a;
}

/// The test-only faulting variant (jit_kernels/kernels/test_fault.cu), compiled through the
/// same cache as everything else.
ReadyVariant compile_fault(TestFault mode, const jit::FamilySpec& spec, const std::string& arch, jit::CubinCache* cache) {
  ReadyVariant r;
  r.key = fault_key(mode, spec, arch);
  r.backend = "sparse";
  jit::LaunchPlan plan;
  jit::Launch l;
  l.entry = "nsa_test_fault";
  l.block[0] = 32;
  plan.launches.push_back(l);
  r.fixed_plan = plan;
  auto source = jit::find_source("test_fault.cu");
  if (!source) {
    r.error = "test_fault.cu is not embedded in this build";
    return r;
  }
  std::string mode_macro(to_string(mode));
  std::transform(mode_macro.begin(), mode_macro.end(), mode_macro.begin(), [](unsigned char c) { return std::toupper(c); });
  const std::string text = "#define NSA_TEST_FAULT_" + mode_macro + " 1\n" + std::string(*source);
  const jit::CubinKey key{r.key, arch, jit::kernel_source_hash(), jit::options_string(arch), jit::nvrtc_version()};
  if (cache)
    if (auto hit = cache->get(key)) {
      r.cubin = std::make_shared<const std::vector<std::uint8_t>>(hit->image);
      return r;
    }
  auto cubin = jit::compile_source_to_cubin(text, "test_fault.cu", arch, r.key);
  if (!cubin) {
    r.error = cubin.error().message();
    return r;
  }
  if (cache) (void)cache->put(key, *cubin);
  r.cubin = std::make_shared<const std::vector<std::uint8_t>>(cubin->image);
  return r;
}

/// What one point produced.
struct PointOutcome {
  bool verdict = false;
  bool sparse = false;
  bool worker_unavailable = false;
  bool interrupted = false;
  int restarts = 0;
  std::size_t measurements = 0;
  std::string error;
};

}  // namespace

// The service ------------------------------------------------------------------------------------------------

struct DeviceSlot {
  cache::DeviceRecord record;
  std::unique_ptr<WorkerSupervisor> supervisor;
  // Progress, guarded by Impl::mutex.
  std::string state = "idle";
  std::int64_t run_id = 0;
  std::string trigger, family, point, variant, last_error;
  std::size_t family_index = 0;
  std::int64_t verdicts = 0, measurements = 0;
  int restarts = 0;
};

struct Group {
  cache::DeviceClass cls;
  std::uint64_t memory_bytes = 0;
  std::vector<DeviceSlot*> devices;
  std::thread thread;
  // Guarded by Impl::mutex.
  std::string state = "idle";
  bool experimental = false;
  std::vector<std::string> notes;
  Clock::time_point pass_start{};
  std::size_t points_total = 0, points_done = 0, families_total = 0;
  // Only touched by the group's own threads (under attempted_mutex).
  std::mutex attempted_mutex;
  std::map<std::pair<std::string, std::string>, Clock::time_point> attempted;
};

struct TuningService::Impl {
  std::filesystem::path store_path;
  std::vector<cache::DeviceRecord> records;
  TuningConfig config;
  LogSink log_sink;
  VerdictCallback on_verdicts;

  std::optional<cache::VerdictStore> store;
  std::unique_ptr<StoreCubinCache> cubin_cache;
  std::unique_ptr<jit::CompilePool> pool;
  std::string source_hash;
  std::vector<std::unique_ptr<DeviceSlot>> slots;
  std::vector<std::unique_ptr<Group>> groups;

  mutable std::mutex mutex;  // progress fields, wake generation, request bookkeeping
  std::condition_variable cv;
  std::uint64_t wake_generation = 0;
  std::atomic<bool> stopping{false};
  bool started = false;
  std::atomic<std::int64_t> next_job_id{1};
  std::map<std::int64_t, std::set<const Group*>> request_done_by;
  std::map<std::int64_t, std::vector<std::string>> request_summaries;

  void log(LogLevel level, const std::string& text) const {
    if (log_sink) log_sink(level, text);
  }

  std::string device_name(const DeviceSlot& d) const {
    return "device " + std::to_string(d.record.ordinal) + " (" + d.record.arch + " " + d.record.name + ")";
  }

  void set(DeviceSlot& d, auto&& f) {
    std::lock_guard lock(mutex);
    f(d);
  }

  /// Sleeps until `timeout`, a wake() or stop().
  void wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex);
    const std::uint64_t gen = wake_generation;
    cv.wait_for(lock, timeout, [&] { return stopping.load() || wake_generation != gen; });
  }

  // Compiling ---------------------------------------------------------------------------------------------

  std::vector<jit::CompileOutcome> compile_many(const std::vector<jit::KernelVariant>& variants) {
    std::vector<jit::CompileOutcome> out(variants.size());
    std::atomic<std::size_t> next{0};
    auto work = [&] {
      for (;;) {
        const std::size_t i = next.fetch_add(1);
        if (i >= variants.size()) return;
        if (stopping) {
          out[i].variant = variants[i];
          out[i].key = variants[i].key();
          out[i].result = std::unexpected(jit::CompileError{NVRTC_ERROR_INVALID_INPUT, "", "", out[i].key});
          continue;
        }
        out[i] = pool->compile(variants[i]);
      }
    };
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    const unsigned n = static_cast<unsigned>(
        std::min<std::size_t>(config.compile_threads ? config.compile_threads : hw, variants.size()));
    std::vector<std::jthread> threads;
    for (unsigned t = 1; t < n; ++t) threads.emplace_back(work);
    work();
    threads.clear();
    return out;
  }

  std::shared_ptr<CompiledFamily> compile_family(const api::Family& family, const std::string& arch) {
    const auto t0 = Clock::now();
    auto cf = std::make_shared<CompiledFamily>();
    const jit::FamilySpec spec = spec_of(family);
    auto limited = [&](jit::Design d) {
      auto v = jit::variants_for(spec, arch, d);
      if (config.max_variants_per_design > 0 && v.size() > static_cast<std::size_t>(config.max_variants_per_design))
        v.resize(static_cast<std::size_t>(config.max_variants_per_design));
      return v;
    };
    auto support = compile_worker_kernels(arch, cubin_cache.get());
    cf->support.key = worker_kernels_key(arch).variant_key;
    cf->support.backend = "support";
    if (!support) {
      cf->error = "the worker kernels do not compile for " + arch + ": " + support.error().message();
      return cf;
    }
    cf->support.cubin = std::make_shared<const std::vector<std::uint8_t>>(support->image);

    std::vector<jit::KernelVariant> all = {jit::default_variant(jit::Design::reference, spec, arch)};
    const auto sdpa = limited(jit::Design::sdpa_packed);
    all.insert(all.end(), sdpa.begin(), sdpa.end());
    std::size_t candidates_from = all.size();
    for (jit::Design d : family.phase == api::Phase::decode ? config.decode_designs : config.prefill_designs) {
      const auto v = limited(d);
      all.insert(all.end(), v.begin(), v.end());
    }
    const auto outcomes = compile_many(all);
    if (stopping) {
      cf->error = "stopped";
      return cf;
    }
    for (std::size_t i = 0; i < outcomes.size(); ++i) {
      const auto& o = outcomes[i];
      if (!o.result) ++cf->failed;
      else if (o.from_cache) ++cf->from_cache;
      else ++cf->compiled;
      if (i == 0) cf->reference = ready_from(o, "reference");
      else if (i < candidates_from) cf->sdpa.push_back(ready_from(o, "sdpa"));
      else cf->candidates.push_back(ready_from(o, "sparse"));
    }
    if (!cf->reference.cubin) cf->error = "the reference does not compile: " + cf->reference.error;
    if (config.test_fault != TestFault::none)
      cf->fault = compile_fault(config.test_fault, spec, arch, cubin_cache.get());
    cf->seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    log(LogLevel::info, family.key() + " on " + arch + ": " + std::to_string(outcomes.size()) + " variants, " +
                            std::to_string(cf->compiled) + " compiled, " + std::to_string(cf->from_cache) +
                            " from the cache, " + std::to_string(cf->failed) + " failed in " + fmt("%.1f s", cf->seconds));
    return cf;
  }

  // One point -----------------------------------------------------------------------------------------------

  PointOutcome run_point(Group& g, DeviceSlot& d, std::int64_t run_id, bool experimental, const PlannedFamily& pf,
                         const api::Point& point, const CompiledFamily& cf, bool with_fault) {
    PointOutcome out;
    const std::string family_key = pf.family.key(), point_key = point.key();
    jit::RuntimeShape shape = shape_of(point);
    shape.sm_count = d.record.sm_count;  // the plans measured are those the dispatcher answers with

    Job job;
    job.id = next_job_id++;
    job.family = pf.family;
    job.point = point;
    job.pattern = pf.family.phase == api::Phase::decode ? config.decode_pattern : config.prefill_pattern;
    std::random_device rd;
    job.seed = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    job.reps = config.reps;
    job.cut_factor = config.cut_factor;
    job.support = JobVariant{cf.support.key, "support", {}, cf.support.cubin};

    std::vector<VariantResult> direct;  // outcomes decided without the worker
    auto plan_of = [&](const ReadyVariant& v) -> std::expected<jit::LaunchPlan, std::string> {
      if (v.fixed_plan) return *v.fixed_plan;
      try {
        return jit::plan_for(*v.variant, shape);
      } catch (const std::exception& e) {
        return std::unexpected(std::string(e.what()));
      }
    };
    auto ref_plan = plan_of(cf.reference);
    if (!ref_plan) {
      out.error = family_key + " @ " + point_key + ": the reference has no launch plan: " + ref_plan.error();
      return out;
    }
    job.reference = JobVariant{cf.reference.key, "reference", *ref_plan, cf.reference.cubin};
    auto add = [&](const ReadyVariant& v) {
      VariantResult r;
      r.job = job.id;
      r.variant = v.key;
      r.backend = v.backend;
      if (!v.cubin) {
        r.status = cache::MeasurementStatus::compile_failed;
        r.detail = v.error;
        direct.push_back(r);
        return;
      }
      auto plan = plan_of(v);
      if (!plan) {
        r.status = cache::MeasurementStatus::skipped;
        r.detail = "no launch plan at " + point_key + ": " + plan.error();
        direct.push_back(r);
        return;
      }
      job.variants.push_back(JobVariant{v.key, v.backend, *plan, v.cubin});
    };
    for (const auto& v : cf.sdpa) add(v);
    if (with_fault && cf.fault) add(*cf.fault);
    for (const auto& v : cf.candidates) add(v);

    set(d, [&](DeviceSlot& s) {
      s.point = point_key;
      s.variant.clear();
    });
    const JobOutcome outcome = d.supervisor->run(
        job,
        [&](const VariantResult& r) {
          if (r.status != cache::MeasurementStatus::ok)
            log(LogLevel::debug, device_name(d) + " " + family_key + " @ " + point_key + ": " + r.variant + " " +
                                     cache::to_string(r.status) + ": " + r.detail);
        },
        [&](const std::string& step) { set(d, [&](DeviceSlot& s) { s.variant = step; }); });
    out.restarts = outcome.restarts;
    out.interrupted = outcome.interrupted;
    out.worker_unavailable = outcome.worker_unavailable;

    // The baseline: the fastest sdpa setting that is ok and within the dtype's bound.
    std::vector<VariantResult> results = direct;
    results.insert(results.end(), outcome.results.begin(), outcome.results.end());
    const double bound = config.policy.abs_bound(pf.family.dtype);
    const VariantResult* baseline = nullptr;
    for (int pass = 0; pass < 2 && !baseline; ++pass)
      for (const auto& r : results)
        if (r.backend == "sdpa" && r.status == cache::MeasurementStatus::ok && r.median_us > 0 &&
            (pass == 1 || r.rel_l2 <= bound) && (!baseline || r.median_us < baseline->median_us))
          baseline = &r;

    std::vector<cache::Measurement> rows;
    for (const auto& r : results) {
      cache::Measurement m = r.to_measurement(run_id, family_key, point_key);
      if (r.backend == "sdpa" && r.status == cache::MeasurementStatus::ok && &r != baseline) {
        m.status = cache::MeasurementStatus::skipped;
        m.detail = "not the baseline: " + fmt("%.2f us", r.median_us) +
                   (baseline ? ", the fastest sdpa setting " + baseline->variant + " took " + fmt("%.2f us", baseline->median_us)
                             : std::string()) +
                   (m.detail.empty() ? "" : "; " + m.detail);
      }
      auto id = store->add_measurement(m);
      if (!id) {
        out.error = "cannot record a measurement: " + id.error().message;
        continue;
      }
      m.id = *id;
      ++out.measurements;
      rows.push_back(std::move(m));
    }
    if (outcome.interrupted || outcome.worker_unavailable) {
      if (outcome.worker_unavailable) out.error = outcome.failure;
      return out;
    }
    auto remember = [&] {
      std::lock_guard lock(g.attempted_mutex);
      g.attempted[{family_key, point_key}] = Clock::now();
    };
    if (!outcome.failure.empty()) {
      out.error = family_key + " @ " + point_key + " not measured: " + outcome.failure;
      remember();
      return out;
    }
    auto decision = decide_point(rows, g.cls, experimental, config.policy);
    if (!decision) {
      out.error = family_key + " @ " + point_key + ": no verdict: " + decision.error().message;
      remember();
      return out;
    }
    decision->verdict.created_at = 0;
    auto vid = store->put_verdict(decision->verdict);
    if (!vid) {
      out.error = family_key + " @ " + point_key + ": cannot store the verdict: " + vid.error().message;
      remember();
      return out;
    }
    out.verdict = true;
    out.sparse = decision->verdict.backend == "sparse";
    log(LogLevel::info, device_name(d) + " " + family_key + " @ " + point_key + ": " + decision->verdict.backend +
                            (experimental ? " (experimental)" : "") + ": " + decision->verdict.reason);
    if (on_verdicts && !experimental) {
      try {
        on_verdicts(store->epoch());
      } catch (...) {
        // The daemon's refresh failing must not stop tuning; it refreshes on its own tick too.
      }
    }
    return out;
  }

  // One pass over a plan -------------------------------------------------------------------------------------

  struct PassResult {
    std::size_t points = 0, verdicts = 0, sparse = 0, failures = 0;
    bool worker_unavailable = false;
    std::string error;
    std::string summary() const {
      return std::to_string(points) + " points measured, " + std::to_string(verdicts) + " verdicts (" +
             std::to_string(sparse) + " sparse), " + std::to_string(failures) + " points without a verdict";
    }
  };

  PassResult run_pass(Group& g, const TuningPlan& plan) {
    PassResult total;
    std::mutex total_mutex;
    {
      std::lock_guard lock(mutex);
      g.state = "tuning";
      g.pass_start = Clock::now();
      g.points_total = plan.point_count();
      g.points_done = 0;
      g.families_total = plan.families.size();
    }
    std::size_t by_trigger[4] = {0, 0, 0, 0};
    for (const auto& f : plan.families)
      by_trigger[f.trigger == "retune" ? 0 : f.trigger == "demand" ? 1 : f.trigger == "stale" ? 2 : 3]++;
    log(LogLevel::info, "tuning " + g.cls.arch + " " + g.cls.gpu_name + (plan.experimental ? " (experimental)" : "") +
                            " on " + std::to_string(g.devices.size()) + " device(s): " +
                            std::to_string(plan.families.size()) + " families (" + std::to_string(by_trigger[0]) +
                            " retune, " + std::to_string(by_trigger[1]) + " demand, " + std::to_string(by_trigger[2]) +
                            " stale, " + std::to_string(by_trigger[3]) + " startup), " +
                            std::to_string(plan.point_count()) + " points");

    // Compiles run ahead of the devices (see the file comment).
    std::mutex compile_mutex;
    std::vector<std::shared_future<std::shared_ptr<CompiledFamily>>> compiled(plan.families.size());
    auto launch_compile = [&](std::size_t i) {
      std::lock_guard lock(compile_mutex);
      if (i >= plan.families.size() || compiled[i].valid()) return;
      compiled[i] = std::async(std::launch::async, [this, &plan, &g, i] {
                      return compile_family(plan.families[i].family, g.cls.arch);
                    }).share();
    };
    auto compiled_at = [&](std::size_t i) {
      std::lock_guard lock(compile_mutex);
      return compiled[i];
    };

    std::atomic<std::size_t> next_family{0};
    std::atomic<bool> fault_sent{false};
    std::atomic<bool> unavailable{false};
    const std::string trigger = plan.families.front().trigger;

    auto device_work_body = [&](DeviceSlot& d) {
      std::int64_t run_id = 0;
      std::size_t points = 0, verdicts = 0, sparse = 0, failures = 0;
      int restarts = 0;
      std::string error;
      d.supervisor->clear_interrupt();
      if (stopping) d.supervisor->interrupt();
      for (;;) {
        if (stopping || unavailable) break;
        const std::size_t i = next_family.fetch_add(1);
        if (i >= plan.families.size()) break;
        const PlannedFamily& pf = plan.families[i];
        launch_compile(i);
        launch_compile(i + 1);
        set(d, [&](DeviceSlot& s) {
          s.state = "compiling";
          s.family = pf.family.key();
          s.family_index = i + 1;
          s.trigger = pf.trigger;
          s.point.clear();
          s.variant.clear();
        });
        const std::shared_ptr<CompiledFamily> cf = compiled_at(i).get();
        if (stopping) break;
        if (!cf->error.empty()) {
          error = pf.family.key() + ": " + cf->error;
          log(LogLevel::error, device_name(d) + ": " + error);
          failures += pf.points.size();
          std::lock_guard lock(mutex);
          g.points_done += pf.points.size();
          d.last_error = error;
          std::lock_guard attempted_lock(g.attempted_mutex);
          for (const auto& p : pf.points) g.attempted[{pf.family.key(), p.key()}] = Clock::now();
          continue;
        }
        if (run_id == 0) {
          cache::TuningRun run;
          run.device_class = g.cls;
          run.device_uuid = d.record.uuid;
          run.trigger = trigger;
          run.experimental = plan.experimental;
          auto id = store->begin_run(run);
          if (!id) {
            error = "cannot begin a tuning run: " + id.error().message;
            log(LogLevel::error, device_name(d) + ": " + error);
            set(d, [&](DeviceSlot& s) {
              s.last_error = error;
              s.state = "failed";
            });
            unavailable = true;
            break;
          }
          run_id = *id;
          set(d, [&](DeviceSlot& s) { s.run_id = run_id; });
        }
        set(d, [&](DeviceSlot& s) { s.state = "tuning"; });
        for (const auto& point : pf.points) {
          if (stopping || unavailable) break;
          const bool with_fault = config.test_fault != TestFault::none && !fault_sent.exchange(true);
          PointOutcome po = run_point(g, d, run_id, plan.experimental, pf, point, *cf, with_fault);
          restarts += po.restarts;
          if (po.interrupted) break;
          if (po.worker_unavailable) {
            error = po.error;
            unavailable = true;
            set(d, [&](DeviceSlot& s) {
              s.last_error = po.error;
              s.state = "failed";
              s.restarts += po.restarts;
              s.measurements += static_cast<std::int64_t>(po.measurements);
            });
            break;
          }
          ++points;
          if (po.verdict) ++verdicts;
          if (po.sparse) ++sparse;
          if (!po.verdict) ++failures;
          if (!po.error.empty()) {
            error = po.error;
            log(LogLevel::warn, device_name(d) + ": " + po.error);
          }
          std::lock_guard lock(mutex);
          ++g.points_done;
          d.verdicts += po.verdict ? 1 : 0;
          d.measurements += static_cast<std::int64_t>(po.measurements);
          d.restarts += po.restarts;
          if (!po.error.empty()) d.last_error = po.error;
        }
      }
      d.supervisor->shutdown();  // give the GPU back between passes
      if (run_id != 0) {
        const cache::RunStatus status = stopping ? cache::RunStatus::abandoned
                                        : unavailable ? cache::RunStatus::failed
                                                      : cache::RunStatus::finished;
        std::string note = std::to_string(points) + " points, " + std::to_string(verdicts) + " verdicts (" +
                           std::to_string(sparse) + " sparse), " + std::to_string(failures) + " without a verdict, " +
                           std::to_string(restarts) + " worker restarts";
        if (stopping) note = "nsa-tuned stopped during the run; " + note;
        else if (!error.empty()) note += "; last error: " + error;
        if (auto r = store->finish_run(run_id, status, note); !r)
          log(LogLevel::error, device_name(d) + ": cannot end run " + std::to_string(run_id) + ": " + r.error().message);
      }
      set(d, [&](DeviceSlot& s) {
        if (s.state != "failed") s.state = stopping ? "stopped" : "idle";
        s.variant.clear();
        s.point.clear();
      });
      std::lock_guard lock(total_mutex);
      total.points += points;
      total.verdicts += verdicts;
      total.sparse += sparse;
      total.failures += failures;
      if (!error.empty()) total.error = error;
    };

    auto device_work = [&](DeviceSlot& d) {
      try {
        device_work_body(d);
      } catch (const std::exception& e) {
        const std::string error = std::string("tuning stopped by an unexpected error: ") + e.what();
        log(LogLevel::error, device_name(d) + ": " + error);
        unavailable = true;
        d.supervisor->shutdown();
        set(d, [&](DeviceSlot& s) {
          s.state = "failed";
          s.last_error = error;
        });
      }
    };
    std::vector<std::jthread> threads;
    for (DeviceSlot* d : g.devices) threads.emplace_back([&, d] { device_work(*d); });
    threads.clear();
    // Compiles started ahead for families nobody took (stop, unavailable) finish here.
    for (std::size_t i = 0; i < compiled.size(); ++i)
      if (auto f = compiled_at(i); f.valid()) f.wait();
    total.worker_unavailable = unavailable;
    {
      std::lock_guard lock(mutex);
      g.state = unavailable ? "failed" : "idle";
    }
    log(LogLevel::info, "tuning pass on " + g.cls.arch + " " + g.cls.gpu_name + " ended: " + total.summary());
    return total;
  }

  // Requests --------------------------------------------------------------------------------------------

  /// Records that `g` carried out `ids` and completes the requests every named group has done.
  void settle(const Group& g, const std::vector<std::int64_t>& ids, const std::string& summary) {
    std::lock_guard lock(mutex);
    const std::string who = g.cls.arch + " " + g.cls.gpu_name;
    for (auto id : ids) {
      request_done_by[id].insert(&g);
      request_summaries[id].push_back(who + ": " + summary);
    }
    complete_settled_locked();
  }

  void complete_settled_locked() {
    std::vector<cache::RetuneRequest> pending;
    try {
      pending = store->pending_retunes();
    } catch (const cache::StoreFailure& e) {
      log(LogLevel::error, std::string("cannot read retune requests: ") + e.what());
      return;
    }
    for (const auto& r : pending) {
      std::size_t named = 0, done = 0;
      for (const auto& grp : groups)
        if (scope_names_arch(r.scope, grp->cls.arch)) {
          ++named;
          if (request_done_by[r.id].contains(grp.get())) ++done;
        }
      if (named > 0 && done < named) continue;
      std::string outcome;
      if (named == 0)
        outcome = groups.empty() ? "this host has no GPU: nothing to tune"
                                 : "no device of this host is named by '" + r.scope + "'";
      for (const auto& s : request_summaries[r.id]) outcome += (outcome.empty() ? "" : "; ") + s;
      if (auto ok = store->complete_retune(r.id, outcome); !ok)
        log(LogLevel::error, "cannot complete retune request " + std::to_string(r.id) + ": " + ok.error().message);
      else
        log(LogLevel::info, "retune request " + std::to_string(r.id) + " (" + r.scope + ") done: " + outcome);
      request_done_by.erase(r.id);
      request_summaries.erase(r.id);
    }
  }

  // The loop of one device class ---------------------------------------------------------------------------

  void group_loop(Group& g) {
    // Nothing may escape a tuning thread (it would end the daemon): a store that breaks under
    // us, a bad_alloc, a bug; each is logged, the device marked failed, and tried again later.
    while (!stopping) {
      try {
        group_iteration(g);
      } catch (const std::exception& e) {
        const std::string error = std::string("tuning stopped by an unexpected error: ") + e.what();
        log(LogLevel::error, g.cls.arch + " " + g.cls.gpu_name + ": " + error);
        {
          std::lock_guard lock(mutex);
          g.state = "failed";
          for (DeviceSlot* d : g.devices) {
            d->state = "failed";
            d->last_error = error;
          }
        }
        wait(std::chrono::duration_cast<std::chrono::milliseconds>(config.failure_backoff));
      }
    }
  }

  void group_iteration(Group& g) {
    {
      TuningPlan plan;
      bool pinned = false;
      try {
        PlanInputs in = plan_inputs_from(*store, g.cls, g.memory_bytes, config.plan);
        {
          std::lock_guard lock(g.attempted_mutex);
          const auto now = Clock::now();
          for (auto it = g.attempted.begin(); it != g.attempted.end();)
            it = now - it->second > config.retry_after ? g.attempted.erase(it) : std::next(it);
          for (const auto& [k, t] : g.attempted) in.recently_attempted.insert(k);
        }
        plan = build_plan(config.plan, in);
        pinned = in.pin.has_value() && !plan.experimental;
      } catch (const cache::StoreFailure& e) {
        const std::string error = std::string("cannot read the store to plan tuning: ") + e.what();
        log(LogLevel::error, error);
        {
          std::lock_guard lock(mutex);
          g.state = "failed";
          for (DeviceSlot* d : g.devices) d->last_error = error;
        }
        wait(std::chrono::duration_cast<std::chrono::milliseconds>(config.failure_backoff));
        return;
      }
      {
        std::lock_guard lock(mutex);
        g.notes = plan.notes;
        g.experimental = plan.experimental;
        if (plan.empty()) {
          g.state = pinned ? "pinned" : "idle";
          for (DeviceSlot* d : g.devices)
            if (d->state != "failed" || pinned) d->state = g.state;
        }
      }
      if (plan.empty()) {
        std::string summary = pinned ? plan.notes.front() : "nothing to tune: every planned point has a current verdict";
        if (!plan.retune_ids.empty()) settle(g, plan.retune_ids, summary);
        wait(config.idle_poll);
        return;
      }
      PassResult r = run_pass(g, plan);
      if (stopping) return;
      if (r.worker_unavailable) {
        // The requests stay pending: they are carried out once a worker runs again.
        wait(std::chrono::duration_cast<std::chrono::milliseconds>(config.failure_backoff));
        return;
      }
      settle(g, plan.retune_ids, r.summary());
    }
  }
};

// Public interface ------------------------------------------------------------------------------------------

TuningService::TuningService(std::filesystem::path store_path, std::vector<cache::DeviceRecord> devices,
                             TuningConfig config, LogSink log)
    : m(std::make_unique<Impl>()) {
  m->store_path = std::move(store_path);
  m->records = std::move(devices);
  m->config = std::move(config);
  m->log_sink = std::move(log);
}

TuningService::~TuningService() { stop(); }

void TuningService::on_verdicts(VerdictCallback callback) { m->on_verdicts = std::move(callback); }

std::expected<void, std::string> TuningService::start() {
  if (m->started) return {};
  if (auto e = m->config.validate()) return std::unexpected("tuning configuration: " + *e);
  auto store = cache::VerdictStore::open(m->store_path);
  if (!store) return std::unexpected("the tuner cannot open the store: " + store.error().message);
  m->store.emplace(std::move(*store));
  m->cubin_cache = std::make_unique<StoreCubinCache>(*m->store);
  m->pool = std::make_unique<jit::CompilePool>(m->config.compile_threads, m->cubin_cache.get());
  m->source_hash = jit::kernel_source_hash();
  m->stopping = false;
  {
    std::lock_guard lock(m->mutex);
    m->groups.clear();
    m->slots.clear();
  }

  // Runs a previous daemon left `running` on these devices can never end now.
  std::set<std::string> uuids;
  for (const auto& r : m->records) uuids.insert(r.uuid);
  try {
    for (const auto& run : m->store->runs(1000))
      if (run.status == cache::RunStatus::running && uuids.contains(run.device_uuid))
        (void)m->store->finish_run(run.id, cache::RunStatus::abandoned,
                                   "nsa-tuned stopped before this run ended (found at the next start)");
  } catch (const cache::StoreFailure& e) {
    return std::unexpected(std::string("the tuner cannot read the store: ") + e.what());
  }

  const std::filesystem::path worker = m->config.worker.empty() ? default_worker_path() : m->config.worker;
  for (const auto& rec : m->records) {
    auto slot = std::make_unique<DeviceSlot>();
    slot->record = rec;
    SupervisorConfig sc;
    sc.device = rec.ordinal;
    sc.command.executable = worker;
    sc.command.extra_args = m->config.worker_args;
    sc.command.env = m->config.worker_env;
    sc.start_timeout = m->config.start_timeout;
    sc.setup_timeout = m->config.setup_timeout;
    sc.step_timeout = m->config.step_timeout;
    slot->supervisor = std::make_unique<WorkerSupervisor>(sc, m->log_sink);
    const cache::DeviceClass cls = cache::class_of(rec, m->source_hash);
    auto it = std::find_if(m->groups.begin(), m->groups.end(), [&](const auto& g) { return g->cls == cls; });
    if (it == m->groups.end()) {
      m->groups.push_back(std::make_unique<Group>());
      m->groups.back()->cls = cls;
      m->groups.back()->memory_bytes = rec.memory_bytes;
      it = std::prev(m->groups.end());
    }
    (*it)->memory_bytes = std::min((*it)->memory_bytes, rec.memory_bytes);
    (*it)->devices.push_back(slot.get());
    m->slots.push_back(std::move(slot));
  }
  m->started = true;
  if (m->groups.empty()) {
    m->log(LogLevel::info, "tuning: no GPU on this host, nothing to tune");
    std::lock_guard lock(m->mutex);
    m->complete_settled_locked();
    return {};
  }
  for (auto& g : m->groups) g->thread = std::thread([this, grp = g.get()] { m->group_loop(*grp); });
  return {};
}

void TuningService::stop() {
  if (!m || !m->started) return;
  {
    std::lock_guard lock(m->mutex);
    m->stopping = true;
  }
  m->cv.notify_all();
  for (auto& s : m->slots) s->supervisor->interrupt();
  for (auto& g : m->groups)
    if (g->thread.joinable()) g->thread.join();
  // Devices stay listed (state "stopped") until a later start() builds them anew.
  std::lock_guard lock(m->mutex);
  for (auto& s : m->slots) s->state = "stopped";
  for (auto& g : m->groups) g->state = "stopped";
  m->started = false;
}

bool TuningService::running() const { return m->started && !m->stopping; }

std::expected<std::int64_t, std::string> TuningService::request(const std::string& scope, const std::string& requested_by) {
  if (auto e = validate_scope(scope)) return std::unexpected(*e);
  if (!m->store) return std::unexpected(std::string("the tuner is not running (nsa-tuned --no-tune, or it failed to start)"));
  auto id = m->store->request_retune(scope, requested_by);
  if (!id) return std::unexpected(id.error().message);
  {
    std::lock_guard lock(m->mutex);
    m->complete_settled_locked();  // a scope that names no device here is done at once
  }
  wake();
  return *id;
}

void TuningService::wake() {
  {
    std::lock_guard lock(m->mutex);
    ++m->wake_generation;
  }
  m->cv.notify_all();
}

json TuningService::status() const {
  std::lock_guard lock(m->mutex);
  json devices = json::array();
  bool tuning = false;
  const auto now = Clock::now();
  for (const auto& g : m->groups) {
    const double elapsed = g->state == "tuning" ? std::chrono::duration<double>(now - g->pass_start).count() : 0.0;
    json estimate = nullptr;
    if (g->state == "tuning" && g->points_done > 0 && g->points_total >= g->points_done)
      estimate = elapsed / static_cast<double>(g->points_done) * static_cast<double>(g->points_total - g->points_done);
    for (const DeviceSlot* d : g->devices) {
      tuning = tuning || d->state == "tuning" || d->state == "compiling";
      devices.push_back({{"device", d->record.ordinal},
                         {"uuid", d->record.uuid},
                         {"name", d->record.name},
                         {"arch", d->record.arch},
                         {"state", d->state},
                         {"experimental", g->experimental},
                         {"run_id", d->run_id},
                         {"trigger", d->trigger},
                         {"family", d->family},
                         {"family_index", d->family_index},
                         {"families", g->families_total},
                         {"point", d->point},
                         {"point_index", std::min(g->points_done + (d->point.empty() ? 0 : 1), g->points_total)},
                         {"points", g->points_total},
                         {"variant", d->variant},
                         {"elapsed_s", elapsed},
                         {"estimate_s", estimate},
                         {"verdicts", d->verdicts},
                         {"measurements", d->measurements},
                         {"worker_restarts", d->restarts},
                         {"last_error", d->last_error},
                         {"notes", g->notes}});
    }
  }
  json pending = json::array();
  if (m->store) {
    try {
      for (const auto& r : m->store->pending_retunes()) pending.push_back(r.id);
    } catch (const cache::StoreFailure&) {
      // status must answer even when the store is in trouble; the tuner logs the failure.
    }
  }
  return {{"state", !m->started ? "stopped" : tuning ? "tuning" : "idle"},
          {"devices", devices},
          {"pending_requests", pending},
          {"config", to_json(m->config)}};
}

}  // namespace nsa::tuner
