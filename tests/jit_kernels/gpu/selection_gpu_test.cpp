// Correctness of every kernel design on the GPU: run `ctest -L gpu` on a GPU host (every case
// skips, saying why, where there is no GPU).
//
// Each case draws fresh standard-normal inputs (the seed comes from the clock and is printed;
// NSA_TEST_SEED=<n> replays a run), poisons O, LSE and the workspace with NaN, runs a variant,
// and compares with a reference on the same inputs:
//   - the host fp64 reference when it is cheap (up to 2e9 multiply-adds), else
//   - the device `reference` design (fp32), itself checked against the host on every small case.
// Pass: rel_l2(O) <= 1.5e-2 (bf16) or 4e-3 (fp16), no NaN anywhere, rows without a visible key
// exactly 0 with LSE = -inf, LSE within 1e-2 elsewhere; and the same O when LSE is not requested.
//
// The matrix follows issue 3: -1 slots anywhere, unsorted rows, blocks past the causal limit
// (including past T_kv), the block holding p(t) cut mid-block, T_kv not a multiple of the block,
// rows with no visible key, h = 1 and h = 32, n = 1, decode and prefill, batch > 1, D_qk = 192 with
// D_v = 128, block sizes 32 and 128, and one problem whose K and V exceed 2^31 elements.

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>

#include "nsa/jit/catalog.hpp"
#include "nsa/jit/compiler.hpp"
#include "nsa/jit/device.hpp"
#include "nsa/jit/driver.hpp"
#include "nsa/jit/runner.hpp"

using namespace nsa::jit;

namespace {


/// Everything a case needs from the device, set up once per process.
struct Gpu {
  bool ready = false;
  std::string problem;  // why not ready
  DeviceInfo device;
  int driver_version = 0;
  std::optional<Context> context;
  std::optional<Stream> stream;
  MemoryCubinCache cache;
  std::unique_ptr<CompilePool> pool;
  std::uint64_t seed = 0;
};

void init(Gpu& g) {
  const char* env = std::getenv("NSA_TEST_SEED");
  g.seed = env ? std::strtoull(env, nullptr, 10)
               : static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
  auto probe = probe_devices();
  if (!probe.available()) {
    g.problem = probe.problem;
    return;
  }
  g.device = probe.devices[0];
  g.driver_version = probe.driver_version;
  auto ctx = Context::retain_primary(0);
  if (!ctx) {
    g.problem = ctx.error().message();
    return;
  }
  g.context.emplace(std::move(*ctx));
  auto stream = Stream::create();
  if (!stream) {
    g.problem = stream.error().message();
    return;
  }
  g.stream.emplace(std::move(*stream));
  g.pool = std::make_unique<CompilePool>(0, &g.cache);
  g.ready = true;
  std::printf("GPU tests on %s (%s, %d SMs), driver %d, NVRTC %s, seed %llu (NSA_TEST_SEED=%llu replays it)\n",
              g.device.name.c_str(), g.device.arch.c_str(), g.device.sm_count, g.driver_version,
              nvrtc_version().c_str(), static_cast<unsigned long long>(g.seed), static_cast<unsigned long long>(g.seed));
}

Gpu& gpu() {
  static Gpu g;
  static const bool initialised = (init(g), true);
  (void)initialised;
  return g;
}

#define REQUIRE_GPU()                                   \
  do {                                                  \
    if (!gpu().ready) GTEST_SKIP() << gpu().problem;    \
  } while (0)

double o_bound(ElemType t) { return t == ElemType::bf16 ? 1.5e-2 : 4e-3; }
constexpr double kLseBound = 1e-2;
constexpr double kHostReferenceBudget = 2e9;  // multiply-adds: about two seconds of host time

/// A per-case random engine: the run's seed mixed with the case's name, so cases are
/// independent of the order they run in.
std::mt19937_64 case_rng(const std::string& name) {
  std::uint64_t h = gpu().seed;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return std::mt19937_64(h);
}

struct Reference {
  std::vector<double> o, lse;
  std::string kind;  // "host fp64" or "device reference"
};

/// Compiles (through the shared cache) and loads a variant for a shape.
std::optional<LoadedVariant> load_variant(const KernelVariant& v, const RuntimeShape& shape) {
  auto compiled = gpu().pool->compile(v);
  if (!compiled.result) {
    ADD_FAILURE() << compiled.result.error().message() << "\noptions: " << compiled.result.error().options << "\n"
                  << compiled.result.error().log;
    return std::nullopt;
  }
  auto loaded = LoadedVariant::load(v, *compiled.result, shape);
  if (!loaded) {
    ADD_FAILURE() << loaded.error().message();
    return std::nullopt;
  }
  // The driver's register count (what nsa-bench-kernels reports) is known for every kernel.
  EXPECT_GT(loaded->registers(), 0) << v.key();
  return std::move(*loaded);
}

RuntimeShape runtime_of(const SelectionShape& s) { return RuntimeShape{s.batch, s.t_q, s.t_kv, s.h_kv}; }

FamilySpec family_of(const SelectionShape& s, ElemType dtype) {
  return FamilySpec{dtype, s.d_qk, s.d_v, s.h, s.block, s.n};
}

/// The reference for a problem: host fp64 when affordable, else the device reference design.
std::optional<Reference> reference_for(const HostProblem& host, DeviceProblem& device) {
  Reference ref;
  if (host.reference_cost() <= kHostReferenceBudget) {
    auto r = host.reference();
    if (!r) {
      ADD_FAILURE() << "host reference: " << r.error();
      return std::nullopt;
    }
    ref.o = std::move(r->o);
    ref.lse = std::move(r->lse);
    ref.kind = "host fp64";
    return ref;
  }
  const auto v = default_variant(Design::reference, family_of(host.shape, host.dtype), gpu().device.arch);
  auto loaded = load_variant(v, runtime_of(host.shape));
  if (!loaded) return std::nullopt;
  auto out = loaded->run_checked(device, *gpu().stream);
  if (!out) {
    ADD_FAILURE() << "device reference: " << out.error().message();
    return std::nullopt;
  }
  ref.o.assign(out->o.begin(), out->o.end());
  ref.lse.assign(out->lse.begin(), out->lse.end());
  ref.kind = "device reference";
  return ref;
}

/// Runs `v` on the problem (with and without LSE) and checks it against `ref`.
void check_variant(const KernelVariant& v, const HostProblem& host, DeviceProblem& device, const Reference& ref) {
  SCOPED_TRACE(v.key() + " on " + host.shape.describe() + " vs " + ref.kind + ", seed " + std::to_string(gpu().seed));
  auto loaded = load_variant(v, runtime_of(host.shape));
  if (!loaded) return;
  auto out = loaded->run_checked(device, *gpu().stream, true);
  ASSERT_TRUE(out) << out.error().message();
  const auto o = compare(out->o, ref.o);
  EXPECT_EQ(o.nan_count, 0) << "O: " << o.describe();
  EXPECT_LE(o.rel_l2, o_bound(host.dtype)) << "O: " << o.describe();
  EXPECT_EQ(empty_row_violations(host.shape, out->o, ref.lse), 0) << "rows without a visible key must be exactly 0";
  const auto lse = compare_lse(out->lse, ref.lse);
  EXPECT_EQ(lse.inf_mismatches, 0) << "LSE must be -inf exactly on rows without a visible key, finite elsewhere";
  EXPECT_LE(lse.max_abs, kLseBound) << "LSE max abs error";

  auto no_lse = loaded->run_checked(device, *gpu().stream, false);
  ASSERT_TRUE(no_lse) << "without LSE: " << no_lse.error().message();
  const auto o2 = compare(no_lse->o, ref.o);
  EXPECT_EQ(o2.nan_count, 0) << "O without LSE: " << o2.describe();
  EXPECT_LE(o2.rel_l2, o_bound(host.dtype)) << "O without LSE: " << o2.describe();
}

/// Compiles `variants` in parallel, then checks each on a fresh random problem.
void check_all(const std::vector<KernelVariant>& variants, const SelectionShape& shape, ElemType dtype,
               SelectionPattern pattern, const PatternOptions& options, const std::string& case_name) {
  auto rng = case_rng(case_name);
  auto host = HostProblem::random(shape, dtype, pattern, rng, options);
  auto device = DeviceProblem::upload(host);
  ASSERT_TRUE(device) << device.error().message();
  gpu().pool->compile_all(variants);  // warm the cache in parallel; failures are reported per variant below
  auto ref = reference_for(host, *device);
  ASSERT_TRUE(ref);
  for (const auto& v : variants) check_variant(v, host, *device, *ref);
}

// The edge-case matrix: every design with its default knobs ------------------------------------------

struct Case {
  std::string name;
  ElemType dtype;
  SelectionShape shape;
  SelectionPattern pattern;
  PatternOptions options;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name << " (" << c.shape.describe() << ")"; }

SelectionShape make_shape(std::int64_t batch, std::int64_t t_q, std::int64_t t_kv, std::int64_t h_kv, int h, int d_qk,
                          int d_v, int block, int n) {
  SelectionShape s;
  s.batch = batch;
  s.t_q = t_q;
  s.t_kv = t_kv;
  s.h_kv = h_kv;
  s.h = h;
  s.d_qk = d_qk;
  s.d_v = d_v;
  s.block = block;
  s.n = n;
  return s;
}

PatternOptions edges(double empty_fraction, int future_blocks, int empty_rows_every) {
  PatternOptions o;
  o.empty_fraction = empty_fraction;
  o.future_blocks = future_blocks;
  o.empty_rows_every = empty_rows_every;
  return o;
}

SelectionShape with_scale(SelectionShape s, float scale) {
  s.scale = scale;
  return s;
}

std::vector<Case> edge_cases() {
  using P = SelectionPattern;
  const auto bf16 = ElemType::bf16, fp16 = ElemType::fp16;
  return {
      // decode, batch > 1, T_kv not a multiple of the block, blocks past T_kv
      {"decode_bf16", bf16, make_shape(3, 1, 5000, 2, 16, 128, 128, 64, 16), P::random, edges(0, 1, 0)},
      // the paper's D_qk = 192, D_v = 128, clustered rows, -1 slots anywhere
      {"decode_paper_fp16", fp16, make_shape(2, 1, 4097, 2, 16, 192, 128, 64, 16), P::clustered, edges(0.25, 0, 0)},
      // full prefill: the block holding p(t) is cut mid-block on most rows; blocks past p(t)
      {"prefill_bf16", bf16, make_shape(2, 700, 700, 2, 16, 128, 128, 64, 16), P::random, edges(0.2, 2, 0)},
      // bottom-right aligned prefill chunk, block 32
      {"prefill_chunk_fp16", fp16, make_shape(2, 100, 1000, 2, 8, 128, 128, 32, 8), P::clustered, edges(0, 1, 0)},
      // rows with no visible key: all -1 rows, and rows whose blocks all lie past p(t)
      {"empty_rows_bf16", bf16, make_shape(2, 50, 200, 2, 4, 64, 64, 64, 4), P::random, edges(0.3, 2, 3)},
      // h = 1
      {"h1_bf16", bf16, make_shape(2, 64, 2000, 4, 1, 128, 128, 64, 16), P::random, edges(0, 0, 0)},
      // h = 32
      {"h32_bf16", bf16, make_shape(1, 3, 3000, 2, 32, 128, 128, 64, 16), P::random, edges(0.1, 0, 0)},
      // n = 1
      {"n1_fp16", fp16, make_shape(4, 16, 1000, 2, 16, 128, 128, 64, 1), P::random, edges(0, 0, 0)},
      // block 128, n = 8, larger decode batch
      {"block128_bf16", bf16, make_shape(8, 1, 2100, 2, 16, 128, 128, 128, 8), P::random, edges(0, 0, 0)},
      // the paper config in prefill with bf16
      {"prefill_paper_bf16", bf16, make_shape(1, 300, 1200, 1, 16, 192, 128, 64, 16), P::clustered, edges(0.1, 1, 7)},
      // a negative softmax scale: the engines fold a positive scale into the exponent's fma and
      // apply any other one to the scores first (a negative scale does not keep the max)
      {"negative_scale_bf16", bf16, with_scale(make_shape(2, 130, 1100, 2, 16, 128, 128, 64, 16), -0.07f), P::clustered,
       edges(0.1, 1, 0)},
  };
}

class EdgeCases : public ::testing::TestWithParam<Case> {};

TEST_P(EdgeCases, EveryDesignMatchesTheReference) {
  REQUIRE_GPU();
  const Case& c = GetParam();
  std::vector<KernelVariant> variants;
  for (Design d : all_designs()) {
    auto offered = variants_for(family_of(c.shape, c.dtype), gpu().device.arch, d);
    // prefill_stream and decode_stream hold a row's heads in one warp's 16 MMA rows: h32 has no
    // setting of them. prefill_group runs on sm_90 only, for block 64 and D_v <= 128. (The
    // catalog says so; catalog_test checks the reasons.) Every other design runs every case.
    const bool one_warp_rows = d == Design::prefill_stream || d == Design::decode_stream;
    if (offered.empty() && one_warp_rows && c.shape.h > 16) continue;
    if (offered.empty() && d == Design::prefill_group) continue;
    ASSERT_FALSE(offered.empty()) << "no " << to_string(d) << " variant for " << family_of(c.shape, c.dtype).key()
                                  << " on " << gpu().device.arch << ": "
                                  << unsupported_reason(family_of(c.shape, c.dtype)).value_or("(no reason given)");
    variants.push_back(offered.front());
  }
  check_all(variants, c.shape, c.dtype, c.pattern, c.options, c.name);
}

INSTANTIATE_TEST_SUITE_P(Matrix, EdgeCases, ::testing::ValuesIn(edge_cases()),
                         [](const auto& info) { return info.param.name; });

// Every knob setting of every design on a few shapes -------------------------------------------------

std::vector<Case> sweep_cases() {
  using P = SelectionPattern;
  return {
      {"decode_bf16", ElemType::bf16, make_shape(2, 1, 4100, 2, 16, 128, 128, 64, 16), P::random, edges(0, 0, 0)},
      {"prefill_bf16", ElemType::bf16, make_shape(1, 1500, 1500, 1, 16, 128, 128, 64, 16), P::clustered,
       edges(0.05, 1, 0)},
      {"paper_fp16", ElemType::fp16, make_shape(3, 4, 3000, 2, 16, 192, 128, 64, 16), P::random, edges(0, 1, 0)},
  };
}

class KnobSweep : public ::testing::TestWithParam<Case> {};

TEST_P(KnobSweep, EveryVariantMatchesTheReference) {
  REQUIRE_GPU();
  const Case& c = GetParam();
  auto variants = all_variants(family_of(c.shape, c.dtype), gpu().device.arch);
  ASSERT_FALSE(variants.empty());
  std::printf("%s: %zu variants\n", c.name.c_str(), variants.size());
  check_all(variants, c.shape, c.dtype, c.pattern, c.options, "sweep_" + c.name);
}

INSTANTIATE_TEST_SUITE_P(Shapes, KnobSweep, ::testing::ValuesIn(sweep_cases()),
                         [](const auto& info) { return info.param.name; });

// The query-tile union of large tiles ---------------------------------------------------------------

// Every catalog setting of the designs that build a query tile's union, checked on `shape` (bf16,
// random selections, a tenth of the slots empty, one slot a row a block past the query).
void check_every_query_tile_setting(const SelectionShape& shape, const char* label) {
  std::vector<KernelVariant> variants;
  for (Design d : {Design::prefill_shared, Design::prefill_stream, Design::prefill_group})
    for (auto& v : variants_for(family_of(shape, ElemType::bf16), gpu().device.arch, d)) variants.push_back(v);
  ASSERT_FALSE(variants.empty());
  std::printf("%s: %zu variants\n", label, variants.size());
  check_all(variants, shape, ElemType::bf16, SelectionPattern::random, edges(0.1, 1, 0), label);
}

// The sweep above builds unions of at most 11 x 16 = 176 slots; n = 32 doubles them (352 for
// prefill_stream's 11 queries): every setting of the query-tile designs, the CTA's build and the
// persistent producer's, on tiles of both sizes (and, built with NSA_UNION_BUILD 2, as bitmaps
// of their 47 blocks: query_tile_union.cuh).
TEST(QueryTileUnion, EverySettingOfTheQueryTileDesignsAtN32) {
  REQUIRE_GPU();
  check_every_query_tile_setting(make_shape(1, 400, 3000, 1, 16, 128, 128, 64, 32), "union_n32");
}

// The bitmap build (NSA_UNION_BUILD 2) needs a word for every 32 blocks a tile's queries may see,
// in the sort's buffer (pow2(qtile * n) words); beyond it the union is sorted. At n = 1 that
// buffer holds 1 to 16 words (32 to 512 blocks), and the 625 blocks of T_kv = 40000 exceed it:
// every setting of the query-tile designs falls back to the sort, the CTA's build and the
// persistent producer's. (The default build sorts every tile.)
TEST(QueryTileUnion, EverySettingOfTheQueryTileDesignsSortsPastTheBitmap) {
  REQUIRE_GPU();
  check_every_query_tile_setting(make_shape(1, 400, 40000, 1, 16, 128, 128, 64, 1), "union_sorted");
}

// Offsets beyond 2^31 elements ----------------------------------------------------------------------

TEST(LargeOffsets, KAndVBeyond2To31ElementsAreAddressedIn64Bits) {
  REQUIRE_GPU();
  // K and V of B=1, T_kv = 2^21 + 40 blocks + 17, H_kv = 8, D = 128: 2^31 + 2.6M elements each
  // (4.3 GB bf16). Selected blocks get fresh random data; the rest is a constant (never read by a
  // correct kernel, finite so that a kernel masking in-bounds keys is not punished). Half of each
  // row's blocks lie above element 2^31, so 32-bit offset arithmetic reads the wrong keys.
  const FamilySpec family{ElemType::bf16, 128, 128, 16, 64, 16};
  const std::int64_t t_kv = (std::int64_t{1} << 21) + 40 * 64 + 17;
  auto shape = make_shape(1, 2, t_kv, 8, family.h, family.d_qk, family.d_v, family.block, family.n);
  ASSERT_GT(shape.k_elems(), std::int64_t{1} << 31);
  const std::size_t kv_bytes = static_cast<std::size_t>(shape.k_elems() + shape.v_elems()) * 2;
  auto mem = gpu().context->memory_info();
  ASSERT_TRUE(mem) << mem.error().message();
  if (mem->first < kv_bytes + (std::size_t{1} << 30))
    GTEST_SKIP() << "needs " << kv_bytes / (1 << 20) << " MiB free, the device has " << mem->first / (1 << 20);

  auto rng = case_rng("large_offsets");
  auto device = DeviceProblem::allocate(shape, family.dtype);
  ASSERT_TRUE(device) << device.error().message();
  ASSERT_TRUE(device->k().fill_u16(0x3f80));  // 1.0
  ASSERT_TRUE(device->v().fill_u16(0xc000));  // -2.0

  HostProblem host;
  host.shape = shape;
  host.dtype = family.dtype;
  std::vector<float> qf(static_cast<std::size_t>(shape.q_elems()));
  fill_normal(qf, rng);
  host.q = encode(family.dtype, qf);
  host.block_idx.assign(static_cast<std::size_t>(shape.idx_elems()), -1);
  const std::int64_t high_first = (std::int64_t{1} << 21) / 64;  // first block at or above element 2^31
  for (std::int64_t g = 0; g < shape.h_kv; ++g)
    for (std::int64_t t = 0; t < shape.t_q; ++t) {
      const std::int64_t last = shape.position(t) / shape.block;
      std::vector<std::int32_t> row = {static_cast<std::int32_t>(last), static_cast<std::int32_t>(last - 1), 0};
      auto draw = [&](std::int64_t lo, std::int64_t hi, std::size_t count) {
        std::uniform_int_distribution<std::int64_t> pick(lo, hi);
        while (count > 0) {
          auto c = static_cast<std::int32_t>(pick(rng));
          if (std::find(row.begin(), row.end(), c) != row.end()) continue;
          row.push_back(c);
          --count;
        }
      };
      draw(high_first, last - 2, 6);
      draw(1, high_first - 1, static_cast<std::size_t>(shape.n) - row.size());
      std::shuffle(row.begin(), row.end(), rng);
      std::copy(row.begin(), row.end(), host.block_idx.begin() + (g * shape.t_q + t) * shape.n);
    }

  // Random K/V for every selected block (all groups: the keys of a block are contiguous rows).
  std::map<std::int32_t, std::pair<std::vector<float>, std::vector<float>>> blocks;
  const std::int64_t row_elems = shape.h_kv * shape.d_qk;  // D_qk == D_v here
  for (auto c : host.block_idx) {
    if (c < 0 || blocks.count(c)) continue;
    const std::int64_t first = std::int64_t{c} * shape.block;
    const std::int64_t keys = std::min<std::int64_t>(shape.block, t_kv - first);
    std::vector<float> kf(static_cast<std::size_t>(keys * row_elems)), vf(kf.size());
    fill_normal(kf, rng);
    fill_normal(vf, rng);
    auto kb = encode(family.dtype, kf), vb = encode(family.dtype, vf);
    const std::size_t offset = static_cast<std::size_t>(first * row_elems) * 2;
    ASSERT_TRUE(device->k().upload(kb.data(), kb.size() * 2, offset));
    ASSERT_TRUE(device->v().upload(vb.data(), vb.size() * 2, offset));
    blocks[c] = {decode(family.dtype, kb), decode(family.dtype, vb)};
  }
  ASSERT_TRUE(device->q().upload(host.q.data(), host.q.size() * 2));
  ASSERT_TRUE(device->block_idx().upload(host.block_idx.data(), host.block_idx.size() * 4));

  // Host reference row by row: pack the row's visible keys and run the reference on the packed
  // row (one block covering them all), which is the spec's packed-SDPA equivalence.
  Reference ref;
  ref.kind = "host fp64 (packed rows)";
  ref.o.assign(static_cast<std::size_t>(shape.o_elems()), 0.0);
  ref.lse.assign(static_cast<std::size_t>(shape.lse_elems()), 0.0);
  const auto qd = decode(family.dtype, host.q);
  for (std::int64_t g = 0; g < shape.h_kv; ++g)
    for (std::int64_t t = 0; t < shape.t_q; ++t) {
      std::vector<float> kp, vp;
      for (int slot = 0; slot < shape.n; ++slot) {
        const auto c = host.block_idx[static_cast<std::size_t>((g * shape.t_q + t) * shape.n + slot)];
        const auto& [kb, vb] = blocks.at(c);
        const std::int64_t first = std::int64_t{c} * shape.block;
        for (std::int64_t j = first; j < std::min(first + shape.block, shape.position(t) + 1); ++j) {
          const std::size_t at = static_cast<std::size_t>((j - first) * row_elems + g * shape.d_qk);
          kp.insert(kp.end(), kb.begin() + static_cast<std::ptrdiff_t>(at),
                    kb.begin() + static_cast<std::ptrdiff_t>(at) + shape.d_qk);
          vp.insert(vp.end(), vb.begin() + static_cast<std::ptrdiff_t>(at),
                    vb.begin() + static_cast<std::ptrdiff_t>(at) + shape.d_v);
        }
      }
      const auto keys = static_cast<std::int64_t>(kp.size()) / shape.d_qk;
      auto packed = make_shape(1, 1, keys, 1, shape.h, shape.d_qk, shape.d_v, static_cast<int>(keys), 1);
      const auto q_first = qd.begin() + static_cast<std::ptrdiff_t>((t * shape.h_q() + g * shape.h) * shape.d_qk);
      std::vector<float> qp(q_first, q_first + shape.h * shape.d_qk);
      auto r = selection_reference(packed, qp, kp, vp, std::vector<std::int32_t>{0});
      ASSERT_TRUE(r) << r.error();
      for (int hi = 0; hi < shape.h; ++hi) {
        const std::int64_t i = g * shape.h + hi;
        std::copy(r->o.begin() + hi * shape.d_v, r->o.begin() + (hi + 1) * shape.d_v,
                  ref.o.begin() + static_cast<std::ptrdiff_t>((t * shape.h_q() + i) * shape.d_v));
        ref.lse[static_cast<std::size_t>(i * shape.t_q + t)] = r->lse[static_cast<std::size_t>(hi)];
      }
    }

  for (Design d : all_designs()) check_variant(default_variant(d, family, gpu().device.arch), host, *device, ref);
}

// Faults ------------------------------------------------------------------------------------------

/// Child: launches the reference design with K pointing at unmapped memory and prints the error.
/// Runs as a test of its own (FaultsChild.*) in a child process started by the test below, so
/// that every static of the program is initialised before it runs and the parent's context
/// stays clean.
int sticky_child_main() {
  auto ctx = Context::retain_primary(0);
  if (!ctx) return std::printf("setup failed: %s\n", ctx.error().message().c_str()), 1;
  auto stream = Stream::create();
  const FamilySpec family{ElemType::bf16, 64, 64, 1, 32, 1};
  auto shape = make_shape(1, 1, 64, 1, 1, 64, 64, 32, 1);
  const auto v = default_variant(Design::reference, family, probe_devices().devices.at(0).arch);
  auto cubin = compile_to_cubin(v);
  if (!stream) return std::printf("setup failed: %s\n", stream.error().message().c_str()), 1;
  if (!cubin) return std::printf("setup failed: compile: %s\n", cubin.error().log.c_str()), 1;
  std::mt19937_64 rng(1);
  auto host = HostProblem::random(shape, family.dtype, SelectionPattern::random, rng);
  auto device = DeviceProblem::upload(host);
  auto loaded = LoadedVariant::load(v, *cubin, runtime_of(shape));
  if (!device) return std::printf("setup failed: upload: %s\n", device.error().message().c_str()), 1;
  if (!loaded) return std::printf("setup failed: load: %s\n", loaded.error().message().c_str()), 1;
  // A valid launch first: the driver, module and plan are fine.
  if (auto ok = loaded->launch(*device, *stream); !ok || !stream->synchronize())
    return std::printf("valid launch failed\n"), 1;
  SelectionParams p = device->params(0);
  p.k = std::uint64_t{1} << 46;  // unmapped
  auto launched = loaded->launch(p, *stream);
  if (!launched) return std::printf("error: %s\n", launched.error().message().c_str()), 0;
  auto synced = stream->synchronize();
  std::printf("error: %s\n", synced ? "none" : synced.error().message().c_str());
  return 0;
}

TEST(FaultsChild, LaunchWithUnmappedK) {
  if (!std::getenv("NSA_GPU_STICKY_CHILD")) GTEST_SKIP() << "runs only as the child of Faults.IllegalAddressIsReportedAsSticky";
  const int rc = sticky_child_main();
  std::fflush(stdout);
  std::_Exit(rc);  // the context is ruined: leave without tearing anything down
}

TEST(Faults, IllegalAddressIsReportedAsSticky) {
  REQUIRE_GPU();
  // In a child process: a sticky error ruins the context of the process that meets it.
  const auto self = std::filesystem::read_symlink("/proc/self/exe").string();
  FILE* pipe = popen(("NSA_GPU_STICKY_CHILD=1 '" + self + "' --gtest_filter=FaultsChild.* 2>&1").c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  std::array<char, 512> buf{};
  while (std::fgets(buf.data(), buf.size(), pipe)) out += buf.data();
  pclose(pipe);
  EXPECT_NE(out.find("CUDA_ERROR_ILLEGAL_ADDRESS"), std::string::npos) << out;
  EXPECT_NE(out.find("sticky: the context is unusable; restart the process"), std::string::npos) << out;
}

}  // namespace
