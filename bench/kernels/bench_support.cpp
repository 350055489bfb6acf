// See bench_support.hpp.

#include "bench_support.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "nsa/jit/nvrtc.hpp"

namespace nsa::bench {

jit::FamilySpec ShapeSpec::family() const {
  return jit::FamilySpec{dtype, shape.d_qk, shape.d_v, shape.h, shape.block, shape.n};
}

std::string ShapeSpec::describe() const {
  std::ostringstream s;
  s << name << ": B=" << shape.batch << " T_q=" << shape.t_q << " T_kv=" << shape.t_kv << " H_q=" << shape.h_q()
    << " H_kv=" << shape.h_kv << " D_qk=" << shape.d_qk << " D_v=" << shape.d_v << " block=" << shape.block
    << " n=" << shape.n << " " << (dtype == jit::ElemType::bf16 ? "bf16" : "fp16");
  return s.str();
}

ShapeSpec default_decode() {
  ShapeSpec s;
  s.name = "decode";
  s.shape.batch = 64;
  s.shape.t_q = 1;
  s.shape.t_kv = 32768;
  s.shape.h_kv = 4;
  s.shape.h = 16;
  s.shape.d_qk = s.shape.d_v = 128;
  s.shape.block = 64;
  s.shape.n = 16;
  return s;
}

ShapeSpec default_prefill() {
  ShapeSpec s = default_decode();
  s.name = "prefill";
  s.shape.batch = 1;  // the packed baseline's workspace is T_q * H_kv * n * block * (D_qk + D_v) * 2 bytes: 17 GB here
  s.shape.t_q = s.shape.t_kv = 8192;
  return s;
}

std::expected<ShapeSpec, std::string> parse_shape(const std::string& text) {
  if (text == "decode") return default_decode();
  if (text == "prefill") return default_prefill();
  ShapeSpec s = default_decode();
  s.name = text;
  std::int64_t hq = -1;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto eq = item.find('=');
    if (eq == std::string::npos)
      return std::unexpected("shape item '" + item + "' is not key=value (keys: b tq tkv hq hkv h d dqk dv block n dtype pattern)");
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (key == "pattern") {
      auto pattern = jit::parse_selection_pattern(value);
      if (!pattern) return std::unexpected("pattern must be random or clustered, not '" + value + "'");
      s.pattern = *pattern;
      continue;
    }
    if (key == "dtype") {
      if (value == "bf16") s.dtype = jit::ElemType::bf16;
      else if (value == "fp16") s.dtype = jit::ElemType::fp16;
      else return std::unexpected("dtype must be bf16 or fp16, not '" + value + "'");
      continue;
    }
    std::int64_t v = 0;
    try {
      std::size_t used = 0;
      v = std::stoll(value, &used);
      if (used != value.size()) throw std::invalid_argument(value);
    } catch (const std::exception&) {
      return std::unexpected("shape item '" + item + "': '" + value + "' is not an integer");
    }
    if (v < 1) return std::unexpected("shape item '" + item + "': values must be >= 1");
    if (key == "b") s.shape.batch = v;
    else if (key == "tq") s.shape.t_q = v;
    else if (key == "tkv") s.shape.t_kv = v;
    else if (key == "hq") hq = v;
    else if (key == "hkv") s.shape.h_kv = v;
    else if (key == "h") s.shape.h = static_cast<int>(v);
    else if (key == "d") s.shape.d_qk = s.shape.d_v = static_cast<int>(v);
    else if (key == "dqk") s.shape.d_qk = static_cast<int>(v);
    else if (key == "dv") s.shape.d_v = static_cast<int>(v);
    else if (key == "block") s.shape.block = static_cast<int>(v);
    else if (key == "n") s.shape.n = static_cast<int>(v);
    else return std::unexpected("unknown shape key '" + key + "' (keys: b tq tkv hq hkv h d dqk dv block n dtype pattern)");
  }
  if (hq > 0) {
    if (hq % s.shape.h_kv != 0)
      return std::unexpected("H_q=" + std::to_string(hq) + " is not a multiple of H_kv=" + std::to_string(s.shape.h_kv));
    s.shape.h = static_cast<int>(hq / s.shape.h_kv);
  }
  if (auto bad = s.shape.validate()) return std::unexpected(*bad);
  return s;
}

UsefulWork useful_work(const jit::SelectionShape& s, std::span<const std::int32_t> idx) {
  UsefulWork w;
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t g = 0; g < s.h_kv; ++g)
      for (std::int64_t t = 0; t < s.t_q; ++t) {
        const std::int64_t p = s.position(t);
        const std::int32_t* row = idx.data() + ((b * s.h_kv + g) * s.t_q + t) * s.n;
        for (int slot = 0; slot < s.n; ++slot) {
          if (row[slot] < 0) continue;
          const std::int64_t first = std::int64_t{row[slot]} * s.block;
          const std::int64_t end = std::min<std::int64_t>({first + s.block, s.t_kv, p + 1});
          if (end > first) w.visible_keys += end - first;
        }
      }
  const double keys = static_cast<double>(w.visible_keys);
  w.kv_bytes = keys * (s.d_qk + s.d_v) * 2.0;
  w.flops = 2.0 * s.h * keys * (s.d_qk + s.d_v);
  return w;
}

namespace {

// A counter-based generator (splitmix64 of seed and index) and Box-Muller, converted with the
// hardware's round-to-nearest instructions. Needs no header: it is compiled with NVRTC like the
// kernels, on any host the benchmark runs on.
constexpr const char* kFillSource = R"(
typedef unsigned long long u64;
__device__ u64 splitmix(u64 x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
extern "C" __global__ void bench_fill_normal(unsigned short* out, u64 count, u64 seed, int bf16) {
  for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < count; i += (u64)gridDim.x * blockDim.x) {
    const u64 a = splitmix(seed ^ (i * 2 + 1)), b = splitmix(a);
    const float u1 = ((a >> 40) + 1) * (1.0f / 16777217.0f);   // (0, 1]
    const float u2 = (b >> 40) * (1.0f / 16777216.0f);         // [0, 1)
    const float z = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    unsigned short h;
    if (bf16) asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(z));
    else asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(z));
    out[i] = h;
  }
}
)";

// Reads the buffer `passes` times from every thread of the grid (grid-stride, four predicated
// 16-byte loads issued before any is used, so each warp keeps four in flight), bypassing L1
// (.cg), and folds what it read into a value stored only if it matches an impossible pattern, so
// no load can be optimised away.
constexpr const char* kL2ReadSource = R"(
typedef unsigned long long u64;
__device__ __forceinline__ uint4 load_cg(const uint4* p) {
  uint4 v;
  asm("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
extern "C" __global__ void __launch_bounds__(512) bench_l2_read(const uint4* buf, u64 count, int passes, unsigned* sink) {
  const u64 stride = (u64)gridDim.x * blockDim.x;
  const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  const uint4 zero = {0u, 0u, 0u, 0u};
  unsigned x = 0;
  for (int pass = 0; pass < passes; ++pass) {
    for (u64 i = tid; i < count; i += 4 * stride) {
      const uint4 a = load_cg(buf + i);
      const uint4 b = i + stride < count ? load_cg(buf + i + stride) : zero;
      const uint4 c = i + 2 * stride < count ? load_cg(buf + i + 2 * stride) : zero;
      const uint4 d = i + 3 * stride < count ? load_cg(buf + i + 3 * stride) : zero;
      x ^= (a.x + b.x + c.x + d.x) ^ (a.y + b.y + c.y + d.y) ^ (a.z + b.z + c.z + d.z) ^ (a.w + b.w + c.w + d.w);
    }
    x = x * 3u + (unsigned)pass;
  }
  if (x == 0x9e3779b9u) sink[0] = x;
}
)";

// Keeps the GPU busy for `ns` nanoseconds (one thread reading %globaltimer): launched before a
// run of timed launches that are shorter than the host's cost of issuing them, so that the host
// has queued them all before the first runs and the event pairs time the GPU, not the host.
constexpr const char* kSpinSource = R"(
extern "C" __global__ void bench_spin(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}
)";

/// `source` compiled with NVRTC for `arch` and loaded (a compile error as a DriverError naming
/// `entry`, with NVRTC's log in its detail).
jit::DriverResult<jit::Module> load_helper_module(const std::string& source, const std::string& entry,
                                                  const std::string& arch) {
  auto cubin = jit::compile_source_to_cubin(source, entry + ".cu", arch, entry);
  if (!cubin) {
    jit::DriverError e;
    e.call = "nvrtcCompileProgram";
    e.result = CUDA_ERROR_INVALID_SOURCE;
    e.result_name = "CUDA_ERROR_INVALID_SOURCE";
    e.variant = entry;
    e.detail = cubin.error().message() + "\n" + cubin.error().log;
    return std::unexpected(e);
  }
  return jit::Module::load(cubin->image, entry + "." + arch);
}

/// A benchmark helper kernel compiled with NVRTC once per (entry, arch) and kept loaded for the
/// life of the process.
jit::DriverResult<CUfunction> helper_kernel(const char* source, const std::string& entry, const std::string& arch) {
  struct Loaded {
    std::optional<jit::Module> module;
    CUfunction function = nullptr;
  };
  static std::mutex mutex;
  static std::map<std::string, Loaded> kernels;
  std::lock_guard lock(mutex);
  auto& k = kernels[entry + "." + arch];
  if (!k.module) {
    auto module = load_helper_module(source, entry, arch);
    if (!module) return std::unexpected(module.error());
    auto f = module->function(entry);
    if (!f) return std::unexpected(f.error());
    k.function = *f;
    k.module.emplace(std::move(*module));
  }
  return k.function;
}

struct NoPrelude {
  jit::DriverResult<void> operator()() const { return {}; }
};

/// Times `runs` launches of `launch_once` with an event pair around each, after `warmup`
/// untimed ones and then `prelude` (enqueued before the first timed pair); seconds per launch.
template <class F, class Prelude = NoPrelude>
jit::DriverResult<std::vector<double>> time_launches(F&& launch_once, const jit::Stream& stream, int runs,
                                                     int warmup, Prelude prelude = {}) {
  std::vector<jit::Event> starts, ends;
  for (int i = 0; i < runs; ++i) {
    auto a = jit::Event::create();
    auto b = jit::Event::create();
    if (!a) return std::unexpected(a.error());
    if (!b) return std::unexpected(b.error());
    starts.push_back(std::move(*a));
    ends.push_back(std::move(*b));
  }
  for (int w = 0; w < warmup; ++w)
    if (auto r = launch_once(); !r) return std::unexpected(r.error());
  if (auto r = prelude(); !r) return std::unexpected(r.error());
  for (int i = 0; i < runs; ++i) {
    if (auto r = starts[i].record(stream); !r) return std::unexpected(r.error());
    if (auto r = launch_once(); !r) return std::unexpected(r.error());
    if (auto r = ends[i].record(stream); !r) return std::unexpected(r.error());
  }
  if (auto r = stream.synchronize(); !r) return std::unexpected(r.error());
  std::vector<double> seconds;
  for (int i = 0; i < runs; ++i) {
    auto ms = jit::Event::elapsed_ms(starts[i], ends[i]);
    if (!ms) return std::unexpected(ms.error());
    seconds.push_back(*ms * 1e-3);
  }
  return seconds;
}

}  // namespace

jit::DriverResult<void> fill_normal_on_device(CUdeviceptr ptr, std::uint64_t count, jit::ElemType dtype,
                                              std::uint64_t seed, const std::string& arch, const jit::Stream& stream) {
  auto function = helper_kernel(kFillSource, "bench_fill_normal", arch);
  if (!function) return std::unexpected(function.error());
  jit::Launch l;
  l.entry = "bench_fill_normal";
  l.grid[0] = 4096;
  l.block[0] = 256;
  // The fill kernel takes its own arguments, not SelectionParams.
  struct Args {
    CUdeviceptr out;
    std::uint64_t count, seed;
    int bf16;
  } args{ptr, count, seed, dtype == jit::ElemType::bf16 ? 1 : 0};
  return jit::launch_raw(*function, l, {&args.out, &args.count, &args.seed, &args.bf16}, stream, "bench_fill_normal");
}

std::string empty_launch_entry(int maps, int cluster) {
  return "bench_empty_launch_m" + std::to_string(maps) + "_c" + std::to_string(std::max(cluster, 1));
}

std::string empty_launch_source(int maps, int cluster) {
  static_assert(sizeof(SelectionParams) % 8 == 0 && alignof(SelectionParams) == 8,
                "the empty launch's parameter block mirrors SelectionParams as 8-byte words");
  std::ostringstream src;
  src << "struct __align__(8) NsaParams { unsigned long long w[" << sizeof(SelectionParams) / 8 << "]; };\n"
      << "struct __align__(64) NsaMap { unsigned long long opaque[16]; };\n"
      << "extern \"C\" __global__ void ";
  if (cluster > 1) src << "__cluster_dims__(" << cluster << ", 1, 1) ";
  src << empty_launch_entry(maps, cluster) << "(const __grid_constant__ NsaParams p";
  for (int m = 0; m < maps; ++m) src << ", const __grid_constant__ NsaMap m" << m;
  src << ") {}\n";
  return src.str();
}

jit::DriverResult<double> measure_launch_floor_us(const jit::LaunchPlan& plan, std::span<const int> cluster_widths,
                                                  const SelectionParams& params, const std::string& arch,
                                                  const jit::Stream& stream, int runs, int warmup) {
  // One module per empty kernel, compiled once per process and kept loaded. A plan's launches
  // may need different empty kernels, so each launch is prepared alone from its own module (no
  // workspace: no empty kernel touches it).
  static std::mutex mutex;
  static std::map<std::string, jit::Module> modules;
  std::vector<jit::PreparedPlan> prepared;
  for (std::size_t i = 0; i < plan.launches.size(); ++i) {
    jit::LaunchPlan one;
    one.launches = {plan.launches[i]};
    const int maps = static_cast<int>(one.launches[0].tensor_maps.size());
    const int cluster = i < cluster_widths.size() ? cluster_widths[i] : 0;
    const std::string entry = empty_launch_entry(maps, cluster);
    one.launches[0].entry = entry;
    std::lock_guard lock(mutex);
    auto at = modules.find(entry + "." + arch);
    if (at == modules.end()) {
      auto module = load_helper_module(empty_launch_source(maps, cluster), entry, arch);
      if (!module) return std::unexpected(module.error());
      at = modules.emplace(entry + "." + arch, std::move(*module)).first;
    }
    auto p = jit::PreparedPlan::prepare(at->second, one);
    if (!p) return std::unexpected(p.error());
    prepared.push_back(std::move(*p));
  }
  // An empty launch takes the GPU less time than the host takes to issue it (two event records,
  // the tensor maps encoded, the launch): timed back to back from an idle GPU, the pairs measured
  // the host, 3.1-12.9 us over the settings of one decode shape on the H200 (v14). So the timed
  // pairs are queued behind a spin of ~25 us each.
  auto spin = helper_kernel(kSpinSource, "bench_spin", arch);
  if (!spin) return std::unexpected(spin.error());
  jit::Launch one_thread;
  one_thread.entry = "bench_spin";
  one_thread.block[0] = 1;
  std::uint64_t spin_ns = 200000 + 25000ull * static_cast<std::uint64_t>(std::max(runs, 1));
  auto seconds = time_launches(
      [&]() -> jit::DriverResult<void> {
        for (const auto& p : prepared)
          if (auto r = p.launch(params, stream); !r) return r;
        return {};
      },
      stream, runs, warmup, [&] { return jit::launch_raw(*spin, one_thread, {&spin_ns}, stream, "bench_spin"); });
  if (!seconds) return std::unexpected(seconds.error());
  return summarize(*seconds).median * 1e6;
}

std::optional<std::string> helper_kernels_compile_error(const std::string& arch) {
  for (auto [source, entry] : {std::pair{kFillSource, "bench_fill_normal"}, std::pair{kL2ReadSource, "bench_l2_read"},
                                std::pair{kSpinSource, "bench_spin"}}) {
    auto cubin = jit::compile_source_to_cubin(source, std::string(entry) + ".cu", arch, entry);
    if (!cubin) return std::string(entry) + ": " + cubin.error().message() + "\n" + cubin.error().log;
  }
  const bool clusters = arch.size() >= 5 && arch.compare(0, 3, "sm_") == 0 && std::atoi(arch.c_str() + 3) >= 90;
  for (auto [maps, cluster] : {std::pair{0, 0}, std::pair{2, 0}, std::pair{2, 4}}) {
    if (cluster > 1 && !clusters) continue;  // thread-block clusters need sm_90
    const std::string entry = empty_launch_entry(maps, cluster);
    auto cubin = jit::compile_source_to_cubin(empty_launch_source(maps, cluster), entry + ".cu", arch, entry);
    if (!cubin) return entry + ": " + cubin.error().message() + "\n" + cubin.error().log;
  }
  return std::nullopt;
}

jit::DriverResult<double> measure_l2_read_bandwidth(std::size_t bytes, const std::string& arch, int sm_count,
                                                    const jit::Stream& stream, int runs) {
  auto function = helper_kernel(kL2ReadSource, "bench_l2_read", arch);
  if (!function) return std::unexpected(function.error());
  bytes &= ~std::size_t{15};
  auto buf = jit::DeviceBuffer::allocate(bytes, "L2 read buffer");
  if (!buf) return std::unexpected(buf.error());
  auto sink = jit::DeviceBuffer::allocate(256, "L2 read sink");
  if (!sink) return std::unexpected(sink.error());
  if (auto r = buf->fill_u32(0x3f800000u); !r) return std::unexpected(r.error());
  jit::Launch l;
  l.entry = "bench_l2_read";
  l.grid[0] = static_cast<unsigned>(std::max(1, sm_count) * 4);  // 2048 threads per SM
  l.block[0] = 512;
  // About 1 GB read per launch (~100 us at 10 TB/s), so launch overhead and the first touch
  // (warm-up launches already bring the buffer into L2) do not count.
  struct Args {
    CUdeviceptr buf;
    std::uint64_t count;
    int passes;
    CUdeviceptr sink;
  } args{buf->ptr(), bytes / 16, static_cast<int>(std::max<std::size_t>(1, (std::size_t{1} << 30) / bytes)),
         sink->ptr()};
  auto seconds = time_launches(
      [&] {
        return jit::launch_raw(*function, l, {&args.buf, &args.count, &args.passes, &args.sink}, stream,
                               "bench_l2_read");
      },
      stream, runs, 3);
  if (!seconds) return std::unexpected(seconds.error());
  const auto s = summarize(*seconds);
  return static_cast<double>(args.count) * 16.0 * args.passes / s.median;
}

jit::DriverResult<double> measure_copy_bandwidth(std::size_t bytes, const jit::Stream& stream, int runs) {
  auto src = jit::DeviceBuffer::allocate(bytes, "bandwidth source");
  if (!src) return std::unexpected(src.error());
  auto dst = jit::DeviceBuffer::allocate(bytes, "bandwidth destination");
  if (!dst) return std::unexpected(dst.error());
  if (auto r = src->fill_u32(0x3f800000u); !r) return std::unexpected(r.error());
  auto seconds = time_launches([&] { return dst->copy_from(*src, bytes, stream); }, stream, runs, 3);
  if (!seconds) return std::unexpected(seconds.error());
  const auto s = summarize(*seconds);
  return 2.0 * static_cast<double>(bytes) / s.median;
}

Agreement compare_bits(std::span<const std::uint16_t> got, jit::ElemType dtype, std::span<const double> ref,
                       unsigned threads) {
  Agreement a;
  if (got.size() != ref.size()) {
    a.rel_l2 = std::numeric_limits<double>::infinity();
    a.nan_count = static_cast<std::int64_t>(std::max(got.size(), ref.size()));
    return a;
  }
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<unsigned>(std::clamp<std::size_t>(got.size() / (std::size_t{1} << 20), 1, threads));
  struct Part {
    double diff2 = 0, ref2 = 0;
    std::int64_t nan_count = 0;
  };
  std::vector<Part> parts(threads);
  auto work = [&](unsigned k) {
    const std::size_t begin = got.size() * k / threads, end = got.size() * (k + 1) / threads;
    Part p;
    for (std::size_t i = begin; i < end; ++i) {
      const double r = ref[i], x = jit::to_float(dtype, got[i]);
      if (!std::isfinite(r)) {
        if (!(x == r)) ++p.nan_count;
        continue;
      }
      if (!std::isfinite(x)) {
        ++p.nan_count;
        continue;
      }
      p.diff2 += (x - r) * (x - r);
      p.ref2 += r * r;
    }
    parts[k] = p;
  };
  std::vector<std::thread> pool;
  for (unsigned k = 1; k < threads; ++k) pool.emplace_back(work, k);
  work(0);
  for (auto& t : pool) t.join();
  double diff2 = 0, ref2 = 0;
  for (const auto& p : parts) {
    diff2 += p.diff2;
    ref2 += p.ref2;
    a.nan_count += p.nan_count;
  }
  if (ref2 > 0) a.rel_l2 = std::sqrt(diff2) / std::sqrt(ref2);
  else a.rel_l2 = diff2 == 0 ? 0 : std::numeric_limits<double>::infinity();
  return a;
}

std::string label_of(const jit::KernelVariant& v) {
  std::string knobs;
  for (const auto& [k, value] : v.knobs) knobs += (knobs.empty() ? "" : "_") + k + std::to_string(value);
  return std::string(to_string(v.design)) + (knobs.empty() ? "" : " " + knobs);
}

Summary summarize(std::vector<double>& samples) {
  Summary s;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  auto at = [&](double q) {
    const double pos = q * static_cast<double>(samples.size() - 1);
    const auto lo = static_cast<std::size_t>(std::floor(pos));
    const auto hi = std::min(lo + 1, samples.size() - 1);
    return samples[lo] + (samples[hi] - samples[lo]) * (pos - static_cast<double>(lo));
  };
  s.median = at(0.5);
  s.p10 = at(0.1);
  s.p90 = at(0.9);
  return s;
}

}  // namespace nsa::bench
