#pragma once
// The daemon's answer to one problem: which backend to run and why.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace nsa::api {

enum class Backend : std::uint8_t { sdpa, sparse };
std::string_view to_string(Backend);
std::optional<Backend> parse_backend(std::string_view);

/// Why the answer is what it is.
///  pinned: a policy pin for the arch decides (SM 8.9: sparse never).
///  measured: a current verdict measured on this device class decides (speedup, run id).
///  untuned: nobody has measured this family here yet; the demand is recorded.
///  no_device: the daemon has no usable GPU (no driver, no device, unknown ordinal).
///  daemon_unavailable: the client could not get an answer within its budget.
enum class Provenance : std::uint8_t { pinned, measured, untuned, no_device, daemon_unavailable };
std::string_view to_string(Provenance);
std::optional<Provenance> parse_provenance(std::string_view);

struct Answer {
  Backend backend = Backend::sdpa;
  Provenance provenance = Provenance::untuned;
  std::string variant;          // sparse only: the variant key
  nlohmann::json launch;        // sparse only: what a client needs to launch it (object), else null
  double speedup = 0;           // measured only: baseline time / chosen time at the matched point
  std::int64_t run_id = 0;      // measured only: the tuning run that produced the verdict
  std::string arch;             // the arch the answer is for ("sm_90"), empty if unknown
  std::string reason;           // one line a person can read
  bool operator==(const Answer&) const = default;

  /// The safe answer when nothing better is known.
  static Answer fallback(Provenance why, std::string reason);
};

/// Every field is written, null where it does not apply (empty string, null launch, 0).
nlohmann::json to_json(const Answer&);
/// Parses an answer object; returns nullopt (and fills `error`) on a malformed one: missing or
/// unknown backend/provenance, no reason, a field of the wrong type, or a sparse answer without a
/// variant or not `measured`. Absent and null optional fields mean "does not apply"; unknown
/// fields are ignored (newer daemons may add some).
std::optional<Answer> answer_from_json(const nlohmann::json&, std::string* error = nullptr);

}  // namespace nsa::api
