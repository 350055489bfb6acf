#pragma once
// A selection-attention problem as a client describes it, and how problems group into the
// families and points that verdicts are kept for. See docs/protocol.md ("Problems") and
// ../shared/spec/selection-attention.md for the operation itself.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace nsa::api {

enum class DType : std::uint8_t { bf16, fp16 };
std::string_view to_string(DType);
std::optional<DType> parse_dtype(std::string_view);

/// Decode: one query row per sequence (T_q == 1). Prefill: everything else.
enum class Phase : std::uint8_t { decode, prefill };
std::string_view to_string(Phase);

/// One selection-attention call. The target is exactly one of `device` (ordinal on the daemon's
/// host), `device_uuid`, or `arch` ("sm_89"): a client that names an arch asks about a GPU class
/// rather than a device of this host.
struct Problem {
  std::optional<int> device;
  std::string device_uuid;
  std::string arch;
  DType dtype = DType::bf16;
  int d_qk = 0;        // query/key head dim
  int d_v = 0;         // value head dim
  int h = 0;           // query heads per KV group
  int h_kv = 0;        // KV heads (groups)
  int block = 0;       // l': keys per selected block
  int n = 0;           // selected blocks per query row
  std::int64_t t_q = 0;
  std::int64_t t_kv = 0;
  int batch = 0;

  Phase phase() const { return t_q == 1 ? Phase::decode : Phase::prefill; }
  /// Keys a query row may attend to at most: n * block.
  std::int64_t selected_length() const { return std::int64_t{n} * block; }
  bool operator==(const Problem&) const = default;
};

/// What went wrong with a request, as data: `code` is stable and machine-readable
/// ("bad_shape", "missing_field", "bad_type", ...), `message` says what and what to do.
struct Error {
  std::string code;
  std::string message;
};

inline constexpr int kMaxDeviceOrdinal = 1023;
inline constexpr std::size_t kMaxDeviceUuidBytes = 64;
inline constexpr int kMaxHkv = 1024;
inline constexpr std::int64_t kMaxRows = std::int64_t{1} << 48;  // batch * h_kv * t_q

/// Every bound a problem must satisfy, checked before anything else looks at it:
/// dims multiple of 8 in [8, 256], d_v <= 256, h in [1, 64], h_kv in [1, kMaxHkv], block power
/// of two in [16, 256], n in [1, 128], t_q in [1, t_kv], t_kv in [1, 2^31), batch >= 1,
/// batch * h_kv * t_q <= kMaxRows, arch like "sm_90"/"sm_90a", device in [0, kMaxDeviceOrdinal],
/// device_uuid printable and at most kMaxDeviceUuidBytes, at most one target.
/// Returns nullopt when the problem is valid; else code "bad_shape" (or "bad_request" for two
/// targets) and a message naming the value and the rule ("D_qk=100 is not a multiple of 8 ...").
std::optional<Error> validate(const Problem&);

/// Parses a problem object of the protocol (field names as in docs/protocol.md). Returns an
/// Error naming the field for missing fields, wrong JSON types and out-of-range values.
/// Unknown fields are rejected too, so that a typo never silently means a default.
std::optional<Error> parse_problem(const nlohmann::json&, Problem& out);
nlohmann::json to_json(const Problem&);

/// The compile-time part of a problem: every kernel variant is specialised for exactly one
/// family, so verdicts are kept per family. Spelled like "bf16.dqk128.dv128.h16.blk64.n16.decode".
struct Family {
  DType dtype = DType::bf16;
  int d_qk = 0, d_v = 0, h = 0, block = 0, n = 0;
  Phase phase = Phase::decode;
  bool operator==(const Family&) const = default;
  std::string key() const;
  static std::optional<Family> parse(std::string_view key);
};
Family family_of(const Problem&);

/// The run-time part: where inside a family a problem sits. Verdicts are measured at points;
/// a problem is answered from the nearest measured point (docs/protocol.md, "From shapes to
/// measured points").
struct Point {
  int batch = 1;
  int h_kv = 1;
  std::int64_t t_q = 1;
  std::int64_t t_kv = 1;
  bool operator==(const Point&) const = default;
  /// Query rows of work: batch * h_kv * t_q.
  std::int64_t rows() const { return std::int64_t{batch} * h_kv * t_q; }
  std::string key() const;  // "b64.hkv4.tq1.tkv32768"
  /// Inverse of key(); nullopt for anything key() would not produce (the store keeps points as text).
  static std::optional<Point> parse(std::string_view key);
};
Point point_of(const Problem&);
/// Distance used to pick the nearest measured point: |log2 rows ratio| + |log2 t_kv ratio|.
double point_distance(const Point&, const Point&);
/// Index of the measured point nearest to `query` (docs/protocol.md, "From shapes to measured
/// points"); ties go to the larger t_kv, then the larger rows, then the smaller key, so the pick
/// never depends on the order of `measured`. nullopt when `measured` is empty.
std::optional<std::size_t> nearest_point(const Point& query, std::span<const Point> measured);

}  // namespace nsa::api
