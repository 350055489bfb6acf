#include "nsa/tuner/verdict_policy.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <utility>

namespace nsa::tuner {

namespace {

std::string fmt(const char* format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}

std::string err(double v) { return std::isfinite(v) ? fmt("%.2e", v) : std::string("NaN"); }
std::string times(double v) { return fmt("%.2fx", v); }

PolicyError policy_error(std::string code, std::string message) {
  return PolicyError{std::move(code), std::move(message)};
}

std::string label(const cache::Measurement& m) {
  return m.variant.empty() ? std::string("(unnamed variant)") : m.variant;
}

}  // namespace

double PolicyConfig::abs_bound(api::DType dtype) const {
  return dtype == api::DType::fp16 ? fp16_abs_bound : bf16_abs_bound;
}

std::optional<std::string> PolicyConfig::validate() const {
  if (!std::isfinite(margin) || margin < 1.0)
    return "margin " + fmt("%g", margin) +
           " is below 1: sparse would win while slower than the baseline; use 1.2 unless you "
           "have measured reasons";
  if (!std::isfinite(gate_factor) || gate_factor < 1.0)
    return "gate factor " + fmt("%g", gate_factor) +
           " is below 1: a candidate would have to beat the baseline's own numerics; use 2";
  if (!(bf16_abs_bound > 0) || !(fp16_abs_bound > 0) || !std::isfinite(bf16_abs_bound) ||
      !std::isfinite(fp16_abs_bound))
    return "absolute error bounds must be positive and finite (defaults: bf16 2e-2, fp16 5e-3)";
  return std::nullopt;
}

std::string to_string(CandidateOutcome::Result r) {
  using R = CandidateOutcome::Result;
  switch (r) {
    case R::winner: return "winner";
    case R::best_below_margin: return "best_below_margin";
    case R::slower: return "slower";
    case R::gate_relative: return "gate_relative";
    case R::gate_absolute: return "gate_absolute";
    case R::gate_not_finite: return "gate_not_finite";
    case R::failed: return "failed";
    case R::bad_timing: return "bad_timing";
  }
  return "unknown";
}

std::expected<PointDecision, PolicyError> decide_point(const std::vector<cache::Measurement>& at_point,
                                                       const cache::DeviceClass& device_class,
                                                       bool experimental, const PolicyConfig& config) {
  using R = CandidateOutcome::Result;
  if (auto problem = config.validate()) return std::unexpected(policy_error("bad_config", *problem));
  if (at_point.empty())
    return std::unexpected(policy_error("empty", "no measurements to decide from"));

  const cache::Measurement& first = at_point.front();
  for (const auto& m : at_point) {
    if (m.family != first.family || m.point != first.point)
      return std::unexpected(policy_error(
          "mixed_point", "measurements of " + first.family + " @ " + first.point + " and " +
                             m.family + " @ " + m.point +
                             " were passed together: decide one point at a time (group_by_point)"));
    if (m.run_id != first.run_id)
      return std::unexpected(policy_error(
          "mixed_run", "measurements of runs " + std::to_string(first.run_id) + " and " +
                           std::to_string(m.run_id) +
                           " at one point: the gate compares errors on the same inputs, so "
                           "baseline and candidates must come from one run"));
  }
  auto family = api::Family::parse(first.family);
  if (!family)
    return std::unexpected(policy_error(
        "bad_family", "family key '" + first.family +
                          "' does not parse (expected like bf16.dqk128.dv128.h16.blk64.n16.decode)"));

  // The baseline: exactly one ok sdpa measurement.
  const cache::Measurement* baseline = nullptr;
  std::string failed_baselines;
  for (const auto& m : at_point) {
    if (m.backend != "sdpa") continue;
    if (m.status != cache::MeasurementStatus::ok) {
      failed_baselines += (failed_baselines.empty() ? "" : ", ") + cache::to_string(m.status);
      continue;
    }
    if (baseline)
      return std::unexpected(policy_error(
          "ambiguous_baseline", "two ok sdpa measurements at " + first.family + " @ " +
                                    first.point + ": record the baseline once per point"));
    baseline = &m;
  }
  if (!baseline)
    return std::unexpected(policy_error(
        "no_baseline", "no ok sdpa baseline at " + first.family + " @ " + first.point +
                           (failed_baselines.empty() ? std::string(" (none measured)")
                                                     : " (baseline " + failed_baselines + ")") +
                           ": without it no candidate can be judged; the point stays untuned"));
  if (!(baseline->median_us > 0) || !std::isfinite(baseline->median_us) ||
      !std::isfinite(baseline->rel_l2) || baseline->rel_l2 < 0)
    return std::unexpected(policy_error(
        "bad_baseline", "the sdpa baseline at " + first.family + " @ " + first.point +
                            " has time " + fmt("%g", baseline->median_us) + " us and rel_l2 " +
                            err(baseline->rel_l2) + ": it needs a positive time and a finite error"));

  const double rel_bound = config.gate_factor * baseline->rel_l2;
  const double abs_bound = config.abs_bound(family->dtype);
  const std::string dtype(api::to_string(family->dtype));

  PointDecision out;
  out.baseline = *baseline;
  std::map<std::string, int> failures;  // status -> count, for the reason
  for (const auto& m : at_point) {
    if (m.backend != "sparse") continue;
    CandidateOutcome c;
    c.measurement = m;
    if (m.status != cache::MeasurementStatus::ok) {
      c.result = R::failed;
      c.reason = cache::to_string(m.status) + (m.detail.empty() ? "" : ": " + m.detail);
      ++failures[cache::to_string(m.status)];
    } else if (!(m.median_us > 0) || !std::isfinite(m.median_us)) {
      c.result = R::bad_timing;
      c.reason = "no valid time (" + fmt("%g", m.median_us) + " us)";
      ++failures["bad_timing"];
    } else {
      c.speedup = baseline->median_us / m.median_us;
      if (!std::isfinite(m.rel_l2)) {
        c.result = R::gate_not_finite;
        c.reason = "numerics: rel_l2 is not finite (NaN or inf in the output)";
      } else if (m.rel_l2 > rel_bound) {
        c.result = R::gate_relative;
        c.reason = "numerics: rel_l2 " + err(m.rel_l2) + " is " +
                   (baseline->rel_l2 > 0 ? times(m.rel_l2 / baseline->rel_l2) : std::string("far above")) +
                   " the baseline's " + err(baseline->rel_l2) + " (gate " + times(config.gate_factor) + ")";
      } else if (m.rel_l2 > abs_bound) {
        c.result = R::gate_absolute;
        c.reason = "numerics: rel_l2 " + err(m.rel_l2) + " exceeds the " + dtype + " bound " + err(abs_bound);
      } else {
        c.result = R::slower;  // settled below once the fastest is known
      }
    }
    out.candidates.push_back(std::move(c));
  }

  // The fastest that passed the gate; failing that, the fastest with a valid time (named in
  // the verdict so the report shows what was rejected and why).
  CandidateOutcome* best = nullptr;
  CandidateOutcome* fastest_rejected = nullptr;
  int passed = 0;
  for (auto& c : out.candidates) {
    if (c.passed_gate()) {
      ++passed;
      if (!best || c.measurement.median_us < best->measurement.median_us) best = &c;
    } else if (c.speedup > 0) {
      if (!fastest_rejected || c.measurement.median_us < fastest_rejected->measurement.median_us)
        fastest_rejected = &c;
    }
  }
  const bool sparse = best && best->speedup >= config.margin;
  for (auto& c : out.candidates) {
    if (!c.passed_gate()) continue;
    if (&c == best) {
      c.result = sparse ? R::winner : R::best_below_margin;
      c.reason = sparse ? "winner: " + times(c.speedup) + " faster than packed SDPA"
                        : "best candidate, but " + times(c.speedup) + " is below the " +
                              times(config.margin) + " margin";
    } else {
      c.result = R::slower;
      c.reason = "passed, " + times(c.speedup) + "; slower than " + label(best->measurement);
    }
  }

  cache::Verdict& v = out.verdict;
  v.device_class = device_class;
  v.family = first.family;
  v.point = first.point;
  v.run_id = first.run_id;
  v.experimental = experimental;
  v.baseline_us = baseline->median_us;
  v.baseline_rel_l2 = baseline->rel_l2;
  v.backend = sparse ? "sparse" : "sdpa";
  const CandidateOutcome* named = best ? best : fastest_rejected;
  if (named) {
    v.variant = named->measurement.variant;
    v.best_us = named->measurement.median_us;
    v.speedup = named->speedup;
    v.rel_l2 = named->measurement.rel_l2;
  } else {
    v.variant = "";
    v.best_us = 0;
    v.speedup = 0;
    v.rel_l2 = std::nan("");
  }

  std::string tally = std::to_string(passed) + " of " + std::to_string(out.candidates.size()) +
                      " candidates passed the numerics gate";
  if (sparse) {
    v.reason = "sparse " + times(best->speedup) + " faster than packed SDPA (margin " +
               times(config.margin) + "), rel_l2 " + err(best->measurement.rel_l2) +
               " vs baseline " + err(baseline->rel_l2) + "; " + tally;
  } else if (best) {
    v.reason = "best sparse candidate is " + times(best->speedup) + ", below the " +
               times(config.margin) + " margin; " + tally;
  } else if (fastest_rejected) {
    v.reason = "no candidate passed the numerics gate; the fastest (" +
               times(fastest_rejected->speedup) + ") was rejected: " + fastest_rejected->reason;
  } else if (out.candidates.empty()) {
    v.reason = "no sparse candidate was measured";
  } else {
    std::string what;
    for (const auto& [status, count] : failures)
      what += (what.empty() ? "" : ", ") + std::to_string(count) + " " + status;
    v.reason = "no sparse candidate produced a result (" + what + ")";
  }
  return out;
}

std::vector<std::vector<cache::Measurement>> group_by_point(const std::vector<cache::Measurement>& all) {
  std::vector<std::vector<cache::Measurement>> groups;
  std::map<std::pair<std::string, std::string>, std::size_t> index;
  for (const auto& m : all) {
    auto key = std::make_pair(m.family, m.point);
    auto [it, inserted] = index.emplace(key, groups.size());
    if (inserted) groups.emplace_back();
    groups[it->second].push_back(m);
  }
  return groups;
}

std::string n_group_key(const api::Family& f) {
  api::Family g = f;
  g.n = 1;
  std::string key = g.key();
  // key() spells n as ".n1."; the group writes it ".n*.".
  auto pos = key.find(".n1.");
  if (pos != std::string::npos) key.replace(pos, 4, ".n*.");
  return key;
}

std::vector<SelectedLengthThreshold> selected_length_thresholds(const std::vector<cache::Verdict>& verdicts) {
  struct Acc {
    int block = 0;
    std::map<int, bool> all_sparse;  // n -> every point sparse so far
  };
  std::map<std::string, Acc> groups;
  for (const auto& v : verdicts) {
    auto family = api::Family::parse(v.family);
    if (!family) continue;
    Acc& acc = groups[n_group_key(*family)];
    acc.block = family->block;
    auto [it, inserted] = acc.all_sparse.emplace(family->n, true);
    it->second = it->second && v.backend == "sparse";
  }
  std::vector<SelectedLengthThreshold> out;
  for (auto& [key, acc] : groups) {
    SelectedLengthThreshold t;
    t.group = key;
    t.block = acc.block;
    for (const auto& [n, wins] : acc.all_sparse) {
      t.measured_n.push_back(n);
      if (wins) t.winning_n.push_back(n);
    }
    // Walk down from the largest n while it wins; the last winning n reached is the threshold.
    std::optional<int> from;
    for (auto it = acc.all_sparse.rbegin(); it != acc.all_sparse.rend() && it->second; ++it)
      from = it->first;
    if (from) t.min_selected_length = std::int64_t{*from} * acc.block;
    out.push_back(std::move(t));
  }
  return out;
}

std::optional<std::int64_t> min_selected_length(const std::vector<cache::Verdict>& verdicts,
                                                const std::string& family) {
  auto parsed = api::Family::parse(family);
  if (!parsed) return std::nullopt;
  std::string group = n_group_key(*parsed);
  for (const auto& t : selected_length_thresholds(verdicts))
    if (t.group == group) return t.min_selected_length;
  return std::nullopt;
}

}  // namespace nsa::tuner
