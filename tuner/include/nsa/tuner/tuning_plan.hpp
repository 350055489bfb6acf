#pragma once
// What to tune next on one device: the tuning plan. A pure function of the configuration and of
// what the store says (verdicts, demand, retune requests, pins), so every rule is tested without
// a GPU or a store (tests/tuner/tuning/tuning_plan_test.cpp).
//
// Sources of work, in the order they are tuned (a family planned for several reasons appears
// once, under the first, with the union of the points):
//   retune   pending operator requests whose scope ("all", the device's arch, a family key)
//            names this device: every point of those families is measured again, current
//            verdicts or not;
//   demand   families clients asked for that have no current verdict here (the store's
//            demand), most-requested first: the demanded points plus the phase's default points;
//   stale    families with verdicts of this GPU model whose class went stale (driver, NVRTC or
//            kernel sources changed): their points again, while the old verdicts are reported
//            as stale;
//   startup  the configured default families (NSA's paper config D_qk=192/D_v=128 and the
//            common D_qk=D_v=128, h=16, block 64, n in {8, 16, 32}, bf16; decode and prefill at a
//            range of batch and T_kv) at every point without a current verdict.
// A point with a current verdict is not planned again (except by a retune), nor is a point this
// process tried recently without getting a verdict (it would fail the same way; a retune or a
// restart tries again).
//
// A pinned arch (SM 8.9 is pinned from the start) gets an empty plan: its pin decides every
// answer. With the experimental override the plan is made as usual and flagged experimental;
// its runs and verdicts are stored experimental and never change an answer.

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "nsa/api/problem.hpp"
#include "nsa/cache/records.hpp"
#include "nsa/cache/verdict_store.hpp"

namespace nsa::tuner {

/// TEST ONLY (docs/tuning.md, "Test fault switch"): a deliberately faulting variant
/// (jit_kernels/kernels/test_fault.cu) added to the candidates of the first point of every
/// tuning pass, so a GPU run can show that the daemon contains it.
enum class TestFault { none, illegal_address, hang, abort };
std::string_view to_string(TestFault);
/// "illegal_address", "hang", "abort"; "" and "none" are none. nullopt for anything else.
std::optional<TestFault> parse_test_fault(std::string_view);

/// A configured family, measured for each of its `n` values (so that the smallest selected
/// length from which sparse wins can be found) and each configured phase.
struct FamilyTemplate {
  api::DType dtype = api::DType::bf16;
  int d_qk = 128, d_v = 128, h = 16, block = 64;
  std::vector<int> n = {8, 16, 32};
  bool operator==(const FamilyTemplate&) const = default;
};

struct PlanConfig {
  /// NSA's paper configuration first, then the common D_qk = D_v = 128 family.
  std::vector<FamilyTemplate> families = {FamilyTemplate{api::DType::bf16, 192, 128, 16, 64, {8, 16, 32}},
                                          FamilyTemplate{api::DType::bf16, 128, 128, 16, 64, {8, 16, 32}}};
  std::vector<api::Phase> phases = {api::Phase::decode, api::Phase::prefill};
  /// Default decode points: batch 1, 8, 64 at T_kv 8K and 32K, H_kv 4 (64 query heads).
  std::vector<api::Point> decode_points = {{1, 4, 1, 8192},  {1, 4, 1, 32768},  {8, 4, 1, 8192},
                                           {8, 4, 1, 32768}, {64, 4, 1, 8192}, {64, 4, 1, 32768}};
  /// Default prefill points: whole prompts of 2K and 4K, and a 1K chunk after 15K of context.
  std::vector<api::Point> prefill_points = {{1, 4, 2048, 2048}, {1, 4, 4096, 4096}, {1, 4, 1024, 16384}};
  int demand_limit = 64;                   // demand rows read, most requested first
  int max_demand_points_per_family = 4;    // demanded points added to a family's defaults
  bool experimental_pinned = false;        // tune pinned archs as experiments
  bool operator==(const PlanConfig&) const = default;

  /// nullopt when usable; else what is wrong, naming the entry ("families[1].n[0]: n=0 ...").
  std::optional<std::string> validate() const;
};

/// Reads a plan configuration object (docs/tuning.md, "Configuration": families, phases,
/// decode_points, prefill_points, demand_limit, max_demand_points_per_family,
/// experimental_pinned; all optional, unknown keys rejected) over `base`.
std::optional<std::string> parse_plan_config(const nlohmann::json&, PlanConfig& base);
nlohmann::json to_json(const PlanConfig&);

/// One family of a plan and the points to measure in it, in order.
struct PlannedFamily {
  api::Family family;
  std::vector<api::Point> points;
  std::string trigger;                    // "retune", "demand", "stale" or "startup"
  std::int64_t demand = 0;                // requests recorded for it
  std::vector<std::int64_t> retune_ids;   // requests it serves
};

struct TuningPlan {
  cache::DeviceClass device_class;
  bool experimental = false;               // tuned on a pinned arch by explicit override
  std::vector<PlannedFamily> families;
  /// Retune requests this plan carries out completely (their scope names this device).
  std::vector<std::int64_t> retune_ids;
  /// What was left out and why, one line each ("sm_89 is pinned: ...", "bf16.dqk72...: D_qk=72
  /// is not a multiple of 16 ...").
  std::vector<std::string> notes;

  std::size_t point_count() const;
  bool empty() const { return families.empty(); }
};

/// What build_plan looks at, read from the store (plan_inputs_from) or made by a test.
struct PlanInputs {
  cache::DeviceClass device_class;
  std::uint64_t memory_bytes = 0;           // the device's; 0 means unknown (no size limit)
  std::optional<cache::Pin> pin;            // the pin of the device's arch, if any
  /// Newest verdicts of every class, stale flags relative to device_class (latest_verdicts).
  std::vector<cache::Verdict> verdicts;
  std::vector<cache::Demand> demand;        // most requested first
  std::vector<cache::RetuneRequest> pending;  // oldest first
  /// (family key, point key) tried by this process recently without a verdict.
  std::set<std::pair<std::string, std::string>> recently_attempted;
};

PlanInputs plan_inputs_from(const cache::VerdictStore&, const cache::DeviceClass&, std::uint64_t memory_bytes,
                            const PlanConfig&);

TuningPlan build_plan(const PlanConfig&, const PlanInputs&);

/// nullopt for a valid retune scope ("all", an arch like "sm_90", a family key); else why not.
std::optional<std::string> validate_scope(const std::string& scope);
/// Whether `scope` names the arch `arch` (a family scope names every arch).
bool scope_names_arch(const std::string& scope, const std::string& arch);
/// Whether `scope` names `family` on `arch`.
bool scope_names(const std::string& scope, const std::string& arch, const api::Family& family);

/// Bytes one copy of a point's inputs and output take (Q, K, V, block_idx, O).
std::uint64_t point_bytes(const api::Family&, const api::Point&);

}  // namespace nsa::tuner
