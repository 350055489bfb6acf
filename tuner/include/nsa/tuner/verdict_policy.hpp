#pragma once
// From measurements to verdicts: the decision rules, as pure functions on recorded measurement
// tables (no GPU, no store), so the tuner, the report and the tests share one definition.
//
// At one shape point the tuner measures the packed-SDPA baseline and every sparse candidate on
// the same inputs. A candidate passes the numerics gate when its error against the fp32
// reference is at most `gate_factor` times the baseline's own error AND at most the dtype's
// absolute bound. The fastest candidate that passes wins the point for `sparse` only when it
// beats the baseline by `margin`; otherwise the point stays `sdpa`. Either way the verdict
// names the best candidate and every rejected candidate keeps its reason.
//
// Example (bf16, margin 1.2, factor 2, baseline 100 us at rel_l2 2e-3):
//   A   33 us  rel_l2 2e-2  -> rejected: 10x the baseline's error (3x faster does not matter)
//   B   80 us  rel_l2 3e-3  -> passes, 1.25x: winner, verdict sparse/B
//   C   90 us  rel_l2 2e-3  -> passes, 1.11x: slower than B
// With B at 90 us instead, the best passing candidate is 1.11x < 1.2x: verdict sdpa (B named).
//
// The selected-length threshold (the seed's `sel_triton_min_L`, measured instead of edited):
// among verdicts of families that differ only in `n`, the smallest `n * block` from which
// sparse wins at every larger measured `n`. "Wins at n" is conservative: every measured point of
// that family chose sparse.

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <vector>

#include "nsa/api/problem.hpp"
#include "nsa/cache/records.hpp"

namespace nsa::tuner {

struct PolicyConfig {
  double margin = 1.2;          // sparse must be at least this many times faster
  double gate_factor = 2.0;     // candidate rel_l2 <= gate_factor * baseline rel_l2
  double bf16_abs_bound = 2e-2; // and <= this absolute rel_l2 for bf16
  double fp16_abs_bound = 5e-3; // ... for fp16

  double abs_bound(api::DType) const;
  /// nullopt when usable; else what is wrong ("margin 0.9 is below 1: sparse would win while
  /// slower than the baseline").
  std::optional<std::string> validate() const;
};

/// A decision that cannot be made from the given table, with what to fix.
struct PolicyError {
  std::string code;     // "bad_config", "empty", "mixed_point", "mixed_run", "bad_family",
                        // "no_baseline", "ambiguous_baseline", "bad_baseline"
  std::string message;
};

/// How one candidate fared.
struct CandidateOutcome {
  enum class Result {
    winner,          // fastest to pass the gate, and beats the margin
    best_below_margin,  // fastest to pass the gate, but below the margin: the point stays sdpa
    slower,          // passed the gate, a faster candidate did too
    gate_relative,   // rel_l2 above gate_factor x the baseline's
    gate_absolute,   // rel_l2 above the dtype's absolute bound
    gate_not_finite, // rel_l2 NaN or infinite
    failed,          // status other than ok (compile_failed, crashed, timeout, ...)
    bad_timing,      // status ok but no positive, finite time
  };
  cache::Measurement measurement;
  Result result = Result::failed;
  double speedup = 0;  // baseline_us / median_us; 0 without a valid time
  std::string reason;  // one line a person can read
  bool passed_gate() const {
    return result == Result::winner || result == Result::best_below_margin || result == Result::slower;
  }
};
std::string to_string(CandidateOutcome::Result);

struct PointDecision {
  /// Ready for VerdictStore::put_verdict: device class and experimental as given, run id of the
  /// measurements, `reason` filled. backend "sparse" only for a winner.
  cache::Verdict verdict;
  cache::Measurement baseline;
  std::vector<CandidateOutcome> candidates;  // every sparse measurement, in input order
};

/// Decides one point from its measurements: exactly one `ok` sdpa measurement (the baseline)
/// and any number of sparse ones, all of one family, point and run. The dtype of the absolute
/// bound comes from the family key. Errors say what is missing or mixed.
std::expected<PointDecision, PolicyError> decide_point(const std::vector<cache::Measurement>& at_point,
                                                       const cache::DeviceClass& device_class,
                                                       bool experimental,
                                                       const PolicyConfig& config = {});

/// Groups a run's measurements by (family, point), in first-appearance order, for decide_point.
std::vector<std::vector<cache::Measurement>> group_by_point(const std::vector<cache::Measurement>&);

/// The threshold of one group of families that differ only in n.
struct SelectedLengthThreshold {
  std::string group;          // the family key with n written "n*": "bf16.dqk128.dv128.h16.blk64.n*.decode"
  int block = 0;
  std::vector<int> measured_n;  // ascending
  std::vector<int> winning_n;   // those where every measured point chose sparse
  /// n * block of the smallest n from which every larger measured n wins; nullopt when the
  /// largest measured n does not win.
  std::optional<std::int64_t> min_selected_length;
};

/// "bf16.dqk128.dv128.h16.blk64.n*.decode"
std::string n_group_key(const api::Family&);

/// Thresholds per n-group, sorted by group key. Pass verdicts of ONE device class (and one
/// experimental flag): the function groups by family only. Verdicts whose family key does not
/// parse are ignored.
std::vector<SelectedLengthThreshold> selected_length_thresholds(const std::vector<cache::Verdict>&);

/// The threshold of the group `family` belongs to; nullopt when never (or family unparsable).
std::optional<std::int64_t> min_selected_length(const std::vector<cache::Verdict>&,
                                                const std::string& family);

}  // namespace nsa::tuner
