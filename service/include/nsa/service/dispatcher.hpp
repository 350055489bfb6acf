#pragma once
// The dispatch decision, as pure logic: a problem and an in-memory snapshot of this host's
// devices, pins and current verdicts in, an api::Answer out. No sockets, no SQLite, no clock,
// so every rule below is unit-tested directly (tests/service/dispatcher_test.cpp).
//
// Precedence, first match wins:
//   1. pinned     the target's arch has a pin (SM 8.9 is seeded): the pin's backend, always sdpa.
//   2. no_device  the problem names a device (ordinal or UUID) and this host has no such GPU,
//                 or no usable GPU at all (no driver, no device): sdpa, with the probe's reason.
//   3. measured   a current verdict of the device's class exists for the problem's family: the
//                 verdict at the measured point nearest to the problem (api::nearest_point).
//                 A sparse verdict comes with the launch plan for the problem's own point
//                 (jit::plan_for); a verdict whose variant cannot be planned is answered sdpa,
//                 measured, with the reason, since a sparse answer without a launch is useless.
//   4. untuned    otherwise: sdpa, and the (arch, family, point) is reported as demand.
// A problem that names an arch instead of a device ("what would sm_90 do?") is answered from
// the pins, then from the current verdicts of the lowest-ordinal device of this host with that
// arch, else untuned; it never gets no_device, since it did not ask about a device. The arch's
// feature suffix is dropped first (sm_90a asks about sm_90). docs/protocol.md ("From shapes to
// measured points") is the specification this implements.

#include <compare>
#include <expected>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "nsa/api/answer.hpp"
#include "nsa/api/problem.hpp"
#include "nsa/cache/records.hpp"
#include "nsa/jit/kernel_variant.hpp"

namespace nsa::service {

/// One GPU of this host as the daemon serves it.
struct LocalDevice {
  cache::DeviceRecord record;
  cache::DeviceClass device_class;
};

/// The current verdicts of one device class for one family, one per measured point, with the
/// points parsed once so that the hot path only computes distances.
struct FamilyVerdicts {
  std::vector<api::Point> points;      // parallel to verdicts
  std::vector<cache::Verdict> verdicts;
};
/// Family key -> its verdicts.
using ClassVerdicts = std::unordered_map<std::string, FamilyVerdicts>;

/// Everything a dispatch decision may look at. Immutable once built; the daemon swaps in a new
/// one when the store's epoch moves.
struct Snapshot {
  std::int64_t epoch = 0;
  /// Empty when the driver is loaded and has at least one device; else one line saying why not.
  std::string driver_problem;
  std::vector<LocalDevice> devices;
  /// Parallel to `devices`; devices of the same class share one table.
  std::vector<std::shared_ptr<const ClassVerdicts>> verdicts;
  std::map<std::string, cache::Pin, std::less<>> pins;  // by arch

  /// Number of current verdicts over all distinct classes (for status).
  std::size_t verdict_count() const;
};

/// An untuned (arch, family, point) that a client asked about.
struct DemandKey {
  std::string arch, family, point;
  auto operator<=>(const DemandKey&) const = default;
};

struct Decision {
  api::Answer answer;
  std::optional<DemandKey> demand;  // set exactly when the provenance is untuned
};

/// Decides one problem. `problem` must already be valid (api::validate); a problem with no
/// target at all asks about device 0.
Decision decide(const Snapshot&, const api::Problem&);

/// The answer's "launch" object for a variant (its key, read back with jit::KernelVariant::parse)
/// on a problem's run-time shape, for a device of `sm_count` multiprocessors (0: unknown; a
/// persistent design then gets one CTA per work item):
/// {"launches":[{"entry","grid","block","shared_bytes"[,"tensor_maps"]}...],"workspace_bytes"}.
/// The error says why a variant cannot be planned (an unparsable key, knobs the catalog rejects).
std::expected<nlohmann::json, std::string> launch_json(const std::string& variant_key, const api::Problem&,
                                                       int sm_count = 0);

/// Groups verdicts by family and parses their points. Verdicts that are experimental, stale or
/// whose point key does not parse are left out (they can never answer a dispatch); the number
/// left out for a bad point is added to `*unparsable` when given.
ClassVerdicts group_verdicts(const std::vector<cache::Verdict>&, std::size_t* unparsable = nullptr);

}  // namespace nsa::service
