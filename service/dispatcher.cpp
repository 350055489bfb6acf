#include "nsa/service/dispatcher.hpp"

#include <cstdio>
#include <set>
#include <stdexcept>

#include "nsa/jit/catalog.hpp"
#include "nsa/tuner/plan_json.hpp"

namespace nsa::service {
namespace {

using api::Answer;
using api::Backend;
using api::Provenance;

std::string fmt_speedup(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2fx", s);
  return buf;
}

Answer pinned(const cache::Pin& pin) {
  Answer a = Answer::fallback(Provenance::pinned,
                              pin.arch + " is pinned to " + pin.backend + ": " + pin.reason);
  // A pin can only force the fallback (the store refuses any other backend), so the answer is
  // sdpa whatever the row says.
  a.arch = pin.arch;
  return a;
}

Answer no_device(std::string reason) { return Answer::fallback(Provenance::no_device, std::move(reason)); }

/// The verdict of `table` for the problem's family at the nearest measured point, if any.
std::optional<Answer> measured(const ClassVerdicts* table, const LocalDevice& dev, const std::string& family,
                               const api::Problem& problem) {
  const cache::DeviceClass& cls = dev.device_class;
  if (!table) return std::nullopt;
  auto it = table->find(family);
  if (it == table->end() || it->second.points.empty()) return std::nullopt;
  const api::Point point = api::point_of(problem);
  auto index = api::nearest_point(point, it->second.points);
  if (!index) return std::nullopt;
  const cache::Verdict& v = it->second.verdicts[*index];
  Answer a;
  a.provenance = Provenance::measured;
  a.arch = cls.arch;
  a.run_id = v.run_id;
  a.speedup = v.speedup;
  const std::string where = " on " + cls.gpu_name + " (" + cls.arch + ") at " + v.point +
                            (v.point == point.key() ? "" : " (nearest measured point to " + point.key() + ")") +
                            ", run " + std::to_string(v.run_id);
  std::string plan_error;
  if (v.backend == "sparse" && !v.variant.empty()) {
    auto launch = launch_json(v.variant, problem, dev.record.sm_count);
    if (launch) {
      a.backend = Backend::sparse;
      a.variant = v.variant;
      a.launch = std::move(*launch);
      a.reason = v.variant + " is " + fmt_speedup(v.speedup) + " faster than SDPA" + where;
      return a;
    }
    plan_error = launch.error();
  }
  a.backend = Backend::sdpa;
  if (!plan_error.empty()) {
    a.variant = v.variant;
    a.reason = "the verdict chose " + v.variant + where + ", but it cannot be launched here (" + plan_error +
               "); running SDPA";
    return a;
  }
  a.reason = "SDPA wins" + where;
  if (!v.variant.empty()) a.reason += "; best sparse " + v.variant + " at " + fmt_speedup(v.speedup);
  if (!v.reason.empty()) a.reason += " (" + v.reason + ")";
  return a;
}

/// "sm_90a" asks about "sm_90": verdicts and pins are kept per base arch.
std::string base_arch(const std::string& arch) {
  if (!arch.empty() && (arch.back() == 'a' || arch.back() == 'f')) return arch.substr(0, arch.size() - 1);
  return arch;
}

Decision untuned(const std::string& arch, const std::string& family, const api::Point& point,
                 const std::string& target) {
  Decision d;
  d.answer = Answer::fallback(Provenance::untuned,
                              "nobody has measured " + family + " on " + target +
                                  " yet; running SDPA and recording the demand");
  d.answer.arch = arch;
  d.demand = DemandKey{arch, family, point.key()};
  return d;
}

}  // namespace

std::expected<nlohmann::json, std::string> launch_json(const std::string& variant_key, const api::Problem& p,
                                                       int sm_count) {
  auto v = jit::KernelVariant::parse(variant_key);
  if (!v) return std::unexpected("'" + variant_key + "' is not a variant key of this build");
  jit::LaunchPlan plan;
  try {
    plan = jit::plan_for(*v, jit::RuntimeShape{p.batch, p.t_q, p.t_kv, p.h_kv, sm_count});
  } catch (const std::exception& e) {
    return std::unexpected(std::string("no launch plan: ") + e.what());
  }
  return tuner::plan_to_json(plan);
}

std::size_t Snapshot::verdict_count() const {
  std::set<const ClassVerdicts*> seen;
  std::size_t n = 0;
  for (const auto& t : verdicts) {
    if (!t || !seen.insert(t.get()).second) continue;
    for (const auto& [family, fv] : *t) n += fv.verdicts.size();
  }
  return n;
}

ClassVerdicts group_verdicts(const std::vector<cache::Verdict>& verdicts, std::size_t* unparsable) {
  ClassVerdicts out;
  for (const auto& v : verdicts) {
    if (v.experimental || v.stale) continue;
    auto p = api::Point::parse(v.point);
    if (!p) {
      if (unparsable) ++*unparsable;
      continue;
    }
    auto& fv = out[v.family];
    fv.points.push_back(*p);
    fv.verdicts.push_back(v);
  }
  return out;
}

Decision decide(const Snapshot& s, const api::Problem& problem) {
  const std::string family = api::family_of(problem).key();
  const api::Point point = api::point_of(problem);

  // A device target (no target at all means device 0, as docs/protocol.md says): find it, or
  // say why there is none, then pin > measured > untuned.
  if (problem.arch.empty()) {
    const std::optional<int> ordinal =
        problem.device ? problem.device : problem.device_uuid.empty() ? std::optional<int>(0) : std::nullopt;
    const LocalDevice* dev = nullptr;
    std::size_t index = 0;
    for (std::size_t i = 0; i < s.devices.size(); ++i) {
      const auto& r = s.devices[i].record;
      if (ordinal ? r.ordinal == *ordinal : r.uuid == problem.device_uuid) {
        dev = &s.devices[i];
        index = i;
        break;
      }
    }
    if (!dev) {
      const std::string what = ordinal ? "ordinal " + std::to_string(*ordinal)
                                              : "UUID " + problem.device_uuid;
      if (s.devices.empty()) {
        return {no_device("no usable GPU on this host: " +
                          (s.driver_problem.empty() ? std::string("the driver reports no devices") : s.driver_problem)),
                std::nullopt};
      }
      return {no_device("this host has no GPU with " + what + " (it has " +
                        std::to_string(s.devices.size()) + ": ordinals 0-" +
                        std::to_string(s.devices.size() - 1) + "); running SDPA"),
              std::nullopt};
    }
    const std::string& arch = dev->device_class.arch;
    if (auto pin = s.pins.find(arch); pin != s.pins.end()) return {pinned(pin->second), std::nullopt};
    const ClassVerdicts* table = index < s.verdicts.size() ? s.verdicts[index].get() : nullptr;
    if (auto a = measured(table, *dev, family, problem)) return {std::move(*a), std::nullopt};
    return untuned(arch, family, point,
                   dev->record.name + " (" + arch + ", device " + std::to_string(dev->record.ordinal) + ")");
  }

  // An arch target: pin, then the verdicts of the lowest-ordinal local device of that arch,
  // else untuned.
  const std::string arch = base_arch(problem.arch);
  if (auto pin = s.pins.find(arch); pin != s.pins.end()) return {pinned(pin->second), std::nullopt};
  std::optional<std::size_t> lowest;
  for (std::size_t i = 0; i < s.devices.size(); ++i) {
    if (s.devices[i].device_class.arch != arch) continue;
    if (!lowest || s.devices[i].record.ordinal < s.devices[*lowest].record.ordinal) lowest = i;
  }
  if (lowest) {
    const ClassVerdicts* table = *lowest < s.verdicts.size() ? s.verdicts[*lowest].get() : nullptr;
    if (auto a = measured(table, s.devices[*lowest], family, problem))
      return {std::move(*a), std::nullopt};
    return untuned(arch, family, point, s.devices[*lowest].record.name + " (" + arch + ")");
  }
  return untuned(arch, family, point, arch + " (no device of that arch on this host)");
}

}  // namespace nsa::service
