// The report model: everything an operator needs to see what was measured and decided, per
// architecture, as one JSON value. docs/report.md documents every field; report_format.cpp
// renders it.
//
// How the store's rows become the model:
//   archs      = pins ∪ archs of verdicts ∪ demand ∪ devices seen ∪ the host's current classes,
//                sorted; an arch with a pin appears even with nothing measured (a host without
//                a GPU still shows why SM 8.9 is never sparse).
//   classes    = per arch, the host's current classes first, then every other class that has
//                verdicts, in order of first appearance; families refer to them by index.
//   families   = the newest verdict per (class, family, point), grouped by (family, class,
//                experimental) so that `viable` and `min_selected_length` never mix a stale
//                class with a current one, or experiments with dispatch verdicts.
//   stale      = the class is not one of the host's current classes; when the caller knows no
//                current class (no GPU, or a reader that did not probe) nothing is marked stale
//                and each class's `current` is null ("unknown"), never a guess.
//   demand_without_verdict = demand for (arch, family) that has no current, non-experimental
//                verdict, on archs without a pin (a pinned arch is never tuned): what the tuner
//                should do next, most requested first.

#include "nsa/tuner/report.hpp"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <map>
#include <set>
#include <tuple>

#include "nsa/api/problem.hpp"
#include "nsa/tuner/verdict_policy.hpp"

namespace nsa::tuner {

namespace {

using nlohmann::json;

/// NaN and infinity become null: JSON has no spelling for them.
json number(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

json pin_json(const cache::Pin& p) {
  return json{{"backend", p.backend},       {"reason", p.reason},         {"seeded", p.seeded},
              {"created_by", p.created_by}, {"created_at", p.created_at}};
}

json class_json(const cache::DeviceClass& c, std::optional<bool> current) {
  return json{{"gpu_name", c.gpu_name},
              {"driver_version", c.driver_version},
              {"nvrtc_version", c.nvrtc_version},
              {"source_hash", c.source_hash},
              {"current", current ? json(*current) : json(nullptr)}};
}

json point_json(const cache::Verdict& v) {
  return json{{"point", v.point},
              {"backend", v.backend},
              {"variant", v.variant},
              {"baseline_us", number(v.baseline_us)},
              {"best_us", number(v.best_us)},
              {"speedup", number(v.speedup)},
              {"rel_l2", number(v.rel_l2)},
              {"baseline_rel_l2", number(v.baseline_rel_l2)},
              {"run_id", v.run_id},
              {"stale", v.stale},
              {"experimental", v.experimental},
              {"reason", v.reason},
              {"created_at", v.created_at}};
}

/// Points in numeric order (batch, h_kv, t_q, t_kv) when their keys parse, else by text.
bool point_less(const std::string& a, const std::string& b) {
  auto pa = api::Point::parse(a);
  auto pb = api::Point::parse(b);
  if (pa && pb)
    return std::tie(pa->batch, pa->h_kv, pa->t_q, pa->t_kv) <
           std::tie(pb->batch, pb->h_kv, pb->t_q, pb->t_kv);
  if (pa != pb) return pa.has_value();  // parsable first
  return a < b;
}

bool contains(const std::vector<cache::DeviceClass>& classes, const cache::DeviceClass& c) {
  return std::find(classes.begin(), classes.end(), c) != classes.end();
}

}  // namespace

std::optional<ReportFormat> parse_report_format(std::string_view text) {
  if (text == "text") return ReportFormat::text;
  if (text == "json") return ReportFormat::json;
  if (text == "csv") return ReportFormat::csv;
  if (text == "markdown" || text == "md") return ReportFormat::markdown;
  return std::nullopt;
}

json build_report(const cache::VerdictStore& store,
                  const std::vector<cache::DeviceClass>& current_classes) {
  const bool host_known = !current_classes.empty();
  auto pins = store.pins();
  auto verdicts = store.latest_verdicts(std::nullopt);
  for (auto& v : verdicts) v.stale = host_known && !contains(current_classes, v.device_class);
  auto demand = store.demand(100000);
  auto devices = store.devices();

  std::set<std::string> archs;
  for (const auto& p : pins) archs.insert(p.arch);
  for (const auto& v : verdicts) archs.insert(v.device_class.arch);
  for (const auto& d : demand) archs.insert(d.arch);
  for (const auto& d : devices)
    if (!d.arch.empty()) archs.insert(d.arch);
  for (const auto& c : current_classes) archs.insert(c.arch);

  // (arch, family) pairs that a current dispatch verdict covers: their demand is served.
  std::set<std::pair<std::string, std::string>> served;
  for (const auto& v : verdicts)
    if (!v.stale && !v.experimental) served.emplace(v.device_class.arch, v.family);

  json out;
  out["generated_at"] = format_utc(static_cast<std::int64_t>(std::time(nullptr)), "%Y-%m-%dT%H:%M:%SZ");
  out["store"] = json{{"path", store.path().string()},
                      {"schema_version", store.schema_version()},
                      {"epoch", store.epoch()}};
  out["host_classes_known"] = host_known;
  json arch_list = json::array();
  json unserved = json::array();

  for (const std::string& arch : archs) {
    json a;
    a["arch"] = arch;
    auto pin = std::find_if(pins.begin(), pins.end(), [&](const cache::Pin& p) { return p.arch == arch; });
    a["pin"] = pin != pins.end() ? pin_json(*pin) : json(nullptr);

    std::vector<cache::DeviceClass> classes;
    for (const auto& c : current_classes)
      if (c.arch == arch && !contains(classes, c)) classes.push_back(c);
    for (const auto& v : verdicts)
      if (v.device_class.arch == arch && !contains(classes, v.device_class))
        classes.push_back(v.device_class);
    json class_list = json::array();
    for (const auto& c : classes)
      class_list.push_back(class_json(c, host_known ? std::optional<bool>(contains(current_classes, c))
                                                    : std::nullopt));
    a["device_classes"] = class_list;

    // (family, class index, experimental) -> verdicts
    using Key = std::tuple<std::string, std::size_t, bool>;
    std::map<Key, std::vector<cache::Verdict>> groups;
    for (const auto& v : verdicts) {
      if (v.device_class.arch != arch) continue;
      std::size_t index = static_cast<std::size_t>(
          std::find(classes.begin(), classes.end(), v.device_class) - classes.begin());
      groups[Key{v.family, index, v.experimental}].push_back(v);
    }
    // Thresholds over families that differ only in n: per (class, experimental).
    std::map<std::pair<std::size_t, bool>, std::vector<cache::Verdict>> by_class;
    for (const auto& [key, vs] : groups)
      for (const auto& v : vs) by_class[{std::get<1>(key), std::get<2>(key)}].push_back(v);

    json families = json::array();
    for (auto& [key, vs] : groups) {
      const auto& [family, index, experimental] = key;
      std::sort(vs.begin(), vs.end(),
                [](const cache::Verdict& x, const cache::Verdict& y) { return point_less(x.point, y.point); });
      json points = json::array();
      bool viable = false;
      for (const auto& v : vs) {
        points.push_back(point_json(v));
        viable = viable || v.backend == "sparse";
      }
      auto threshold = min_selected_length(by_class[{index, experimental}], family);
      families.push_back(json{{"family", family},
                              {"device_class", index},
                              {"stale", vs.front().stale},
                              {"experimental", experimental},
                              {"points", points},
                              {"viable", viable},
                              {"min_selected_length", threshold ? json(*threshold) : json(nullptr)}});
    }
    a["families"] = families;

    json arch_demand = json::array();
    for (const auto& d : demand) {
      if (d.arch != arch) continue;
      bool has_verdict = served.count({d.arch, d.family}) > 0;
      json row{{"family", d.family}, {"point", d.point},       {"count", d.count},
               {"first_at", d.first_at}, {"last_at", d.last_at}, {"has_verdict", has_verdict}};
      arch_demand.push_back(row);
      if (!has_verdict && pin == pins.end()) {
        row.erase("has_verdict");
        row["arch"] = arch;
        unserved.push_back(row);
      }
    }
    a["demand"] = arch_demand;
    arch_list.push_back(std::move(a));
  }
  // Most requested first across archs (the store's order within one arch already is).
  std::stable_sort(unserved.begin(), unserved.end(), [](const json& x, const json& y) {
    return x["count"].get<std::int64_t>() > y["count"].get<std::int64_t>();
  });
  out["archs"] = arch_list;
  out["demand_without_verdict"] = unserved;
  return out;
}

}  // namespace nsa::tuner
