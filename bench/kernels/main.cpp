// nsa-bench-kernels: times every catalog variant and the packed-SDPA baseline on selection
// shapes, with CUDA events, and prints a table (and optionally JSON). docs/kernels.md ("JIT
// compilation and launch", "Benchmarking kernels") explains the columns.
//
// Method, per shape and selection pattern:
//   1. inputs are generated on the device (fresh normals per copy); block_idx from the pattern;
//   2. enough copies of all tensors are made that the data one run touches exceeds twice the L2
//      (read off the device), and runs rotate through them, so no run finds its inputs in L2;
//   3. every variant is first run once with poisoned outputs and compared with the device
//      reference (rel_l2), then warmed up, then timed run by run with an event pair around each
//      launch; the table shows the median and the 10-90 percentile spread;
//   4. bandwidth is the useful K/V bytes (bench_support.hpp: useful_work) over the median time,
//      also as a fraction of the measured device-to-device copy bandwidth (read + write);
//   5. the SDPA baseline's two kernels are also timed alone (baseline_parts): the gather on the
//      rotated inputs, and the dense attention re-reading one packed workspace run after run
//      (what PyTorch's SDPA on already-packed tensors is timed on, bench/torch_baselines.py);
//   6. the variant's launch floor ("launch us"): its plan with every kernel replaced by an empty
//      one of the same grid, block, shared memory, parameters and cluster width, timed the same
//      way (bench_support.hpp: measure_launch_floor_us): what no kernel launched so can beat.
// The L2 read ceiling (all SMs re-reading a buffer that fits in L2) is measured next to the copy
// ceiling. A variant whose workspace does not fit in free device memory is skipped with the
// reason (status "skipped"); the other variants still run.

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>

#include "bench_support.hpp"
#include "nsa/jit/catalog.hpp"
#include "nsa/jit/compiler.hpp"
#include "nsa/jit/device.hpp"
#include "nsa/jit/runner.hpp"

using namespace nsa;
using nlohmann::json;

namespace {

struct Options {
  std::vector<std::string> shapes;
  std::string pattern = "both";
  std::string designs;
  std::string exclude_designs;
  std::string variants;  // comma-separated substrings of variant keys: time only the matching ones
  bool defaults_only = false;
  bool baseline_defaults_only = false;
  bool with_reference = false;
  int runs = 50;
  int warmup = 5;
  int device = 0;
  unsigned threads = 0;
  std::uint64_t seed = 0;
  std::string json_path;
};

struct Row {
  std::string key, label;
  jit::Design design = jit::Design::reference;
  std::string status = "ok";  // ok, numerics_failed, compile_failed, launch_failed, skipped
  std::string error;
  // sdpa_packed only: its gather and attention kernels timed alone (median us; NAN: not timed).
  double gather_us = NAN, attention_us = NAN;
  std::string parts_error;
  double median_us = 0, p10_us = 0, p90_us = 0;
  // The launch floor of the variant's plan (bench::measure_launch_floor_us; NAN: not measured).
  double launch_us = NAN;
  std::string launch_error;
  double gbps = 0, bw_fraction = 0, tflops = 0;
  double rel_l2 = NAN;
  std::int64_t nan_count = 0;
  int registers = 0, spill_bytes = 0;
};

double o_bound(jit::ElemType t) { return t == jit::ElemType::bf16 ? 1.5e-2 : 4e-3; }

[[noreturn]] void die(const std::string& message, int code = 1) {
  std::fprintf(stderr, "nsa-bench-kernels: %s\n", message.c_str());
  std::exit(code);
}

std::vector<jit::Design> parse_designs(const std::string& text, bool with_reference, bool all_if_empty = true) {
  std::vector<jit::Design> out;
  if (text.empty() && all_if_empty) {
    for (auto d : jit::all_designs())
      if (d != jit::Design::reference || with_reference) out.push_back(d);
    return out;
  }
  std::stringstream in(text);
  std::string name;
  while (std::getline(in, name, ',')) {
    bool found = false;
    for (auto d : jit::all_designs())
      if (to_string(d) == name) out.push_back(d), found = true;
    if (!found) {
      std::string known;
      for (auto d : jit::all_designs()) known += " " + std::string(to_string(d));
      die("unknown design '" + name + "' (designs:" + known + ")", 2);
    }
  }
  return out;
}

bool unmeasured(const Row& r) {
  return r.status == "compile_failed" || r.status == "launch_failed" || r.status == "skipped";
}

void print_table(const bench::ShapeSpec& spec, jit::SelectionPattern pattern, const bench::UsefulWork& work,
                 int copies, double copy_gbps, std::vector<Row> rows) {
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    if ((a.status == "ok") != (b.status == "ok")) return a.status == "ok";
    if (unmeasured(a) != unmeasured(b)) return unmeasured(b);
    return a.median_us < b.median_us;
  });
  double baseline_us = 0;
  for (const auto& r : rows)
    if (r.design == jit::Design::sdpa_packed && r.status == "ok" && (baseline_us == 0 || r.median_us < baseline_us))
      baseline_us = r.median_us;
  std::printf("\n%s, pattern %s: %.1f MB useful K/V, %.2f GFLOP, %d input cop%s rotated, copy ceiling %.0f GB/s\n",
              spec.describe().c_str(), std::string(to_string(pattern)).c_str(), work.kv_bytes / 1e6, work.flops / 1e9,
              copies, copies == 1 ? "y" : "ies", copy_gbps);
  std::printf("%-44s %10s %9s %9s %9s %6s %8s %9s %8s %5s %s\n", "variant", "median us", "spread", "launch us",
              "GB/s", "of BW", "TFLOP/s", "rel_l2", "vs sdpa", "regs", "status");
  for (const auto& r : rows) {
    if (unmeasured(r)) {
      std::printf("%-44s %10s %9s %9s %9s %6s %8s %9s %8s %5s %s: %s\n", r.label.c_str(), "-", "-", "-", "-", "-", "-",
                  "-", "-", "-", r.status.c_str(), r.error.c_str());
      continue;
    }
    char launch[16] = "-";
    if (!std::isnan(r.launch_us)) std::snprintf(launch, sizeof launch, "%.1f", r.launch_us);
    char vs[16] = "-";
    if (baseline_us > 0) std::snprintf(vs, sizeof vs, "%.2fx", baseline_us / r.median_us);
    std::string note;
    if (r.design == jit::Design::sdpa_packed) {
      char parts[96] = "";
      if (!std::isnan(r.gather_us) && !std::isnan(r.attention_us))
        std::snprintf(parts, sizeof parts, ": gather %.1f + attention %.1f us alone", r.gather_us, r.attention_us);
      note = std::string(" (baseline") + parts + (r.parts_error.empty() ? "" : "; parts not timed: " + r.parts_error) + ")";
    }
    if (!r.launch_error.empty()) note += " (launch floor not timed: " + r.launch_error + ")";
    std::printf("%-44s %10.1f %9.1f %9s %9.0f %5.0f%% %8.1f %9.2e %8s %5d %s%s\n", r.label.c_str(), r.median_us,
                r.p90_us - r.p10_us, launch, r.gbps, 100 * r.bw_fraction, r.tflops, r.rel_l2, vs, r.registers,
                r.status.c_str(), note.c_str());
  }
}

/// Poisons O, LSE and the workspace, launches `lv` on `problem`, waits, and returns O's dtype bits.
jit::DriverResult<std::vector<std::uint16_t>> checked_run(jit::LoadedVariant& lv, jit::DeviceProblem& problem,
                                                         const jit::Stream& stream) {
  if (auto r = problem.poison_outputs(); !r) return std::unexpected(r.error());
  if (auto r = lv.poison_workspace(); !r) return std::unexpected(r.error());
  if (auto r = lv.launch(problem, stream); !r) return std::unexpected(r.error());
  if (auto r = stream.synchronize(); !r) {
    auto e = r.error();
    e.variant = lv.variant().key();  // an asynchronous kernel fault surfaces here
    return std::unexpected(e);
  }
  std::vector<std::uint16_t> bits(static_cast<std::size_t>(problem.shape().o_elems()));
  if (auto r = problem.o().download(bits.data(), bits.size() * 2); !r) return std::unexpected(r.error());
  return bits;
}

/// Why `v`'s workspace cannot be allocated for `shape` (more than the free device memory, from
/// cuMemGetInfo, less a margin), or nullopt. A plan the catalog refuses is left to load() to report.
std::optional<std::string> workspace_does_not_fit(const jit::KernelVariant& v, const jit::RuntimeShape& shape,
                                                  const jit::Context& ctx) {
  std::uint64_t bytes = 0;
  try {
    bytes = jit::plan_for(v, shape).workspace_bytes;
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (bytes == 0) return std::nullopt;
  auto mem = ctx.memory_info();
  if (!mem) return std::nullopt;
  constexpr std::uint64_t kMargin = std::uint64_t{256} << 20;
  if (bytes + kMargin <= mem->first) return std::nullopt;
  char why[160];
  std::snprintf(why, sizeof why, "workspace of %.1f GB does not fit in the %.1f GB of free device memory (cuMemGetInfo)",
                static_cast<double>(bytes) / 1e9, static_cast<double>(mem->first) / 1e9);
  return std::string(why);
}

/// Times the two kernels of an sdpa_packed plan alone: the gather on the rotated inputs; the
/// attention on one packed workspace (written once by a gather, then re-read by every run, as
/// PyTorch's SDPA on already-packed tensors is timed). Leaves parts_error set when it cannot.
template <class TimeRuns>
void time_baseline_parts(Row& row, const jit::LoadedVariant& lv, const std::vector<SelectionParams>& params,
                         const jit::Stream& stream, TimeRuns& time_runs) {
  const auto& launches = lv.plan().launches;
  if (launches.size() != 2) {
    row.parts_error = "the plan has " + std::to_string(launches.size()) + " launches, not gather + attention";
    return;
  }
  const bool gather_first = launches[0].entry.find("gather") != std::string::npos;
  const std::size_t gather = gather_first ? 0 : 1, attention = 1 - gather;
  std::string error;
  const auto g = time_runs([&](std::size_t c) { return lv.launch_one(gather, params[c], stream).has_value(); }, error);
  if (!g) {
    row.parts_error = "gather alone: " + error;
    return;
  }
  if (auto r = lv.launch_one(gather, params[0], stream); !r) {
    row.parts_error = "gather: " + r.error().message();
    return;
  }
  const auto a = time_runs([&](std::size_t c) { return lv.launch_one(attention, params[c], stream).has_value(); }, error);
  if (!a) {
    row.parts_error = "attention alone: " + error;
    return;
  }
  row.gather_us = g->median;
  row.attention_us = a->median;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{"Times every selection-attention kernel variant and the packed-SDPA baseline on the local GPU."};
  app.add_option("--shape", opt.shapes,
                 "'decode', 'prefill', or key=value list: b,tq,tkv,hq,hkv,h,d,dqk,dv,block,n,dtype,pattern (repeatable; "
                 "default: decode and prefill)");
  app.add_option("--pattern", opt.pattern, "random, clustered or both")->check(CLI::IsMember({"random", "clustered", "both"}));
  app.add_option("--designs", opt.designs, "comma-separated designs to time (default: the baseline and every sparse design)");
  app.add_option("--exclude-designs", opt.exclude_designs, "comma-separated designs not to time");
  app.add_option("--variants", opt.variants,
                 "comma-separated substrings of variant keys (like 'tma1_warps12,split1_'): time only the variants "
                 "whose key contains one of them (the SDPA baseline and the reference are not filtered)");
  app.add_flag("--defaults-only", opt.defaults_only, "time only each design's default knobs");
  app.add_flag("--baseline-defaults-only", opt.baseline_defaults_only,
               "time only the default knobs of the sdpa_packed baseline (every setting of the others)");
  app.add_flag("--with-reference", opt.with_reference, "time the fp32 reference design too");
  app.add_option("--runs", opt.runs, "timed runs per variant")->check(CLI::Range(3, 100000));
  app.add_option("--warmup", opt.warmup, "untimed runs before timing")->check(CLI::Range(0, 10000));
  app.add_option("--device", opt.device, "device ordinal")->check(CLI::NonNegativeNumber);
  app.add_option("--threads", opt.threads, "compile threads (0: all cores)");
  app.add_option("--seed", opt.seed, "input seed (0: from the clock)");
  app.add_option("--json", opt.json_path, "also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);

  if (opt.shapes.empty()) opt.shapes = {"decode", "prefill"};
  std::vector<bench::ShapeSpec> specs;
  for (const auto& text : opt.shapes) {
    auto spec = bench::parse_shape(text);
    if (!spec) die("--shape " + text + ": " + spec.error(), 2);
    specs.push_back(*spec);
  }
  std::vector<jit::SelectionPattern> patterns;
  if (opt.pattern != "clustered") patterns.push_back(jit::SelectionPattern::random);
  if (opt.pattern != "random") patterns.push_back(jit::SelectionPattern::clustered);
  auto designs = parse_designs(opt.designs, opt.with_reference);
  std::vector<std::string> filters;
  {
    std::stringstream in(opt.variants);
    std::string f;
    while (std::getline(in, f, ','))
      if (!f.empty()) filters.push_back(f);
  }
  for (auto excluded : parse_designs(opt.exclude_designs, true, false))
    std::erase(designs, excluded);
  if (opt.seed == 0) opt.seed = static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());

  auto probe = jit::probe_devices();
  if (!probe.available()) die("no GPU to benchmark: " + probe.problem, 3);
  if (opt.device >= static_cast<int>(probe.devices.size()))
    die("--device " + std::to_string(opt.device) + ": this host has " + std::to_string(probe.devices.size()) + " GPU(s)", 2);
  const auto& dev = probe.devices[static_cast<std::size_t>(opt.device)];
  auto ctx = jit::Context::retain_primary(opt.device);
  if (!ctx) die(ctx.error().message(), 3);
  auto stream = jit::Stream::create();
  if (!stream) die(stream.error().message(), 3);

  auto mem = ctx->memory_info();
  if (!mem) die(mem.error().message(), 3);
  const std::size_t copy_bytes = std::min<std::size_t>(std::size_t{1} << 30, mem->first / 4) & ~std::size_t{255};
  auto bw = bench::measure_copy_bandwidth(copy_bytes, *stream);
  if (!bw) die("measuring bandwidth: " + bw.error().message(), 3);
  const double copy_gbps = *bw / 1e9;
  std::printf("%s (%s, %d SMs, %.0f MB L2, %.1f GB), driver %d, NVRTC %s, seed %llu\n", dev.name.c_str(),
              dev.arch.c_str(), dev.sm_count, dev.l2_bytes / 1e6, dev.memory_bytes / 1e9, probe.driver_version,
              jit::nvrtc_version().c_str(), static_cast<unsigned long long>(opt.seed));
  // L2: a third of the reported L2 (at most 16 MiB): H100's L2 is two partitions, and data read
  // by every SM may be held in both.
  const std::size_t l2_read_bytes =
      std::clamp<std::size_t>(static_cast<std::size_t>(dev.l2_bytes) / 3, std::size_t{1} << 20, std::size_t{16} << 20) &
      ~std::size_t{(1 << 16) - 1};
  auto l2 = bench::measure_l2_read_bandwidth(l2_read_bytes, dev.arch, dev.sm_count, *stream);
  if (!l2) die("measuring L2 bandwidth: " + l2.error().message(), 3);
  const double l2_read_gbps = *l2 / 1e9;
  std::printf("measured ceilings: device-to-device copy of %.0f MB at %.0f GB/s (read + write); "
              "L2 read of a %.1f MiB buffer by all SMs at %.0f GB/s\n",
              copy_bytes / 1e6, copy_gbps, l2_read_bytes / 1048576.0, l2_read_gbps);

  json out = {{"device",
               {{"name", dev.name},
                {"arch", dev.arch},
                {"sm_count", dev.sm_count},
                {"l2_bytes", dev.l2_bytes},
                {"memory_bytes", dev.memory_bytes},
                {"driver_version", probe.driver_version},
                {"nvrtc_version", jit::nvrtc_version()}}},
              {"ceilings",
               {{"copy_gbps", copy_gbps},
                {"copy_bytes", copy_bytes},
                {"l2_read_gbps", l2_read_gbps},
                {"l2_read_bytes", l2_read_bytes}}},
              {"seed", opt.seed},
              {"runs", opt.runs},
              {"warmup", opt.warmup},
              {"results", json::array()}};
  auto write_json = [&] {
    if (opt.json_path.empty()) return;
    std::ofstream f(opt.json_path);
    f << out.dump(2) << "\n";
    if (!f) std::fprintf(stderr, "nsa-bench-kernels: could not write %s\n", opt.json_path.c_str());
  };

  jit::MemoryCubinCache cache;
  jit::CompilePool pool(opt.threads, &cache);

  for (const auto& spec : specs) {
    const auto family = spec.family();
    if (auto why = jit::unsupported_reason(family)) die(spec.describe() + ": " + *why, 2);
    std::vector<jit::KernelVariant> variants;
    for (auto d : designs) {
      auto offered = jit::variants_for(family, dev.arch, d);
      if (offered.empty()) continue;
      if (opt.defaults_only || (opt.baseline_defaults_only && d == jit::Design::sdpa_packed)) offered.resize(1);
      if (!filters.empty() && jit::is_sparse(d))
        std::erase_if(offered, [&](const jit::KernelVariant& v) {
          return std::none_of(filters.begin(), filters.end(),
                              [&](const std::string& f) { return v.key().find(f) != std::string::npos; });
        });
      variants.insert(variants.end(), offered.begin(), offered.end());
    }
    const auto reference_variant = jit::default_variant(jit::Design::reference, family, dev.arch);
    auto to_compile = variants;
    to_compile.push_back(reference_variant);
    const auto outcomes = pool.compile_all(to_compile, [&](const jit::CompileProgress& p) {
      std::fprintf(stderr, "\rcompiling %s: %zu/%zu (%zu failed)", family.key().c_str(), p.done, p.total, p.failed);
      if (p.done == p.total) std::fprintf(stderr, "\n");
    });
    const auto& reference_outcome = outcomes.back();

    const auto shape_patterns = spec.pattern ? std::vector<jit::SelectionPattern>{*spec.pattern} : patterns;
    for (auto pattern : shape_patterns) {
      std::mt19937_64 rng(opt.seed ^ std::hash<std::string>{}(spec.name + std::string(to_string(pattern))));
      const auto& s = spec.shape;
      const auto idx = jit::make_block_idx(s, pattern, rng);
      const auto work = bench::useful_work(s, idx);
      const double touched = work.kv_bytes + 2.0 * (s.q_elems() + s.o_elems()) + 4.0 * (s.idx_elems() + s.lse_elems());
      const double all_bytes = 2.0 * (s.q_elems() + s.k_elems() + s.v_elems() + s.o_elems()) +
                               4.0 * (s.idx_elems() + s.lse_elems());
      auto free_now = ctx->memory_info();
      if (!free_now) die(free_now.error().message(), 3);
      const int fit = static_cast<int>(0.7 * static_cast<double>(free_now->first) / all_bytes);
      if (fit < 1) die(spec.describe() + " needs " + std::to_string(all_bytes / 1e9) + " GB per copy; the GPU has " +
                       std::to_string(free_now->first / 1e9) + " GB free", 3);
      const int copies = std::clamp(static_cast<int>(std::ceil(2.0 * static_cast<double>(dev.l2_bytes) / touched)), 1, fit);

      std::vector<jit::DeviceProblem> problems;
      for (int c = 0; c < copies; ++c) {
        auto p = jit::DeviceProblem::allocate(s, spec.dtype);
        if (!p) die(p.error().message(), 3);
        std::uint64_t seed = opt.seed + 1000003ull * static_cast<std::uint64_t>(c);
        for (auto* buf : {&p->q(), &p->k(), &p->v()})
          if (auto r = bench::fill_normal_on_device(buf->ptr(), buf->size() / 2, spec.dtype, seed++, dev.arch, *stream); !r)
            die("generating inputs: " + r.error().message(), 3);
        if (auto r = p->block_idx().upload(idx.data(), idx.size() * 4); !r) die(r.error().message(), 3);
        problems.push_back(std::move(*p));
      }
      if (auto r = stream->synchronize(); !r) die(r.error().message(), 3);

      std::optional<jit::LoadedVariant::Result> reference;
      std::string reference_problem;
      if (!reference_outcome.result) {
        reference_problem = reference_outcome.result.error().message();
      } else if (auto lv = jit::LoadedVariant::load(reference_variant, *reference_outcome.result, {s.batch, s.t_q, s.t_kv, s.h_kv}); !lv) {
        reference_problem = lv.error().message();
      } else if (auto r = lv->run_checked(problems[0], *stream); !r) {
        if (r.error().sticky) die(r.error().message(), 4);
        reference_problem = r.error().message();
      } else {
        reference = std::move(*r);
      }
      if (!reference) std::fprintf(stderr, "no reference (rel_l2 not reported): %s\n", reference_problem.c_str());
      std::vector<double> ref_o;
      if (reference) ref_o.assign(reference->o.begin(), reference->o.end());

      std::vector<Row> rows;
      for (std::size_t vi = 0; vi < variants.size(); ++vi) {
        const auto& v = variants[vi];
        const auto& compiled = outcomes[vi];
        Row row;
        row.key = v.key();
        row.label = bench::label_of(v);
        row.design = v.design;
        if (!compiled.result) {
          row.status = "compile_failed";
          row.error = compiled.result.error().message();
          rows.push_back(row);
          continue;
        }
        row.registers = compiled.result->registers;
        row.spill_bytes = compiled.result->spill_bytes;
        if (auto why = workspace_does_not_fit(v, {s.batch, s.t_q, s.t_kv, s.h_kv}, *ctx)) {
          row.status = "skipped";
          row.error = *why;
          std::fprintf(stderr, "skipping %s: %s\n", row.label.c_str(), why->c_str());
          rows.push_back(row);
          continue;
        }
        auto lv = jit::LoadedVariant::load(v, *compiled.result, {s.batch, s.t_q, s.t_kv, s.h_kv});
        if (!lv) {
          const bool oom = lv.error().result == CUDA_ERROR_OUT_OF_MEMORY;
          row.status = oom ? "skipped" : "launch_failed";
          row.error = (oom ? "out of device memory: " : "") + lv.error().message();
          rows.push_back(row);
          continue;
        }
        // The driver's count of the loaded kernels. The count parsed from NVRTC's log was 0 for
        // many variants on the H200 host (sixteen compile threads); that did not reproduce on a
        // 2-core machine with sixteen threads, and its cause is not known.
        if (lv->registers() > 0) row.registers = lv->registers();
        // The checked run (as LoadedVariant::run_checked: outputs and workspace poisoned first), O
        // compared with the reference on every core.
        auto checked = checked_run(*lv, problems[0], *stream);
        if (!checked) {
          if (checked.error().sticky) {
            out["results"].push_back({{"shape", spec.describe()}, {"fatal", checked.error().message()}});
            write_json();
            die(checked.error().message(), 4);
          }
          row.status = "launch_failed";
          row.error = checked.error().message();
          rows.push_back(row);
          continue;
        }
        if (reference) {
          const auto st = bench::compare_bits(*checked, spec.dtype, ref_o);
          row.rel_l2 = st.rel_l2;
          row.nan_count = st.nan_count;
          if (st.nan_count > 0 || st.rel_l2 > o_bound(spec.dtype)) row.status = "numerics_failed";
        }

        std::vector<SelectionParams> params;
        for (const auto& p : problems) params.push_back(p.params(0));
        // Times opt.runs launches after opt.warmup, launch i on input copy i % copies.
        auto time_runs = [&](auto&& launch_copy, std::string& error) -> std::optional<bench::Summary> {
          std::vector<jit::Event> starts, ends;
          for (int i = 0; i < opt.runs; ++i) {
            auto a = jit::Event::create();
            auto b = jit::Event::create();
            if (!a || !b) die("cuEventCreate failed", 3);
            starts.push_back(std::move(*a));
            ends.push_back(std::move(*b));
          }
          bool failed = false;
          for (int w = 0; w < opt.warmup && !failed; ++w)
            failed = !launch_copy(static_cast<std::size_t>(w % copies));
          for (int i = 0; i < opt.runs && !failed; ++i) {
            const auto c = static_cast<std::size_t>((opt.warmup + i) % copies);
            failed = !starts[i].record(*stream) || !launch_copy(c) || !ends[i].record(*stream);
          }
          auto synced = stream->synchronize();
          if (failed || !synced) {
            if (!synced && synced.error().sticky) die(synced.error().message(), 4);
            error = synced ? "a timed launch failed" : synced.error().message();
            return std::nullopt;
          }
          std::vector<double> us;
          for (int i = 0; i < opt.runs; ++i) us.push_back(1e3 * jit::Event::elapsed_ms(starts[i], ends[i]).value_or(NAN));
          return bench::summarize(us);
        };
        std::string timing_error;
        const auto timed = time_runs([&](std::size_t c) { return lv->launch(params[c], *stream).has_value(); }, timing_error);
        if (!timed) {
          row.status = "launch_failed";
          row.error = timing_error;
          rows.push_back(row);
          continue;
        }
        const auto& sum = *timed;
        row.median_us = sum.median;
        row.p10_us = sum.p10;
        row.p90_us = sum.p90;
        row.gbps = work.kv_bytes / (sum.median * 1e-6) / 1e9;
        row.bw_fraction = row.gbps / copy_gbps;
        row.tflops = work.flops / (sum.median * 1e-6) / 1e12;
        if (v.design == jit::Design::sdpa_packed) time_baseline_parts(row, *lv, params, *stream, time_runs);
        // The same plan of empty kernels, timed the same way: the part of the median that is
        // the launch as this timing sees it (a stand-alone empty kernel of decode B=16's launch
        // shape took 3.7 us on the H200: docs/performance.md v14).
        std::vector<int> clusters;
        for (std::size_t i = 0; i < lv->plan().launches.size(); ++i) clusters.push_back(lv->cluster_width(i));
        if (auto floor = bench::measure_launch_floor_us(lv->plan(), clusters, params[0], dev.arch, *stream, opt.runs,
                                                        opt.warmup)) {
          row.launch_us = *floor;
        } else {
          if (floor.error().sticky) die(floor.error().message(), 4);
          row.launch_error = floor.error().message();
        }
        rows.push_back(row);
      }

      print_table(spec, pattern, work, copies, copy_gbps, rows);
      json jrows = json::array();
      for (const auto& r : rows)
        jrows.push_back({{"variant", r.key},
                         {"design", to_string(r.design)},
                         {"status", r.status},
                         {"error", r.error},
                         {"median_us", r.median_us},
                         {"p10_us", r.p10_us},
                         {"p90_us", r.p90_us},
                         {"gbps", r.gbps},
                         {"bw_fraction", r.bw_fraction},
                         {"tflops", r.tflops},
                         {"launch_floor_us", std::isnan(r.launch_us) ? json(nullptr) : json(r.launch_us)},
                         {"rel_l2", std::isnan(r.rel_l2) ? json(nullptr) : json(r.rel_l2)},
                         {"nan_count", r.nan_count},
                         {"registers", r.registers},
                         {"spill_bytes", r.spill_bytes}});
      for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto& r = rows[i];
        if (r.design != jit::Design::sdpa_packed || unmeasured(r)) continue;
        if (r.parts_error.empty())
          jrows[i]["baseline_parts"] = {{"gather_us", r.gather_us}, {"attention_us", r.attention_us}};
        else
          jrows[i]["baseline_parts"] = {{"error", r.parts_error}};
      }
      out["results"].push_back({{"shape", spec.describe()},
                                {"name", spec.name},
                                {"family", family.key()},
                                {"dtype", spec.dtype == jit::ElemType::bf16 ? "bf16" : "fp16"},
                                {"d_qk", s.d_qk},
                                {"d_v", s.d_v},
                                {"h", s.h},
                                {"h_q", s.h_q()},
                                {"block", s.block},
                                {"n", s.n},
                                {"batch", s.batch},
                                {"t_q", s.t_q},
                                {"t_kv", s.t_kv},
                                {"h_kv", s.h_kv},
                                {"pattern", to_string(pattern)},
                                {"useful_kv_bytes", work.kv_bytes},
                                {"useful_flops", work.flops},
                                {"min_bytes", touched},
                                {"visible_keys", work.visible_keys},
                                {"copies", copies},
                                {"reference", reference ? "device reference" : reference_problem},
                                {"variants", jrows}});
      write_json();
    }
  }
  return 0;
}
