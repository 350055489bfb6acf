// The variant catalog (see catalog.hpp). Shared-memory sizes and workspaces come from
// kernels/layout.cuh, the same constexpr functions the kernels carve their memory with, so a
// plan can never reserve less than its kernel uses (and the kernels trap if one ever did).

#include "nsa/jit/catalog.hpp"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "layout.cuh"

namespace nsa::jit {
namespace {

namespace L = nsa_layout;

constexpr std::int64_t kMaxGrid = 2147483647;  // gridDim.x limit; kernels loop past it

/// One knob of a design: its name (as in keys and NSA_KNOB_<NAME>) and its values, the
/// preferred value first.
struct Knob {
  const char* name;
  std::vector<int> values;
};

const std::vector<Knob>& knobs_of(Design d) {
  static const std::vector<Knob> none;
  static const std::vector<Knob> dense = {{"warps", {4, 8}}, {"tile", {64, 128, 32}}, {"stages", {3, 2, 4}}};
  // query_outer adds the L2 hint: evict-first pays in decode (every byte read once) and costs in
  // prefill (neighbouring queries re-read blocks from L2), so it is off by default.
  static const std::vector<Knob> outer = {
      {"warps", {4, 8}}, {"tile", {64, 128, 32}}, {"stages", {3, 2, 4}}, {"evict", {0, 1}}};
  // Two warps with 32-key tiles give split_kv the most CTAs per row when h <= 16; split 2 and
  // stages 4 are for batches that nearly fill the GPU (B=16: 64 rows), where each CTA streams
  // several tiles and wants more of them in flight. Stages 3 first: the default (split 8 of 16
  // tiles) owns two tiles per CTA, and three stages put both in flight at once.
  // Eight warps with 128-key tiles put twice the warps on each tile: at small batch a CTA has one
  // warp per scheduler and is bound by instruction latency, not memory (ncu on the H100, B=1:
  // 6.2 cycles per issued instruction, the same time with inputs in L2 as from DRAM), so more
  // warps per tile shorten each CTA's chain. split_kv_problem() prunes the splits that would
  // leave CTAs without a tile and the rings deeper than a CTA's share.
  // cluster = 1 (sm_90 and newer, split <= 8) makes a row's CTAs one thread-block cluster that
  // merges through distributed shared memory instead of a global workspace and an atomic arrival;
  // it is preferred where it exists, and cluster = 0 stays in the space for the tuner to compare.
  static const std::vector<Knob> split = {{"split", {8, 16, 4, 32, 2}},
                                          {"warps", {4, 2, 8}},
                                          {"tile", {64, 32, 128}},
                                          {"stages", {3, 2, 4}},
                                          {"cluster", {1, 0}}};
  static const std::vector<Knob> prefill = {
      {"qtile", {4, 2, 8, 1}}, {"warps", {4, 8}}, {"tile", {64, 128, 32}}, {"stages", {2, 3}}};
  // prefill_stream: `warps` sets the register class (layout.cuh's register plan), `producers` of
  // them load and the other warps - producers are consumers, one query each; the ring holds whole
  // blocks. On the H100 (docs/performance.md, v7), once the producers' copy loop was lean
  // (block_copy.cuh), 12 warps with 2 producers (10 queries a CTA) and 5 stages were fastest at
  // T = 8192 and 32768 random, one producer at T = 32768 clustered, 4 producers for the paper
  // config (its 192-wide K rows take more copies); every extra stage up to 5 gained 3-13%, and
  // a sixth (Q in registers to make room) lost more than it gained. The preferred values are the
  // D = 128 winners, so an untuned family starts from them; 4 warps fit two CTAs per SM.
  // tma = 1 (sm_90 and newer, D_qk and D_v multiples of 64) fills the ring with the tensor
  // memory accelerator instead: one thread of the one producer warp issues a bulk tensor copy
  // per 64-element panel of a block into 128-byte-swizzled, unpadded slots, so the copies cost no
  // warps, no instruction stream and no padding. It comes first, so that where it exists the
  // default setting uses it (odometer order: its first valid setting is tma1 with producers 1).
  // persist = 1 (tma = 1) launches persistent CTAs, as many as the SMs hold, whose producer warp
  // builds the next tile's union while the ring streams this one; persist = 0 one CTA per tile.
  // On the H200 (docs/performance.md, v9) persist = 1 won only where two CTAs share an SM (4
  // warps, the other CTA hiding the build), by 0.8% at T = 32768 random, and lost 4-13% with one
  // CTA per SM (the one-warp build outlasted the ring), so it is offered only where two fit. On
  // the H100 (v18) the 12-warp setting with persist = 1 and the union built in one warp's
  // registers was 13-17% slower than with persist = 0.
  static const std::vector<Knob> stream = {{"tma", {1, 0}},
                                           {"warps", {12, 16, 8, 4}},
                                           {"producers", {2, 4, 1}},
                                           {"stages", {5, 4, 3, 2}},
                                           {"persist", {0, 1}}};
  // decode_stream: a row's blocks split over `split` CTAs (a cluster when > 1), each streaming
  // its share through a ring of `stages` whole blocks with `producers` loading warps, while
  // `consumers` warps compute a block each. consumers + producers <= 8 keeps Q and a whole
  // 64-key block's scores in registers. The values are those that won somewhere on the H100
  // (docs/performance.md, v7: of 84 settings at B = 1, 16, 128 and the paper config, split 8,
  // one producer and 6 stages never did): split 1 at B >= 16, where a row's 16 blocks already
  // keep HBM busy, split 4 at B = 1; decode_stream_problem() prunes splits beyond a full row's
  // blocks and rings deeper than a CTA's share.
  // tma = 1 as in prefill_stream (one producer warp whose one thread copies each block as the
  // TMA's panels). share = 4: four consumers compute each block together, 16 keys each
  // (share = 1: a consumer computes whole blocks). On the H200 (docs/performance.md, v12) that
  // made the last block's math after its copy a quarter as long, 8.8 against 9.2 us (the best
  // share 1 setting) at B = 16 with one block a row, but where a row has many blocks the 16-key
  // steps cost more than they save (B = 16, n = 16: 17.9 against 16.7 us); share = 2 was within
  // 1% of share = 1 everywhere and is not offered.
  static const std::vector<Knob> decode = {{"tma", {1, 0}},      {"split", {1, 4, 2}},
                                           {"consumers", {4, 2, 6}}, {"producers", {2, 1}},
                                           {"stages", {4, 3, 2, 5}}, {"share", {1, 4}}};
  // prefill_group: prefill_stream with tma = 1 and one producer warp, whose consumer warps form
  // (warps - 1) / 4 warpgroups of four queries computing each block together with wgmma
  // (sm_90a). 9 warps: two groups, one CTA per SM; 5 warps: one group, two CTAs per SM (the
  // warps = 5 rule in prefill_group_problem). 13 warps are not offered: four warps then share a scheduler's 16384
  // registers, 128 a thread, and ptxas spills 736 bytes (sm_90a, D 128 and 192). Three groups
  // with a producer warpgroup that hands them its registers (16 warps, setmaxnreg to 160 and
  // 32) compiled with 68 bytes of spills and were 4-5% slower on the H200 (v11, commit ec2ec9b).
  // Measured on the H200 (docs/performance.md, v10): 5 warps (two CTAs per SM, 2 stages) were
  // fastest everywhere; one group alone on an SM (5 warps, 3-5 stages) was 1.6x slower. With
  // 5 warps a block's softmax runs while the previous block's P V does (v12: 1.04-1.06x, with
  // the ring's K and V handed over apart). persist = 1 adds a warp that builds the next tile's
  // union and, where the CTAs an SM runs still fit, a second Q tile per group (v13: the fastest
  // setting at T = 32768 clustered, 1.07x over persist = 0). With 9 warps each group overlaps its
  // own blocks likewise, over a union ordered so that they are consecutive (v15: persist = 1
  // 1.15-1.18x over the best 9-warp setting before, still 1.06-1.17x slower than 5 warps on the
  // H200, where sharing a ring between two groups, 40% less L2 traffic, does not pay).
  static const std::vector<Knob> group = {{"warps", {5, 9}}, {"stages", {2, 5, 4, 3}}, {"persist", {0, 1}}};
  switch (d) {
    case Design::reference: return none;
    case Design::sdpa_packed: return dense;
    case Design::query_outer: return outer;
    case Design::split_kv: return split;
    case Design::prefill_shared: return prefill;
    case Design::prefill_stream: return stream;
    case Design::decode_stream: return decode;
    case Design::prefill_group: return group;
  }
  return none;
}

/// The compute capability of "sm_90" / "sm_90a" as 90, or -1.
int arch_number(const std::string& arch) {
  if (arch.size() < 5 || arch.compare(0, 3, "sm_") != 0) return -1;
  int v = 0;
  std::size_t i = 3;
  for (; i < arch.size() && arch[i] >= '0' && arch[i] <= '9'; ++i) v = v * 10 + (arch[i] - '0');
  if (i == 3 || (i != arch.size() && !(i + 1 == arch.size() && arch[i] == 'a'))) return -1;
  return v;
}

/// The value of knob `name` of `v`, or -1 when its design has none. prefill_group is
/// prefill_stream with tma = 1 and one producer warp fixed by its source (prefill_group.cu), so
/// it answers those two as prefill_stream's rules and plans expect.
int knob_value(const KernelVariant& v, const char* name) {
  if (v.design == Design::prefill_group && (std::string_view(name) == "tma" || std::string_view(name) == "producers"))
    return 1;
  return v.knob(name, -1);
}

/// Rows of M for the design's CTA engine.
int engine_rows(const KernelVariant& v) {
  return v.design == Design::prefill_shared ? knob_value(v, "qtile") * v.spec.h : v.spec.h;
}

/// A rough register count of the engine per thread: per 16-row tile the O and S accumulators
/// and the A fragments in flight, the Q fragments when they stay in registers (the Q_IN_REGS
/// rule of attention_core.cuh), and ~64 for addresses and softmax state. Calibrated on ptxas
/// for sm_90 (D 128, h 16): estimates up to 232 compiled without spills, above 240 spilled.
int estimated_registers(const FamilySpec& s, int mt, int warps, int tile) {
  const int mtw = mt / L::warps_m(mt, warps);
  const int tkw = tile / L::warps_n(mt, warps);
  const bool q_in_regs = mtw * s.d_qk <= 128 || (mtw == 1 && s.d_qk <= 192);
  return mtw * (s.d_v / 2 + tkw / 2 + 8) + (q_in_regs ? mtw * s.d_qk / 4 : 0) + 64;
}
constexpr int kRegisterBudget = 232;

/// Threads of the engine launch of `v`: its warps; prefill_group with persist = 1 has one warp
/// more, which builds the next tile's union while the producer streams this one (prefill_stream.cu).
unsigned engine_threads(const KernelVariant& v) {
  const int builder = v.design == Design::prefill_group && knob_value(v, "persist") == 1 ? 1 : 0;
  return 32u * static_cast<unsigned>(std::max(1, knob_value(v, "warps")) + builder);
}

/// Dynamic shared memory of the engine launch of `v` (0 for designs without one).
std::int64_t engine_smem(const KernelVariant& v) {
  const FamilySpec& s = v.spec;
  const int warps = knob_value(v, "warps"), tile = knob_value(v, "tile"), stages = knob_value(v, "stages");
  switch (v.design) {
    case Design::reference: return 0;
    case Design::sdpa_packed: return L::packed_attention_smem(s.d_qk, s.d_v, s.h, warps, tile, stages);
    case Design::query_outer: return L::query_outer_smem(s.d_qk, s.d_v, s.h, s.n, warps, tile, stages);
    case Design::split_kv:
      return L::split_kv_smem(s.d_qk, s.d_v, s.h, s.n, warps, tile, stages, knob_value(v, "cluster"));
    case Design::prefill_shared:
      return L::prefill_shared_smem(s.d_qk, s.d_v, s.h, s.n, knob_value(v, "qtile"), warps, tile, stages);
    case Design::prefill_stream:
      return L::prefill_stream_smem(s.d_qk, s.d_v, s.n, s.block, warps, knob_value(v, "producers"), stages,
                                    knob_value(v, "tma"));
    case Design::decode_stream:
      return L::decode_stream_smem(s.d_qk, s.d_v, s.h, s.n, s.block, knob_value(v, "consumers"), stages,
                                   knob_value(v, "split"), knob_value(v, "tma"));
    case Design::prefill_group:
      return L::prefill_group_smem(s.d_qk, s.d_v, s.n, s.block, warps, stages, knob_value(v, "persist"));
  }
  return 0;
}

/// CTAs of `v` one SM holds at once, counted conservatively (so a persistent grid of
/// sm_count times this never needs a second wave): the 228 KiB of shared memory an sm_90 SM has
/// (1 KiB reserved per CTA), 2048 threads, and 65536 registers at the register class's budget.
std::int64_t resident_ctas_per_sm(const KernelVariant& v) {
  const std::int64_t smem = engine_smem(v) + L::kSmemReservedPerCta;
  const std::int64_t threads = engine_threads(v);
  const std::int64_t by_smem = L::kSmemPerSm / smem;
  const std::int64_t by_threads = 2048 / threads;
  // prefill_group's consumers take 164 registers (ptxas, sm_90a): 168 a thread, 12 warps an SM.
  const std::int64_t by_registers = v.design == Design::prefill_group
                                        ? 12 / (threads / 32)
                                        : 65536 / (threads * L::stream_register_budget(knob_value(v, "warps")));
  return std::max<std::int64_t>(1, std::min({by_smem, by_threads, by_registers}));
}

/// Why a split_kv setting is not worth offering, or "" when it is. Both rules count the tiles of
/// a full row (n * block keys: every selected block visible, as in decode), the case the design
/// is for; rows with fewer visible keys (causal cuts, -1 slots) still run correctly, with some
/// CTAs empty.
///  - split <= tiles: a CTA without a tile still pays the whole chain (block_idx read, arrival,
///    a slot on an SM) and, at B=16 with split 32, half the grid was such CTAs
///    (docs/kernels.md, "Why large splits were slow").
///  - stages - 1 <= tiles per CTA (stages 2 always allowed): the ring keeps stages - 1 tiles in
///    flight, so a deeper one than a CTA's share adds nothing but shared memory, which costs
///    CTAs per SM.
std::string split_kv_problem(const KernelVariant& v) {
  const std::int64_t keys = static_cast<std::int64_t>(v.spec.n) * v.spec.block;
  const int split = knob_value(v, "split"), tile = knob_value(v, "tile"), stages = knob_value(v, "stages");
  const std::int64_t tiles = (keys + tile - 1) / tile;
  if (split > tiles)
    return "split=" + std::to_string(split) + " exceeds the " + std::to_string(tiles) + " tiles of " +
           std::to_string(tile) + " keys in a full row (n*block = " + std::to_string(keys) +
           " keys): some CTAs would own no tile; use a smaller split or tile";
  if (knob_value(v, "cluster") == 1) {
    if (arch_number(v.arch) < 90)
      return "cluster=1 needs thread-block clusters and distributed shared memory (sm_90 or newer); " + v.arch +
             " has neither: use cluster=0";
    if (split > 8)
      return "cluster=1 makes the split=" + std::to_string(split) +
             " CTAs of a row one cluster, and clusters of more than 8 CTAs are not portable: use split <= 8";
  }
  const std::int64_t per_cta = (tiles + split - 1) / split;
  if (stages > 2 && stages - 1 > per_cta)
    return "stages=" + std::to_string(stages) + " keeps " + std::to_string(stages - 1) +
           " tiles in flight, but a CTA of split=" + std::to_string(split) + " owns at most " +
           std::to_string(per_cta) + " of the " + std::to_string(tiles) +
           " tiles: the deeper ring only costs shared memory (CTAs per SM)";
  return "";
}

/// Why the tma knob of a streaming design (prefill_stream, decode_stream) cannot be 1 with these
/// settings, or "" when it can (or is 0). One thread issues every copy of a block, so the design
/// has one producer warp; the copies are 128-byte-swizzled boxes 64 elements wide.
std::string stream_tma_problem(const KernelVariant& v) {
  if (knob_value(v, "tma") != 1) return "";
  if (arch_number(v.arch) < 90)
    return "tma=1 copies blocks with the tensor memory accelerator (sm_90 or newer); " + v.arch +
           " has none: use tma=0";
  if (v.spec.d_qk % 64 != 0 || v.spec.d_v % 64 != 0)
    return "tma=1 copies 64-element panels (128-byte swizzle), and D_qk=" + std::to_string(v.spec.d_qk) +
           ", D_v=" + std::to_string(v.spec.d_v) + " are not both multiples of 64: use tma=0";
  if (knob_value(v, "producers") != 1)
    return "tma=1 issues every copy from one thread of one producer warp; producers=" +
           std::to_string(knob_value(v, "producers")) + " would leave warps idle: use producers=1";
  return "";
}

/// Why a prefill_stream setting cannot run, or "" when it can. Its warps are producers and one
/// consumer per query, each consumer a one-warp engine of 16 rows: no engine arrangement to
/// check, but h must fit those rows. Registers (layout.cuh's register plan): a consumer holds O
/// (D_v / 2), S (step / 2), Q (D_qk / 4) when it stays in registers, and ~40 more (ptxas on sm_90,
/// D 128 and 192: 211-255 of 255 at 4 and 8 warps, 168 of 168 at 12 with spills of 0-52 bytes in
/// some settings, 127 of 128 at 16).
std::string prefill_stream_problem(const KernelVariant& v) {
  const FamilySpec& s = v.spec;
  if (s.h > 16)
    return "h=" + std::to_string(s.h) + " query heads per group exceed the 16 rows of a prefill_stream consumer "
           "warp (one warp per query); use prefill_shared or query_outer";
  const int warps = knob_value(v, "warps"), producers = knob_value(v, "producers");
  if (producers >= warps)
    return "producers=" + std::to_string(producers) + " of warps=" + std::to_string(warps) +
           " leave no consumer warp: use fewer producers or more warps";
  if (std::string problem = stream_tma_problem(v); !problem.empty()) return problem;
  if (knob_value(v, "persist") == 1 && knob_value(v, "tma") != 1)
    return "persist=1 overlaps tiles by having the TMA producer warp build the next tile's union; with cp.async "
           "producers (tma=0) no warp is free for it: use persist=0";
  if (knob_value(v, "persist") == 1 && resident_ctas_per_sm(v) < 2)
    return "persist=1 with one CTA per SM was 4-13% slower than persist=0 on the H200, and 13-17% on the H100 with "
           "the union built in registers (the producer warp's build stalls the ring, and no second CTA hides it): it "
           "is offered where two CTAs share an SM";
  if (knob_value(v, "tma") == 1 && warps > 12)
    return "tma=1 with warps=" + std::to_string(warps) + " spills: its pipelined loop does not fit the 128 registers "
           "a thread has at 16 warps (ptxas on sm_90: 88-260 bytes of spills): use warps <= 12";
  const int regs = s.d_v / 2 + L::stream_chunk(warps, s.block) / 2 +
                   (L::stream_q_in_registers(warps) ? s.d_qk / 4 : 0) + 40;
  const int budget = L::stream_register_budget(warps);
  if (regs > budget)
    return "a consumer warp needs about " + std::to_string(regs) + " registers per thread; with warps=" +
           std::to_string(warps) + " a thread has " + std::to_string(budget) + ": use fewer warps";
  const std::int64_t smem = engine_smem(v);
  if (smem > max_dynamic_shared_bytes(v.arch))
    return "needs " + std::to_string(smem) + " bytes of shared memory per CTA, " + v.arch + " allows " +
           std::to_string(max_dynamic_shared_bytes(v.arch)) + ": use fewer stages or warps";
  return "";
}

/// Why a prefill_group setting cannot run, or "" when it can. Its consumer warpgroups compute a
/// block's scores as one m64n64 wgmma over the TMA's swizzled ring (attention_wgmma.cuh), which
/// fixes the arch (wgmma is an sm_90a instruction: Hopper only), the block (64 keys), the head
/// dims (64-element panels; O of at most 128 columns in registers) and h <= 16 (16 rows a query).
std::string prefill_group_problem(const KernelVariant& v) {
  const FamilySpec& s = v.spec;
  if (arch_number(v.arch) != 90)
    return "prefill_group computes with wgmma, an instruction of sm_90a (Hopper) only; " + v.arch +
           " has none: use prefill_stream";
  if (s.h > 16)
    return "h=" + std::to_string(s.h) + " query heads per group exceed the 16 rows a prefill_group query has in its "
           "warpgroup's M = 64 tile; use prefill_shared or query_outer";
  if (s.block != 64)
    return "prefill_group computes a block's scores as one m64n64 wgmma, so block must be 64, not " +
           std::to_string(s.block) + "; use prefill_stream";
  if (s.d_qk % 64 != 0 || (s.d_v != 64 && s.d_v != 128))
    return "prefill_group reads 64-element panels and keeps O in registers: D_qk a multiple of 64 and D_v 64 or 128 "
           "(got D_qk=" + std::to_string(s.d_qk) + ", D_v=" + std::to_string(s.d_v) + "); use prefill_stream";
  const std::int64_t smem = engine_smem(v);
  if (smem > max_dynamic_shared_bytes(v.arch))
    return "needs " + std::to_string(smem) + " bytes of shared memory per CTA, " + v.arch + " allows " +
           std::to_string(max_dynamic_shared_bytes(v.arch)) + ": use fewer stages or warps";
  if (knob_value(v, "warps") == 5 && resident_ctas_per_sm(v) < 2)
    return "warps=5 is the setting whose CTAs share an SM two at a time, and " + std::to_string(smem) +
           " bytes of shared memory per CTA leave room for one (one warpgroup alone on an SM was 1.6x slower on the "
           "H200): use stages=2";
  return "";
}

/// Why a decode_stream setting cannot run or is not worth offering, or "" when it can. Its
/// consumers are one-warp engines of 16 rows (h <= 16) with Q and a step's scores in registers,
/// which the register plan allows up to 8 warps (consumers + producers). Like split_kv, it counts
/// the blocks of a full row (n: every selected block visible, as in decode): a split beyond them
/// leaves CTAs without a block, and a ring deeper than a CTA's share only costs shared memory.
std::string decode_stream_problem(const KernelVariant& v) {
  const FamilySpec& s = v.spec;
  if (s.h > 16)
    return "h=" + std::to_string(s.h) + " query heads per group exceed the 16 rows of a decode_stream consumer "
           "warp; use split_kv or query_outer";
  const int split = knob_value(v, "split"), consumers = knob_value(v, "consumers"),
            producers = knob_value(v, "producers"), stages = knob_value(v, "stages");
  const int warps = consumers + producers;
  if (std::string problem = stream_tma_problem(v); !problem.empty()) return problem;
  if (knob_value(v, "tma") == 0 && producers == 1)
    return "producers=1 with cp.async copies (tma=0) never won on the H100 (docs/performance.md, v7): use "
           "producers=2";
  if (warps > 8)
    return "consumers=" + std::to_string(consumers) + " and producers=" + std::to_string(producers) +
           " make more than 8 warps; a consumer keeps Q and a block's scores in registers, which needs the 255 "
           "registers a thread has up to 8 warps";
  const int share = knob_value(v, "share");
  if (consumers % share != 0)
    return "share=" + std::to_string(share) + " does not divide consumers=" + std::to_string(consumers) +
           ": the consumers form teams of share warps";
  if (s.block % (16 * share) != 0)
    return "share=" + std::to_string(share) + " splits a block of " + std::to_string(s.block) +
           " keys into parts that are not whole 16-key MMA steps: use a smaller share";
  const int regs = s.d_v / 2 + L::decode_stream_step(warps, s.block, share) / 2 + s.d_qk / 4 + 40;
  if (regs > L::stream_register_budget(warps))
    return "a consumer warp needs about " + std::to_string(regs) + " registers per thread, more than the " +
           std::to_string(L::stream_register_budget(warps)) + " a thread has: this family's D is too large for it";
  if (split > 1 && arch_number(v.arch) < 90)
    return "split=" + std::to_string(split) + " makes a row's CTAs a thread-block cluster that merges through "
           "distributed shared memory (sm_90 or newer); " + v.arch + " has neither: use split=1";
  if (split > s.n)
    return "split=" + std::to_string(split) + " exceeds the n=" + std::to_string(s.n) +
           " blocks of a full row: some CTAs would own no block; use a smaller split";
  const int per_cta = (s.n + split - 1) / split;
  if (stages > 2 && stages > per_cta)
    return "stages=" + std::to_string(stages) + " exceeds the " + std::to_string(per_cta) +
           " blocks a CTA of split=" + std::to_string(split) + " owns: the deeper ring only costs shared memory";
  const std::int64_t smem = engine_smem(v);
  if (smem > max_dynamic_shared_bytes(v.arch))
    return "needs " + std::to_string(smem) + " bytes of shared memory per CTA, " + v.arch + " allows " +
           std::to_string(max_dynamic_shared_bytes(v.arch)) + ": use fewer stages";
  return "";
}

/// Why `v`'s knobs are not a setting the catalog offers on its arch, or "" when they are.
std::string setting_problem(const KernelVariant& v) {
  if (auto reason = unsupported_reason(v.spec)) return *reason;
  const int cc = arch_number(v.arch);
  if (cc < 0) return "arch \"" + v.arch + "\" is not of the form sm_XY or sm_XYa";
  const auto& knobs = knobs_of(v.design);
  if (v.knobs.size() != knobs.size()) {
    return std::string(to_string(v.design)) + " takes " + std::to_string(knobs.size()) + " knobs, the variant has " +
           std::to_string(v.knobs.size());
  }
  for (std::size_t i = 0; i < knobs.size(); ++i) {
    const auto& [name, value] = v.knobs[i];
    if (name != knobs[i].name)
      return "knob " + std::to_string(i) + " of " + std::string(to_string(v.design)) + " is \"" + knobs[i].name +
             "\", not \"" + name + "\"";
    if (std::find(knobs[i].values.begin(), knobs[i].values.end(), value) == knobs[i].values.end())
      return "knob " + name + "=" + std::to_string(value) + " is not one of the values " +
             std::string(to_string(v.design)) + " offers";
  }
  if (v.design == Design::reference) return "";
  if (cc < 80) return "the tensor-core designs need sm_80 or newer (mma.sync bf16, cp.async); " + v.arch + " is older";
  if (v.design == Design::split_kv)
    if (std::string problem = split_kv_problem(v); !problem.empty()) return problem;
  if (v.design == Design::prefill_stream) return prefill_stream_problem(v);
  if (v.design == Design::decode_stream) return decode_stream_problem(v);
  if (v.design == Design::prefill_group) return prefill_group_problem(v);
  const int rows = engine_rows(v);
  if (rows > L::kMaxRows)
    return "qtile*h = " + std::to_string(rows) + " rows exceed the 128 rows one CTA holds";
  const int mt = L::m_tiles(rows), warps = knob_value(v, "warps"), tile = knob_value(v, "tile");
  if (!L::core_valid(mt, warps, tile))
    return "warps=" + std::to_string(warps) + " and tile=" + std::to_string(tile) + " give a warp fewer than 16 key "
           "columns or more than two 16-row MMA tiles for " + std::to_string(rows) + " rows";
  if (estimated_registers(v.spec, mt, warps, tile) > kRegisterBudget)
    return "the accumulators of this setting need about " + std::to_string(estimated_registers(v.spec, mt, warps, tile)) +
           " registers per thread; more than " + std::to_string(kRegisterBudget) + " spill";
  const std::int64_t smem = engine_smem(v);
  if (smem > max_dynamic_shared_bytes(v.arch))
    return "needs " + std::to_string(smem) + " bytes of shared memory per CTA, " + v.arch + " allows " +
           std::to_string(max_dynamic_shared_bytes(v.arch));
  return "";
}

bool check_dim(const char* what, int value, std::string& out) {
  if (value >= 16 && value <= 256 && value % 16 == 0) return true;
  out = std::string(what) + "=" + std::to_string(value) +
        " is not a multiple of 16 in [16, 256]: the kernels' MMA tiles are 16 elements wide; serve this family with "
        "the SDPA fallback";
  return false;
}

}  // namespace

std::string_view source_for(Design d) {
  switch (d) {
    case Design::reference: return "reference.cu";
    case Design::sdpa_packed: return "sdpa_packed.cu";
    case Design::query_outer: return "query_outer.cu";
    case Design::split_kv: return "split_kv.cu";
    case Design::prefill_shared: return "prefill_shared.cu";
    case Design::prefill_stream: return "prefill_stream.cu";
    case Design::decode_stream: return "decode_stream.cu";
    case Design::prefill_group: return "prefill_group.cu";
  }
  return "";
}

const std::vector<Design>& all_designs() {
  static const std::vector<Design> designs = {Design::reference,      Design::sdpa_packed,    Design::query_outer,
                                              Design::split_kv,       Design::prefill_shared, Design::prefill_stream,
                                              Design::decode_stream,  Design::prefill_group};
  return designs;
}

std::string design_names(bool sparse_only) {
  std::string out;
  for (Design d : all_designs()) {
    if (sparse_only && !is_sparse(d)) continue;
    if (!out.empty()) out += ", ";
    out += to_string(d);
  }
  return out;
}

std::optional<std::string> unsupported_reason(const FamilySpec& s) {
  std::string out;
  if (!check_dim("D_qk", s.d_qk, out) || !check_dim("D_v", s.d_v, out)) return out;
  if (s.h < 1 || s.h > 64)
    return "h=" + std::to_string(s.h) + " query heads per group is outside [1, 64]; no design holds more than 64 "
           "heads of a group in one CTA";
  if (s.block < 16 || s.block > 256 || (s.block & (s.block - 1)) != 0)
    return "block=" + std::to_string(s.block) + " is not a power of two in [16, 256]";
  if (s.n < 1 || s.n > 128) return "n=" + std::to_string(s.n) + " selected blocks is outside [1, 128]";
  return std::nullopt;
}

int max_dynamic_shared_bytes(const std::string& arch) {
  switch (arch_number(arch)) {
    case 90:
    case 100: return 227 * 1024;  // H100 / B200: 228 KiB per SM, 1 KiB reserved per CTA
    case 80:
    case 87: return 163 * 1024;   // A100 / Orin
    case 86:
    case 89:
    case 120: return 99 * 1024;   // consumer Ampere / Ada / Blackwell
    default: return 48 * 1024;
  }
}

std::vector<KernelVariant> variants_for(const FamilySpec& spec, const std::string& arch, Design design) {
  std::vector<KernelVariant> out;
  if (unsupported_reason(spec)) return out;
  const auto& knobs = knobs_of(design);
  // Odometer over the knob values, the first knob varying slowest, so the preferred value of
  // every knob comes first and the first valid setting is the design's default.
  std::vector<std::size_t> pos(knobs.size(), 0);
  for (;;) {
    KernelVariant v;
    v.design = design;
    v.spec = spec;
    v.arch = arch;
    for (std::size_t i = 0; i < knobs.size(); ++i) v.knobs.emplace_back(knobs[i].name, knobs[i].values[pos[i]]);
    if (setting_problem(v).empty()) out.push_back(std::move(v));
    std::size_t i = knobs.size();
    while (i > 0) {
      --i;
      if (++pos[i] < knobs[i].values.size()) break;
      pos[i] = 0;
      if (i == 0) return out;
    }
    if (knobs.empty()) return out;
  }
}

std::vector<KernelVariant> all_variants(const FamilySpec& spec, const std::string& arch) {
  std::vector<KernelVariant> out;
  for (Design d : all_designs()) {
    auto v = variants_for(spec, arch, d);
    out.insert(out.end(), std::make_move_iterator(v.begin()), std::make_move_iterator(v.end()));
  }
  return out;
}

KernelVariant default_variant(Design design, const FamilySpec& spec, const std::string& arch) {
  auto v = variants_for(spec, arch, design);
  if (!v.empty()) return v.front();
  KernelVariant nominal;
  nominal.design = design;
  nominal.spec = spec;
  nominal.arch = arch;
  for (const Knob& k : knobs_of(design)) nominal.knobs.emplace_back(k.name, k.values.front());
  return nominal;
}

unsigned shared_bytes_for(const KernelVariant& v) {
  switch (v.design) {
    case Design::reference: return static_cast<unsigned>(L::reference_smem(v.spec.d_qk));
    case Design::sdpa_packed:
      return static_cast<unsigned>(std::max<std::int64_t>(L::gather_smem(v.spec.n), engine_smem(v)));
    default: return static_cast<unsigned>(engine_smem(v));
  }
}

namespace {

/// The tensor maps a streaming design's launch takes: K's and V's, boxes of one block, when tma = 1.
std::vector<TensorMapArg> stream_tensor_maps(const KernelVariant& v) {
  if (knob_value(v, "tma") != 1) return {};
  const auto rows = static_cast<unsigned>(v.spec.block);
  return {TensorMapArg{TensorMapArg::Operand::k, static_cast<unsigned>(v.spec.d_qk), rows},
          TensorMapArg{TensorMapArg::Operand::v, static_cast<unsigned>(v.spec.d_v), rows}};
}

}  // namespace

LaunchPlan plan_for(const KernelVariant& v, const RuntimeShape& shape) {
  if (std::string problem = setting_problem(v); !problem.empty())
    throw std::invalid_argument("no launch plan for " + v.key() + ": " + problem);
  if (shape.batch < 1 || shape.t_q < 1 || shape.t_kv < 1 || shape.h_kv < 1)
    throw std::invalid_argument("no launch plan for " + v.key() + ": batch, T_q, T_kv and H_kv must be >= 1 (got B=" +
                                std::to_string(shape.batch) + " T_q=" + std::to_string(shape.t_q) + " T_kv=" +
                                std::to_string(shape.t_kv) + " H_kv=" + std::to_string(shape.h_kv) + ")");
  const FamilySpec& s = v.spec;
  const std::int64_t rows = shape.batch * shape.h_kv * shape.t_q;  // (b, g, t) rows
  auto launch = [](const char* entry, std::int64_t ctas, unsigned threads, std::int64_t smem) {
    Launch l;
    l.entry = entry;
    l.grid[0] = static_cast<unsigned>(std::clamp<std::int64_t>(ctas, 1, kMaxGrid));
    l.block[0] = threads;
    l.shared_bytes = static_cast<unsigned>(smem);
    return l;
  };
  const unsigned engine_threads = nsa::jit::engine_threads(v);
  LaunchPlan plan;
  switch (v.design) {
    case Design::reference:
      plan.launches.push_back(launch("nsa_reference", rows * s.h, L::kReferenceThreads, L::reference_smem(s.d_qk)));
      break;
    case Design::sdpa_packed:
      plan.launches.push_back(launch("nsa_sdpa_gather", rows, L::kGatherThreads, L::gather_smem(s.n)));
      plan.launches.push_back(launch("nsa_sdpa_attention", rows, engine_threads, engine_smem(v)));
      plan.workspace_bytes = static_cast<std::uint64_t>(L::packed_workspace_bytes(rows, s.d_qk, s.d_v, s.block, s.n));
      break;
    case Design::query_outer:
      plan.launches.push_back(launch("nsa_query_outer", rows, engine_threads, engine_smem(v)));
      break;
    case Design::split_kv: {
      const int split = knob_value(v, "split");
      // One launch; the row's partials are merged by its cluster (cluster = 1: no workspace) or
      // by its last CTA to arrive (split_kv.cu). The grid stays a multiple of split, so a
      // cluster never straddles two rows when the kernel loops past the grid limit.
      Launch l = launch("nsa_split_kv", rows * split, engine_threads, engine_smem(v));
      l.grid[0] = static_cast<unsigned>(std::min<std::int64_t>(rows * split, kMaxGrid / split * split));
      plan.launches.push_back(l);
      if (knob_value(v, "cluster") == 0)
        plan.workspace_bytes = static_cast<std::uint64_t>(L::split_workspace_bytes(rows, split, s.h, s.d_v));
      break;
    }
    case Design::prefill_shared: {
      const int qtile = knob_value(v, "qtile");
      const std::int64_t items = shape.batch * shape.h_kv * ((shape.t_q + qtile - 1) / qtile);
      plan.launches.push_back(launch("nsa_prefill_shared", items, engine_threads, engine_smem(v)));
      break;
    }
    case Design::prefill_stream:
    case Design::prefill_group: {
      const int qtile = knob_value(v, "warps") - knob_value(v, "producers");  // consumer warps, a query each
      const std::int64_t items = shape.batch * shape.h_kv * ((shape.t_q + qtile - 1) / qtile);
      // persist = 1 runs persistent CTAs that overlap one item's union build with another's
      // stream: as many as the SMs hold at once (when the device is known), each looping over items.
      std::int64_t ctas = items;
      if (knob_value(v, "persist") == 1 && shape.sm_count > 0)
        ctas = std::min<std::int64_t>(items, static_cast<std::int64_t>(shape.sm_count) * resident_ctas_per_sm(v));
      Launch l = launch(v.design == Design::prefill_group ? "nsa_prefill_group" : "nsa_prefill_stream", ctas,
                        engine_threads, engine_smem(v));
      l.tensor_maps = stream_tensor_maps(v);
      plan.launches.push_back(l);
      break;
    }
    case Design::decode_stream: {
      // One launch; a row's split CTAs are one cluster, and the grid stays a multiple of split
      // so that a cluster never straddles two rows when the kernel loops past the grid limit.
      const int split = knob_value(v, "split");
      const unsigned threads = 32u * static_cast<unsigned>(knob_value(v, "consumers") + knob_value(v, "producers"));
      Launch l = launch("nsa_decode_stream", rows * split, threads, engine_smem(v));
      l.grid[0] = static_cast<unsigned>(std::min<std::int64_t>(rows * split, kMaxGrid / split * split));
      l.tensor_maps = stream_tensor_maps(v);
      plan.launches.push_back(l);
      break;
    }
  }
  return plan;
}

}  // namespace nsa::jit
