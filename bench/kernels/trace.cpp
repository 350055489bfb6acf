// nsa-kernel-trace: where a launch's time goes, CTA by CTA. Compiles a variant once more with
// NSA_TRACE (jit_kernels/kernels/trace.cuh: the design then stamps the SM's clock at the points it
// names and sums cycles over its loops' phases, into the buffer passed as SelectionParams::lse),
// launches it back to back on random inputs rotated past the L2 as nsa-bench-kernels does, and
// prints per point the first, median and last CTA's time after the launch's first CTA entered,
// and per sum its median over CTAs (per block where the design counts blocks); medians over the
// launches. Traced designs: decode_stream, prefill_stream and prefill_group. The traced launches'
// event time is printed beside the timeline: tracing costs a few instructions a point and a
// clock read a phase, more where it makes the kernel spill (docs/kernels.md, "Tracing a launch").
//
//   nsa-kernel-trace --shape b=16,tq=1,tkv=32768,hq=64,hkv=4,d=128,block=64,n=16 --runs 30
//       --variants tma1_split1_consumers4_producers1_stages5_share1
// With --compile-only it compiles the traced variants for --arch and prints ptxas's resources
// (no GPU needed; CI checks that the traced builds compile), --out DIR writing their cubins.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "nsa/jit/catalog.hpp"
#include "nsa/jit/device.hpp"
#include "nsa/jit/nvrtc.hpp"
#include "nsa/jit/runner.hpp"
#include "trace.cuh"

using namespace nsa;

namespace {

[[noreturn]] void die(const std::string& message, int code = 1) {
  std::fprintf(stderr, "nsa-kernel-trace: %s\n", message.c_str());
  std::exit(code);
}

#define NSA_TRACE_NAME(name) #name,
const std::vector<std::string> kDecodeStreamPoints = {NSA_DECODE_STREAM_TRACE(NSA_TRACE_NAME)};
const std::vector<std::string> kPrefillGroupPoints = {NSA_PREFILL_GROUP_TRACE(NSA_TRACE_NAME)};
const std::vector<std::string> kPrefillStreamPoints = {NSA_PREFILL_STREAM_TRACE(NSA_TRACE_NAME)};

/// The trace points of a design, or nullptr where the design is not traced.
const std::vector<std::string>* points_of(jit::Design d) {
  if (d == jit::Design::decode_stream) return &kDecodeStreamPoints;
  if (d == jit::Design::prefill_group) return &kPrefillGroupPoints;
  if (d == jit::Design::prefill_stream) return &kPrefillStreamPoints;
  return nullptr;
}

bool is_sum(const std::string& point) {
  return point == "blocks" || (point.size() > 4 && point.compare(point.size() - 4, 4, "_cyc") == 0);
}

double median_of(std::vector<double> v) { return v.empty() ? NAN : bench::summarize(v).median; }

/// The traced launches' rows (CTAs x NSA_TRACE_SLOTS) reduced per point, one value per launch:
/// for a stamp the first, median and last CTA's time (us) after the launch's earliest entry; for
/// a sum its median and mean over the CTAs that wrote it.
struct PointStats {
  std::vector<double> first, median, last, mean;  // one value per run
};

}  // namespace

int main(int argc, char** argv) {
  std::string shape_text, pattern_text = "random", variants_text;
  int runs = 20, warmup = 3;
  std::uint64_t seed = 0;
  std::string arch = "sm_90";
  bool compile_only = false;
  std::string out_dir;
  CLI::App app{"Traces where a selection kernel's launch spends its time (decode_stream, prefill_stream, prefill_group)."};
  app.add_option("--shape", shape_text, "an nsa-bench-kernels shape (key=value list, or 'decode' / 'prefill')")
      ->required();
  app.add_option("--pattern", pattern_text, "random or clustered (a shape's own pattern= wins)")
      ->check(CLI::IsMember({"random", "clustered"}));
  app.add_option("--variants", variants_text,
                 "comma-separated substrings of variant keys: every traced variant whose key contains one")
      ->required();
  app.add_option("--runs", runs, "traced launches")->check(CLI::Range(1, 10000));
  app.add_option("--warmup", warmup, "launches before the traced ones")->check(CLI::Range(0, 1000));
  app.add_option("--seed", seed, "input seed (0: from the clock)");
  app.add_flag("--compile-only", compile_only, "compile the traced variants for --arch and stop (no GPU needed)");
  app.add_option("--arch", arch, "target of --compile-only (default sm_90)");
  app.add_option("--out", out_dir, "with --compile-only: write each traced cubin to DIR/<key>.traced.cubin");
  CLI11_PARSE(app, argc, argv);

  auto spec = bench::parse_shape(shape_text);
  if (!spec) die("--shape " + shape_text + ": " + spec.error(), 2);
  const auto pattern = spec->pattern.value_or(*jit::parse_selection_pattern(pattern_text));
  std::vector<std::string> filters;
  {
    std::stringstream in(variants_text);
    std::string f;
    while (std::getline(in, f, ','))
      if (!f.empty()) filters.push_back(f);
  }
  if (seed == 0) seed = static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());

  const auto family = spec->family();
  if (auto why = jit::unsupported_reason(family)) die(spec->describe() + ": " + *why, 2);
  auto traced_variants = [&](const std::string& on) {
    std::vector<jit::KernelVariant> out;
    for (auto d : {jit::Design::decode_stream, jit::Design::prefill_stream, jit::Design::prefill_group})
      for (const auto& v : jit::variants_for(family, on, d))
        if (std::any_of(filters.begin(), filters.end(),
                        [&](const std::string& f) { return v.key().find(f) != std::string::npos; }))
          out.push_back(v);
    if (out.empty())
      die("no decode_stream, prefill_stream or prefill_group variant of " + family.key() + " on " + on + " matches --variants " +
              variants_text,
          2);
    return out;
  };
  auto compile_traced = [](const jit::KernelVariant& v) {
    auto cubin = jit::compile_to_cubin(v, "#define NSA_TRACE 1\n", "traced");
    if (!cubin) die(cubin.error().message(), 3);
    return std::move(*cubin);
  };
  if (compile_only) {
    for (const auto& v : traced_variants(arch)) {
      const auto cubin = compile_traced(v);
      std::printf("%s (traced): %d registers, %d bytes spilled\n", v.key().c_str(), cubin.registers, cubin.spill_bytes);
      if (!out_dir.empty()) {
        const std::string path = out_dir + "/" + v.key() + ".traced.cubin";
        std::ofstream f(path, std::ios::binary);
        f.write(reinterpret_cast<const char*>(cubin.image.data()), static_cast<std::streamsize>(cubin.image.size()));
        if (!f) die("could not write " + path, 3);
      }
    }
    return 0;
  }

  auto probe = jit::probe_devices();
  if (!probe.available()) die("no GPU to trace on: " + probe.problem + " (--compile-only needs none)", 3);
  const auto& dev = probe.devices[0];
  auto ctx = jit::Context::retain_primary(0);
  if (!ctx) die(ctx.error().message(), 3);
  auto stream = jit::Stream::create();
  if (!stream) die(stream.error().message(), 3);
  const auto variants = traced_variants(dev.arch);

  // Inputs: as nsa-bench-kernels, enough copies that one launch's data exceeds twice the L2.
  const auto& s = spec->shape;
  std::mt19937_64 rng(seed);
  const auto idx = jit::make_block_idx(s, pattern, rng);
  const auto work = bench::useful_work(s, idx);
  const double touched = work.kv_bytes + 2.0 * (s.q_elems() + s.o_elems()) + 4.0 * s.idx_elems();
  const double all_bytes = 2.0 * (s.q_elems() + s.k_elems() + s.v_elems() + s.o_elems()) + 4.0 * s.idx_elems();
  auto free_now = ctx->memory_info();
  if (!free_now) die(free_now.error().message(), 3);
  const int fit = static_cast<int>(0.7 * static_cast<double>(free_now->first) / all_bytes);
  if (fit < 1) die(spec->describe() + " does not fit in the GPU's free memory", 3);
  const int copies = std::clamp(static_cast<int>(std::ceil(2.0 * static_cast<double>(dev.l2_bytes) / touched)), 1, fit);
  std::vector<jit::DeviceProblem> problems;
  for (int c = 0; c < copies; ++c) {
    auto p = jit::DeviceProblem::allocate(s, spec->dtype);
    if (!p) die(p.error().message(), 3);
    std::uint64_t sd = seed + 1000003ull * static_cast<std::uint64_t>(c);
    for (auto* buf : {&p->q(), &p->k(), &p->v()})
      if (auto r = bench::fill_normal_on_device(buf->ptr(), buf->size() / 2, spec->dtype, sd++, dev.arch, *stream); !r)
        die("generating inputs: " + r.error().message(), 3);
    if (auto r = p->block_idx().upload(idx.data(), idx.size() * 4); !r) die(r.error().message(), 3);
    problems.push_back(std::move(*p));
  }
  std::printf("%s (%s, %d SMs), %s, pattern %s, %d input cop%s rotated, seed %llu\n", dev.name.c_str(),
              dev.arch.c_str(), dev.sm_count, spec->describe().c_str(), std::string(to_string(pattern)).c_str(), copies,
              copies == 1 ? "y" : "ies", static_cast<unsigned long long>(seed));

  for (const auto& v : variants) {
    const auto& points = *points_of(v.design);
    const auto cubin = compile_traced(v);
    auto lv = jit::LoadedVariant::load(v, cubin, {s.batch, s.t_q, s.t_kv, s.h_kv});
    if (!lv) die(lv.error().message(), 3);
    if (lv->plan().launches.size() != 1) die(bench::label_of(v) + ": a traced plan has one launch", 3);
    const auto& launch = lv->plan().launches[0];
    const std::size_t ctas = std::size_t{launch.grid[0]} * launch.grid[1] * launch.grid[2];
    // One zeroed buffer per timed launch (the sums add into it) and one for the warm-up ones, so
    // that the launches run back to back as nsa-bench-kernels times them.
    const std::vector<unsigned long long> zeros(ctas * NSA_TRACE_SLOTS, 0ull);
    std::vector<jit::DeviceBuffer> bufs;
    for (int i = 0; i <= runs; ++i) {
      auto b = jit::DeviceBuffer::allocate(zeros.size() * 8, "trace buffer");
      if (!b) die(b.error().message(), 3);
      if (auto r = b->upload(zeros.data(), zeros.size() * 8); !r) die(r.error().message(), 3);
      bufs.push_back(std::move(*b));
    }
    std::vector<jit::Event> starts, ends;
    for (int i = 0; i < runs; ++i) {
      auto a = jit::Event::create();
      auto b = jit::Event::create();
      if (!a || !b) die("cuEventCreate failed", 3);
      starts.push_back(std::move(*a));
      ends.push_back(std::move(*b));
    }
    for (int i = 0; i < warmup + runs; ++i) {
      const bool timed = i >= warmup;
      auto params = problems[static_cast<std::size_t>(i) % problems.size()].params(0, false);
      params.lse = bufs[timed ? static_cast<std::size_t>(i - warmup) : static_cast<std::size_t>(runs)].ptr();
      if ((timed && !starts[i - warmup].record(*stream)) || !lv->launch(params, *stream) ||
          (timed && !ends[i - warmup].record(*stream)))
        die(bench::label_of(v) + ": a traced launch failed", 4);
    }
    if (auto r = stream->synchronize(); !r) die(bench::label_of(v) + ": " + r.error().message(), 4);

    // Per CTA: its cycles become time at the clock rate its two global-time stamps give, and it
    // is placed on the launch's time line by its entry's global time.
    std::size_t exit_point = 0;
    for (std::size_t k = 0; k < points.size(); ++k)
      if (!is_sum(points[k])) exit_point = k;
    std::vector<PointStats> stats(points.size());
    std::vector<double> event_us, clock_ghz;
    std::vector<unsigned long long> rows(zeros.size());
    for (int i = 0; i < runs; ++i) {
      event_us.push_back(1e3 * jit::Event::elapsed_ms(starts[i], ends[i]).value_or(NAN));
      if (auto r = bufs[i].download(rows.data(), rows.size() * 8); !r) die(r.error().message(), 3);
      unsigned long long t0 = ~0ull;
      for (std::size_t c = 0; c < ctas; ++c)
        if (rows[c * NSA_TRACE_SLOTS + NSA_TRACE_GT_EXIT] != 0) t0 = std::min(t0, rows[c * NSA_TRACE_SLOTS + NSA_TRACE_GT_ENTRY]);
      std::vector<std::vector<double>> vals(points.size());
      std::vector<double> rates;
      for (std::size_t c = 0; c < ctas; ++c) {
        const unsigned long long* row = &rows[c * NSA_TRACE_SLOTS];
        const double ns = static_cast<double>(row[NSA_TRACE_GT_EXIT]) - static_cast<double>(row[NSA_TRACE_GT_ENTRY]);
        const double cycles = static_cast<double>(row[exit_point]) - static_cast<double>(row[0]);
        if (row[NSA_TRACE_GT_EXIT] == 0 || ns <= 0 || cycles <= 0) continue;  // a CTA that traced no item
        const double rate = cycles / ns;  // cycles per ns
        rates.push_back(rate);
        const double at = static_cast<double>(row[NSA_TRACE_GT_ENTRY] - t0);
        for (std::size_t k = 0; k < points.size(); ++k) {
          if (row[k] == 0) continue;
          vals[k].push_back(is_sum(points[k]) ? static_cast<double>(row[k])
                                              : 1e-3 * (at + (static_cast<double>(row[k]) - static_cast<double>(row[0])) / rate));
        }
      }
      clock_ghz.push_back(median_of(rates));
      for (std::size_t k = 0; k < points.size(); ++k) {
        auto& x = vals[k];
        if (x.empty()) continue;
        std::sort(x.begin(), x.end());
        double sum = 0;
        for (double y : x) sum += y;
        stats[k].first.push_back(x.front());
        stats[k].median.push_back(median_of(x));
        stats[k].last.push_back(x.back());
        stats[k].mean.push_back(sum / static_cast<double>(x.size()));
      }
    }

    std::printf("\n%s: %zu CTAs, traced launch %.1f us (event pairs, back to back, median of %d), SM clock %.2f GHz\n",
                bench::label_of(v).c_str(), ctas, median_of(event_us), runs, median_of(clock_ghz));
    std::printf("  %-16s %10s %10s %10s   (us after the launch's first CTA entered)\n", "point", "first", "median",
                "last");
    for (std::size_t k = 0; k < points.size(); ++k)
      if (!is_sum(points[k]) && !stats[k].median.empty())
        std::printf("  %-16s %10.2f %10.2f %10.2f\n", points[k].c_str(), median_of(stats[k].first),
                    median_of(stats[k].median), median_of(stats[k].last));
    const auto blocks_at = std::find(points.begin(), points.end(), "blocks");
    const double blocks = blocks_at == points.end() || stats[blocks_at - points.begin()].mean.empty()
                              ? NAN
                              : median_of(stats[blocks_at - points.begin()].mean);
    std::printf("  %-16s %10s %10s %10s   (per CTA that counted; cycles of one thread)\n", "sum", "median", "mean",
                "per block");
    for (std::size_t k = 0; k < points.size(); ++k)
      if (is_sum(points[k]) && !stats[k].median.empty())
        std::printf("  %-16s %10.0f %10.0f %10s\n", points[k].c_str(), median_of(stats[k].median),
                    median_of(stats[k].mean),
                    std::isnan(blocks) ? "-" : std::to_string(std::lround(median_of(stats[k].mean) / blocks)).c_str());
  }
  return 0;
}
