// The tuning plan (tuning_plan.hpp): sources of work, their order, and what is left out.

#include "nsa/tuner/tuning_plan.hpp"

#include <algorithm>
#include <map>

#include <nlohmann/json.hpp>

#include "nsa/jit/catalog.hpp"
#include "nsa/tuner/worker_protocol.hpp"

namespace nsa::tuner {

using nlohmann::json;

// Test fault -------------------------------------------------------------------------------------

std::string_view to_string(TestFault f) {
  switch (f) {
    case TestFault::none: return "none";
    case TestFault::illegal_address: return "illegal_address";
    case TestFault::hang: return "hang";
    case TestFault::abort: return "abort";
  }
  return "none";
}

std::optional<TestFault> parse_test_fault(std::string_view s) {
  if (s.empty() || s == "none") return TestFault::none;
  if (s == "illegal_address") return TestFault::illegal_address;
  if (s == "hang") return TestFault::hang;
  if (s == "abort") return TestFault::abort;
  return std::nullopt;
}

// Configuration ------------------------------------------------------------------------------------

namespace {

api::Family family_from(const FamilyTemplate& t, int n, api::Phase phase) {
  api::Family f;
  f.dtype = t.dtype;
  f.d_qk = t.d_qk;
  f.d_v = t.d_v;
  f.h = t.h;
  f.block = t.block;
  f.n = n;
  f.phase = phase;
  return f;
}

api::Problem problem_of(const api::Family& f, const api::Point& p) {
  api::Problem pr;
  pr.dtype = f.dtype;
  pr.d_qk = f.d_qk;
  pr.d_v = f.d_v;
  pr.h = f.h;
  pr.block = f.block;
  pr.n = f.n;
  pr.h_kv = p.h_kv;
  pr.t_q = p.t_q;
  pr.t_kv = p.t_kv;
  pr.batch = p.batch;
  return pr;
}

/// Why `point` cannot be measured in `family`; nullopt when it can.
std::optional<std::string> point_problem(const api::Family& family, const api::Point& point) {
  if (auto e = api::validate(problem_of(family, point))) return e->message;
  if ((point.t_q == 1) != (family.phase == api::Phase::decode))
    return "point " + point.key() + " is a " + std::string(api::to_string(point.t_q == 1 ? api::Phase::decode : api::Phase::prefill)) +
           " shape, the family is " + std::string(api::to_string(family.phase));
  return std::nullopt;
}

}  // namespace

std::optional<std::string> PlanConfig::validate() const {
  for (std::size_t i = 0; i < families.size(); ++i) {
    const FamilyTemplate& t = families[i];
    const std::string where = "families[" + std::to_string(i) + "]";
    if (t.n.empty()) return where + ".n: list at least one n (selected blocks per row), e.g. [8, 16, 32]";
    for (std::size_t k = 0; k < t.n.size(); ++k) {
      const api::Family f = family_from(t, t.n[k], api::Phase::decode);
      if (auto e = api::validate(problem_of(f, api::Point{1, 1, 1, 1 << 16})))
        return where + (k ? ".n[" + std::to_string(k) + "]" : std::string()) + ": " + e->message;
      if (auto why = jit::unsupported_reason(spec_of(f))) return where + ": " + *why;
    }
  }
  if (phases.empty()) return std::string("phases: list decode, prefill or both");
  auto check_points = [&](const std::vector<api::Point>& points, api::Phase phase, const char* name) -> std::optional<std::string> {
    if (families.empty()) return std::nullopt;
    for (std::size_t i = 0; i < points.size(); ++i) {
      const FamilyTemplate& t = families.front();
      if (auto why = point_problem(family_from(t, t.n.front(), phase), points[i]))
        return std::string(name) + "[" + std::to_string(i) + "]: " + *why;
    }
    return std::nullopt;
  };
  if (auto e = check_points(decode_points, api::Phase::decode, "decode_points")) return e;
  if (auto e = check_points(prefill_points, api::Phase::prefill, "prefill_points")) return e;
  for (api::Phase p : phases)
    if ((p == api::Phase::decode ? decode_points : prefill_points).empty())
      return std::string(p == api::Phase::decode ? "decode_points" : "prefill_points") +
             ": empty, but the phase is configured; list points or drop the phase";
  if (demand_limit < 0 || demand_limit > 100000) return "demand_limit " + std::to_string(demand_limit) + " must be in [0, 100000]";
  if (max_demand_points_per_family < 0 || max_demand_points_per_family > 64)
    return "max_demand_points_per_family " + std::to_string(max_demand_points_per_family) + " must be in [0, 64]";
  return std::nullopt;
}

std::optional<std::string> parse_plan_config(const json& j, PlanConfig& out) {
  if (!j.is_object()) return std::string("the plan configuration must be a JSON object");
  PlanConfig c = out;
  auto int_of = [](const json& v, const std::string& where, int& to) -> std::optional<std::string> {
    if (!v.is_number_integer()) return where + ": expected an integer";
    const auto x = v.get<std::int64_t>();
    if (x < -2147483647 || x > 2147483647) return where + ": out of range";
    to = static_cast<int>(x);
    return std::nullopt;
  };
  auto points_of = [](const json& v, const std::string& where, std::vector<api::Point>& to) -> std::optional<std::string> {
    if (!v.is_array()) return where + ": expected an array of point keys like \"b8.hkv4.tq1.tkv8192\"";
    to.clear();
    for (std::size_t i = 0; i < v.size(); ++i) {
      auto p = v[i].is_string() ? api::Point::parse(v[i].get<std::string>()) : std::nullopt;
      if (!p) return where + "[" + std::to_string(i) + "]: expected a point key like \"b8.hkv4.tq1.tkv8192\"";
      to.push_back(*p);
    }
    return std::nullopt;
  };
  for (const auto& [key, v] : j.items()) {
    std::optional<std::string> e;
    if (key == "families") {
      if (!v.is_array()) return std::string("families: expected an array of {dtype, d_qk, d_v, h, block, n}");
      c.families.clear();
      for (std::size_t i = 0; i < v.size(); ++i) {
        const std::string where = "families[" + std::to_string(i) + "]";
        const json& f = v[i];
        if (!f.is_object()) return where + ": expected an object {dtype, d_qk, d_v, h, block, n}";
        FamilyTemplate t;
        for (const auto& [fk, fv] : f.items()) {
          if (fk == "dtype") {
            auto d = fv.is_string() ? api::parse_dtype(fv.get<std::string>()) : std::nullopt;
            if (!d) return where + ".dtype: expected \"bf16\" or \"fp16\"";
            t.dtype = *d;
          } else if (fk == "d_qk") e = int_of(fv, where + ".d_qk", t.d_qk);
          else if (fk == "d_v") e = int_of(fv, where + ".d_v", t.d_v);
          else if (fk == "h") e = int_of(fv, where + ".h", t.h);
          else if (fk == "block") e = int_of(fv, where + ".block", t.block);
          else if (fk == "n") {
            if (!fv.is_array() || fv.empty()) return where + ".n: expected a non-empty array of integers";
            t.n.clear();
            for (std::size_t k = 0; k < fv.size() && !e; ++k) {
              int n = 0;
              e = int_of(fv[k], where + ".n[" + std::to_string(k) + "]", n);
              t.n.push_back(n);
            }
          } else return where + ": unknown key '" + fk + "' (dtype, d_qk, d_v, h, block, n)";
          if (e) return e;
        }
        c.families.push_back(std::move(t));
      }
    } else if (key == "phases") {
      if (!v.is_array()) return std::string("phases: expected an array of \"decode\" and/or \"prefill\"");
      c.phases.clear();
      for (const auto& p : v) {
        if (p == "decode") c.phases.push_back(api::Phase::decode);
        else if (p == "prefill") c.phases.push_back(api::Phase::prefill);
        else return "phases: '" + p.dump() + "' is not \"decode\" or \"prefill\"";
      }
    } else if (key == "decode_points") e = points_of(v, key, c.decode_points);
    else if (key == "prefill_points") e = points_of(v, key, c.prefill_points);
    else if (key == "demand_limit") e = int_of(v, key, c.demand_limit);
    else if (key == "max_demand_points_per_family") e = int_of(v, key, c.max_demand_points_per_family);
    else if (key == "experimental_pinned") {
      if (!v.is_boolean()) return std::string("experimental_pinned: expected true or false");
      c.experimental_pinned = v.get<bool>();
    } else {
      return "unknown key '" + key +
             "' (families, phases, decode_points, prefill_points, demand_limit, max_demand_points_per_family, "
             "experimental_pinned)";
    }
    if (e) return e;
  }
  if (auto bad = c.validate()) return bad;
  out = std::move(c);
  return std::nullopt;
}

json to_json(const PlanConfig& c) {
  json families = json::array();
  for (const auto& t : c.families)
    families.push_back({{"dtype", std::string(api::to_string(t.dtype))},
                        {"d_qk", t.d_qk},
                        {"d_v", t.d_v},
                        {"h", t.h},
                        {"block", t.block},
                        {"n", t.n}});
  json phases = json::array();
  for (auto p : c.phases) phases.push_back(std::string(api::to_string(p)));
  auto keys = [](const std::vector<api::Point>& pts) {
    json a = json::array();
    for (const auto& p : pts) a.push_back(p.key());
    return a;
  };
  return {{"families", families},
          {"phases", phases},
          {"decode_points", keys(c.decode_points)},
          {"prefill_points", keys(c.prefill_points)},
          {"demand_limit", c.demand_limit},
          {"max_demand_points_per_family", c.max_demand_points_per_family},
          {"experimental_pinned", c.experimental_pinned}};
}

// Scopes -----------------------------------------------------------------------------------------------

namespace {
bool is_arch(std::string_view s) {
  if (!s.starts_with("sm_") || s.size() < 5) return false;
  std::size_t i = 3;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  return i >= 5 && (i == s.size() || (i + 1 == s.size() && s[i] >= 'a' && s[i] <= 'z'));
}
/// "sm_90a" asks about sm_90 hardware: the suffix names instruction features, not a GPU.
std::string base_arch(std::string arch) {
  while (!arch.empty() && arch.back() >= 'a' && arch.back() <= 'z') arch.pop_back();
  return arch;
}
}  // namespace

std::optional<std::string> validate_scope(const std::string& scope) {
  if (scope == "all" || is_arch(scope) || api::Family::parse(scope)) return std::nullopt;
  return "retune scope '" + scope + "' is not \"all\", an arch like \"sm_90\", or a family key like "
         "\"bf16.dqk128.dv128.h16.blk64.n16.decode\"";
}

bool scope_names_arch(const std::string& scope, const std::string& arch) {
  if (scope == "all" || api::Family::parse(scope)) return true;
  return is_arch(scope) && base_arch(scope) == base_arch(arch);
}

bool scope_names(const std::string& scope, const std::string& arch, const api::Family& family) {
  if (auto f = api::Family::parse(scope)) return *f == family;
  return scope_names_arch(scope, arch);
}

std::uint64_t point_bytes(const api::Family& f, const api::Point& p) {
  const std::uint64_t rows_q = static_cast<std::uint64_t>(p.batch) * static_cast<std::uint64_t>(p.t_q);
  const std::uint64_t rows_kv = static_cast<std::uint64_t>(p.batch) * static_cast<std::uint64_t>(p.t_kv);
  const std::uint64_t hq = static_cast<std::uint64_t>(p.h_kv) * static_cast<std::uint64_t>(f.h);
  const std::uint64_t q = rows_q * hq * static_cast<std::uint64_t>(f.d_qk) * 2;
  const std::uint64_t kv = rows_kv * static_cast<std::uint64_t>(p.h_kv) * static_cast<std::uint64_t>(f.d_qk + f.d_v) * 2;
  const std::uint64_t idx = rows_q * static_cast<std::uint64_t>(p.h_kv) * static_cast<std::uint64_t>(f.n) * 4;
  const std::uint64_t o = rows_q * hq * static_cast<std::uint64_t>(f.d_v) * 2;
  return q + kv + idx + o;
}

std::size_t TuningPlan::point_count() const {
  std::size_t n = 0;
  for (const auto& f : families) n += f.points.size();
  return n;
}

// Inputs -------------------------------------------------------------------------------------------------

PlanInputs plan_inputs_from(const cache::VerdictStore& store, const cache::DeviceClass& cls,
                            std::uint64_t memory_bytes, const PlanConfig& config) {
  PlanInputs in;
  in.device_class = cls;
  in.memory_bytes = memory_bytes;
  in.pin = store.pin_for(cls.arch);
  if (!in.pin) in.pin = store.pin_for(base_arch(cls.arch));
  in.verdicts = store.latest_verdicts(cls);
  in.demand = store.demand(config.demand_limit);
  in.pending = store.pending_retunes();
  return in;
}

// The plan -----------------------------------------------------------------------------------------------

TuningPlan build_plan(const PlanConfig& config, const PlanInputs& in) {
  TuningPlan plan;
  plan.device_class = in.device_class;
  const std::string& arch = in.device_class.arch;

  if (in.pin) {
    if (!config.experimental_pinned) {
      plan.notes.push_back(arch + " is pinned to " + in.pin->backend + " (" + in.pin->reason +
                           "): not tuned; NSA_TUNE_EXPERIMENTAL_PINNED=1 tunes it as an experiment that never "
                           "changes an answer");
      // Requests that name this arch are served by saying so: nothing to tune here.
      for (const auto& r : in.pending)
        if (scope_names_arch(r.scope, arch)) plan.retune_ids.push_back(r.id);
      return plan;
    }
    plan.experimental = true;
    plan.notes.push_back(arch + " is pinned: tuned as an experiment (runs and verdicts flagged experimental)");
  }

  // Points that have a current verdict of this device class (of the right experimental flag).
  std::set<std::pair<std::string, std::string>> current;
  std::map<std::string, std::vector<api::Point>> measured_points;  // family -> points with any verdict here
  std::map<std::string, std::vector<api::Point>> stale_points;     // family -> stale points of this GPU model
  for (const auto& v : in.verdicts) {
    if (v.device_class.arch != arch) continue;
    auto point = api::Point::parse(v.point);
    if (!point) continue;
    if (v.device_class == in.device_class && v.experimental == plan.experimental && !v.stale) {
      current.emplace(v.family, v.point);
      measured_points[v.family].push_back(*point);
    } else if (v.device_class.gpu_name == in.device_class.gpu_name && v.experimental == plan.experimental) {
      stale_points[v.family].push_back(*point);
    }
  }

  std::vector<PlannedFamily> families;
  std::map<std::string, std::size_t> by_key;
  auto add = [&](const api::Family& family, const std::vector<api::Point>& points, const std::string& trigger,
                 bool force, std::int64_t demand, std::optional<std::int64_t> retune_id) {
    const std::string key = family.key();
    if (auto why = jit::unsupported_reason(spec_of(family))) {
      const std::string note = key + ": " + *why;
      if (std::find(plan.notes.begin(), plan.notes.end(), note) == plan.notes.end()) plan.notes.push_back(note);
      return;
    }
    std::vector<api::Point> keep;
    for (const auto& p : points) {
      const std::string pk = p.key();
      if (std::find(keep.begin(), keep.end(), p) != keep.end()) continue;
      if (auto why = point_problem(family, p)) {
        plan.notes.push_back(key + " @ " + pk + ": " + *why);
        continue;
      }
      if (in.memory_bytes > 0 && point_bytes(family, p) > in.memory_bytes / 2) {
        plan.notes.push_back(key + " @ " + pk + ": its tensors need " +
                             std::to_string(point_bytes(family, p) >> 20) + " MiB, over half of the device's memory");
        continue;
      }
      if (!force && current.contains({key, pk})) continue;
      if (!force && in.recently_attempted.contains({key, pk})) continue;
      keep.push_back(p);
    }
    auto it = by_key.find(key);
    if (it == by_key.end()) {
      if (keep.empty() && !retune_id) return;
      by_key.emplace(key, families.size());
      families.push_back(PlannedFamily{family, {}, trigger, 0, {}});
      it = by_key.find(key);
    }
    PlannedFamily& pf = families[it->second];
    for (const auto& p : keep)
      if (std::find(pf.points.begin(), pf.points.end(), p) == pf.points.end()) pf.points.push_back(p);
    pf.demand += demand;
    if (retune_id) pf.retune_ids.push_back(*retune_id);
  };
  auto default_points = [&](api::Phase phase) -> const std::vector<api::Point>& {
    return phase == api::Phase::decode ? config.decode_points : config.prefill_points;
  };
  auto configured = [&]() {
    std::vector<api::Family> out;
    for (const auto& t : config.families)
      for (api::Phase phase : config.phases)
        for (int n : t.n) out.push_back(family_from(t, n, phase));
    return out;
  };

  // 1. Operator retune requests that name this device.
  for (const auto& r : in.pending) {
    if (!scope_names_arch(r.scope, arch)) continue;
    plan.retune_ids.push_back(r.id);
    std::vector<api::Family> scope_families;
    if (auto f = api::Family::parse(r.scope)) {
      scope_families.push_back(*f);
    } else {
      scope_families = configured();
      for (const auto& [fk, pts] : measured_points)
        if (auto f = api::Family::parse(fk)) scope_families.push_back(*f);
      for (const auto& [fk, pts] : stale_points)
        if (auto f = api::Family::parse(fk)) scope_families.push_back(*f);
    }
    for (const auto& f : scope_families) {
      std::vector<api::Point> pts = default_points(f.phase);
      const std::string fk = f.key();
      for (const auto* src : {&measured_points, &stale_points})
        if (auto it = src->find(fk); it != src->end()) pts.insert(pts.end(), it->second.begin(), it->second.end());
      for (const auto& d : in.demand)
        if (d.family == fk && d.arch == arch)
          if (auto p = api::Point::parse(d.point)) pts.push_back(*p);
      add(f, pts, "retune", true, 0, r.id);
    }
  }

  // 2. Demand, most requested family first (the store orders rows by count).
  {
    std::vector<std::string> order;
    std::map<std::string, std::int64_t> total;
    std::map<std::string, std::vector<api::Point>> points;
    for (const auto& d : in.demand) {
      if (base_arch(d.arch) != base_arch(arch)) continue;
      if (!total.contains(d.family)) order.push_back(d.family);
      total[d.family] += d.count;
      auto p = api::Point::parse(d.point);
      if (p && static_cast<int>(points[d.family].size()) < config.max_demand_points_per_family)
        points[d.family].push_back(*p);
    }
    std::stable_sort(order.begin(), order.end(), [&](const auto& a, const auto& b) { return total[a] > total[b]; });
    for (const auto& fk : order) {
      auto f = api::Family::parse(fk);
      if (!f) {
        plan.notes.push_back("demand for '" + fk + "' ignored: not a family key");
        continue;
      }
      std::vector<api::Point> pts = points[fk];
      pts.insert(pts.end(), default_points(f->phase).begin(), default_points(f->phase).end());
      add(*f, pts, "demand", false, total[fk], std::nullopt);
    }
  }

  // 3. Stale verdicts of this GPU model.
  for (const auto& [fk, pts] : stale_points)
    if (auto f = api::Family::parse(fk)) add(*f, pts, "stale", false, 0, std::nullopt);

  // 4. The configured defaults.
  for (const auto& f : configured()) add(f, default_points(f.phase), "startup", false, 0, std::nullopt);

  for (auto& f : families)
    if (!f.points.empty()) plan.families.push_back(std::move(f));
  return plan;
}

}  // namespace nsa::tuner
