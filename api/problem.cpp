// Problems, their validation, and the family/point split.
//
// A problem arrives as a JSON object from a client that may be written in any language, so
// parse_problem is strict in a way that makes mistakes loud rather than silently defaulted:
//
//   {"dtype":"bf16","d_qk":128.0, ...}      -> bad_type       (a float is not an integer)
//   {"dtype":"bf16","d_k":128, ...}         -> bad_request    (unknown field 'd_k' (did you mean d_qk?))
//   {"dtype":"bf16", ... no "n" ...}        -> missing_field  (names "n")
//   {"dtype":"bf16","d_qk":100, ...}        -> bad_shape      (D_qk=100 is not a multiple of 8)
//
// The checks run in that order (unknown fields, then JSON types of what is present, then missing
// fields, then the target, then the ranges of validate()), so a client always sees the most
// basic mistake first and one error at a time.
//
// The family/point split is what makes verdicts reusable: the family holds everything a kernel
// is compiled for (dtype, head dims, h, block, n, and the phase, since decode and prefill have
// different best designs), the point holds what is only a kernel argument (batch, H_kv, T_q,
// T_kv). Both have canonical text keys that the store uses as row keys, so parse(key()) must give
// back the same value and key(parse(s)) the same string for every key this code produced.

#include "nsa/api/problem.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <tuple>
#include <limits>
#include <vector>

#include <nlohmann/json.hpp>

namespace nsa::api {

namespace {

using nlohmann::json;

std::string format(const char* fmt, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

Error make_error(std::string_view code, std::string message) {
  return Error{std::string(code), std::move(message)};
}

bool multiple_of_8_in_range(int v) { return v >= 8 && v <= 256 && v % 8 == 0; }
bool power_of_two(std::int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

std::optional<Error> check_head_dim(const char* name, int v) {
  if (v % 8 != 0)
    return make_error("bad_shape", format("%s=%d is not a multiple of 8; head dims must be multiples "
                                          "of 8 in [8, 256]", name, v));
  if (!multiple_of_8_in_range(v))
    return make_error("bad_shape", format("%s=%d is outside [8, 256]; head dims must be multiples "
                                          "of 8 in [8, 256]", name, v));
  return std::nullopt;
}

// The JSON fields of a problem, in the order the protocol documents them.
constexpr std::array<std::string_view, 13> kProblemFields = {
    "device", "device_uuid", "arch", "dtype", "d_qk", "d_v", "h",
    "h_kv",   "block",       "n",    "t_q",   "t_kv", "batch"};
constexpr std::array<std::string_view, 10> kRequiredFields = {
    "dtype", "d_qk", "d_v", "h", "h_kv", "block", "n", "t_q", "t_kv", "batch"};

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

/// The known field closest to a typo, if it is close enough to be a plausible typo.
std::optional<std::string_view> suggest_field(std::string_view unknown) {
  std::optional<std::string_view> best;
  std::size_t best_d = std::numeric_limits<std::size_t>::max();
  for (auto f : kProblemFields) {
    std::size_t d = edit_distance(unknown, f);
    if (d < best_d) best_d = d, best = f;
  }
  // Two edits catch "d_k"/"dqk"/"tkv"/"hkv"; beyond that a suggestion is noise.
  if (best && best_d <= 2 && best_d < std::max(unknown.size(), best->size())) return best;
  return std::nullopt;
}

const char* json_type_phrase(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::number_float: return "a float";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    default: return "an unsupported value";
  }
}

std::string excerpt(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

std::optional<Error> type_error(std::string_view field, const char* want, const json& got) {
  return make_error("bad_type", format("field '%.*s' must be %s, got %s (%s)",
                                       int(field.size()), field.data(), want,
                                       excerpt(got).c_str(), json_type_phrase(got)));
}

/// Reads an integer field into [lo, hi]; floats (even 128.0) and strings are type errors, because
/// a client that sends them has a bug that a silent conversion would hide.
std::optional<Error> read_int(const json& obj, std::string_view field, std::int64_t lo,
                              std::int64_t hi, std::int64_t& out) {
  const json& v = obj.at(std::string(field));
  if (v.is_number_unsigned()) {
    auto u = v.get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(hi))
      return make_error("bad_shape", format("%.*s=%llu is too large (at most %lld)", int(field.size()),
                                            field.data(), (unsigned long long)u, (long long)hi));
    out = static_cast<std::int64_t>(u);
    return std::nullopt;
  }
  if (v.is_number_integer()) {
    auto i = v.get<std::int64_t>();
    if (i < lo || i > hi)
      return make_error("bad_shape", format("%.*s=%lld is outside [%lld, %lld]", int(field.size()),
                                            field.data(), (long long)i, (long long)lo, (long long)hi));
    out = i;
    return std::nullopt;
  }
  return type_error(field, "an integer", v);
}

bool valid_arch(std::string_view a) {
  // "sm_" then 2 or 3 digits, then an optional feature suffix: sm_80, sm_89, sm_90a, sm_100a, sm_120f.
  if (a.size() < 5 || a.substr(0, 3) != "sm_") return false;
  std::size_t i = 3, digits = 0;
  while (i < a.size() && a[i] >= '0' && a[i] <= '9') ++i, ++digits;
  if (digits < 2 || digits > 3 || a[3] == '0') return false;
  if (i == a.size()) return true;
  return i + 1 == a.size() && (a[i] == 'a' || a[i] == 'f');
}

/// Parses a non-negative decimal without sign or leading zeros (so that keys stay canonical).
template <class Int>
std::optional<Int> parse_canonical_uint(std::string_view s) {
  if (s.empty() || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  Int v{};
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || ptr != s.data() + s.size() || v < 0) return std::nullopt;
  return v;
}

std::vector<std::string_view> split_dots(std::string_view s) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  for (;;) {
    std::size_t dot = s.find('.', start);
    parts.push_back(s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
    if (dot == std::string_view::npos) return parts;
    start = dot + 1;
  }
}

template <class Int>
std::optional<Int> prefixed(std::string_view part, std::string_view prefix) {
  if (part.substr(0, prefix.size()) != prefix) return std::nullopt;
  return parse_canonical_uint<Int>(part.substr(prefix.size()));
}

}  // namespace

std::string_view to_string(DType d) { return d == DType::bf16 ? "bf16" : "fp16"; }

std::optional<DType> parse_dtype(std::string_view s) {
  if (s == "bf16") return DType::bf16;
  if (s == "fp16") return DType::fp16;
  return std::nullopt;
}

std::string_view to_string(Phase p) { return p == Phase::decode ? "decode" : "prefill"; }

std::optional<Error> validate(const Problem& p) {
  int targets = int(p.device.has_value()) + int(!p.device_uuid.empty()) + int(!p.arch.empty());
  if (targets > 1)
    return make_error("bad_request", "give at most one of device, device_uuid and arch (none means device 0)");
  if (p.device && (*p.device < 0 || *p.device > kMaxDeviceOrdinal))
    return make_error("bad_shape", format("device=%d is not a device ordinal; use 0..%d", *p.device,
                                          kMaxDeviceOrdinal));
  if (!p.device_uuid.empty()) {
    bool printable = std::all_of(p.device_uuid.begin(), p.device_uuid.end(),
                                 [](char c) { return c > ' ' && c < 127; });
    if (p.device_uuid.size() > kMaxDeviceUuidBytes || !printable)
      return make_error("bad_shape", format("device_uuid must be at most %d printable ASCII characters "
                                            "without spaces, like \"GPU-8f1c2d3e-...\"",
                                            int(kMaxDeviceUuidBytes)));
  }
  if (!p.arch.empty() && !valid_arch(p.arch))
    return make_error("bad_shape", format("arch \"%.*s\" is not an arch name; write it like sm_89, sm_90 "
                                          "or sm_90a", int(std::min<std::size_t>(p.arch.size(), 32)),
                                          p.arch.data()));
  if (auto e = check_head_dim("D_qk", p.d_qk)) return e;
  if (auto e = check_head_dim("D_v", p.d_v)) return e;
  if (p.h < 1 || p.h > 64)
    return make_error("bad_shape", format("h=%d query heads per KV group is outside [1, 64]", p.h));
  if (p.h_kv < 1 || p.h_kv > kMaxHkv)
    return make_error("bad_shape", format("H_kv=%d is outside [1, %d]", p.h_kv, kMaxHkv));
  if (!power_of_two(p.block) || p.block < 16 || p.block > 256)
    return make_error("bad_shape", format("block=%d must be a power of two in [16, 256]", p.block));
  if (p.n < 1 || p.n > 128)
    return make_error("bad_shape", format("n=%d selected blocks per row is outside [1, 128]", p.n));
  constexpr std::int64_t kTkvLimit = std::int64_t{1} << 31;
  if (p.t_kv < 1 || p.t_kv >= kTkvLimit)
    return make_error("bad_shape", format("T_kv=%lld is outside [1, 2^31)", (long long)p.t_kv));
  if (p.t_q < 1 || p.t_q > p.t_kv)
    return make_error("bad_shape", format("T_q=%lld is outside [1, T_kv=%lld]; query rows sit at the end "
                                          "of the keys, so there are never more of them than keys",
                                          (long long)p.t_q, (long long)p.t_kv));
  if (p.batch < 1)
    return make_error("bad_shape", format("batch=%d must be at least 1", p.batch));
  // rows() must not overflow anything downstream (log2 of it, products with head counts).
  double rows = double(p.batch) * double(p.h_kv) * double(p.t_q);
  if (rows > double(kMaxRows))
    return make_error("bad_shape", format("batch*H_kv*T_q = %.3g query rows exceeds the limit 2^48",
                                          rows));
  return std::nullopt;
}

std::optional<Error> parse_problem(const json& j, Problem& out) {
  if (!j.is_object())
    return make_error("bad_request", format("a problem must be a JSON object, got %s", json_type_phrase(j)));

  for (const auto& [key, value] : j.items()) {
    bool known = std::find(kProblemFields.begin(), kProblemFields.end(), key) != kProblemFields.end();
    if (known) continue;
    std::string k = key.size() > 40 ? key.substr(0, 37) + "..." : key;
    if (auto s = suggest_field(key))
      return make_error("bad_request", format("unknown field '%s' (did you mean %.*s?)", k.c_str(),
                                              int(s->size()), s->data()));
    return make_error("bad_request", format("unknown field '%s'; a problem has the fields device, "
                                            "device_uuid, arch, dtype, d_qk, d_v, h, h_kv, block, n, "
                                            "t_q, t_kv, batch", k.c_str()));
  }

  // JSON types of what is present, before complaining about what is missing.
  for (std::string_view f : {"device_uuid", "arch", "dtype"}) {
    auto it = j.find(std::string(f));
    if (it != j.end() && !it->is_string()) return type_error(f, "a string", *it);
  }
  for (std::string_view f : kProblemFields) {
    if (f == "device_uuid" || f == "arch" || f == "dtype") continue;
    auto it = j.find(std::string(f));
    if (it != j.end() && !it->is_number_integer()) return type_error(f, "an integer", *it);
  }
  for (std::string_view f : kRequiredFields) {
    if (!j.contains(std::string(f)))
      return make_error("missing_field", format("problem is missing the field '%.*s'", int(f.size()), f.data()));
  }

  Problem p;
  constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
  constexpr std::int64_t kIntMin = std::numeric_limits<int>::min();
  std::int64_t v = 0;
  if (j.contains("device")) {
    if (auto e = read_int(j, "device", kIntMin, kIntMax, v)) return e;
    p.device = int(v);
  }
  if (auto it = j.find("device_uuid"); it != j.end()) {
    p.device_uuid = it->get<std::string>();
    if (p.device_uuid.empty())
      return make_error("bad_shape", "device_uuid is empty; leave the field out to mean device 0");
  }
  if (auto it = j.find("arch"); it != j.end()) {
    p.arch = it->get<std::string>();
    if (p.arch.empty()) return make_error("bad_shape", "arch is empty; write it like sm_90, or leave it out");
  }
  std::string dtype = j.at("dtype").get<std::string>();
  if (auto d = parse_dtype(dtype)) {
    p.dtype = *d;
  } else {
    if (dtype.size() > 32) dtype = dtype.substr(0, 29) + "...";
    return make_error("bad_shape", format("dtype \"%s\" is not supported; use \"bf16\" or \"fp16\"", dtype.c_str()));
  }
  struct IntField { std::string_view name; int* dst; };
  for (auto [name, dst] : {IntField{"d_qk", &p.d_qk}, IntField{"d_v", &p.d_v}, IntField{"h", &p.h},
                           IntField{"h_kv", &p.h_kv}, IntField{"block", &p.block},
                           IntField{"n", &p.n}, IntField{"batch", &p.batch}}) {
    if (auto e = read_int(j, name, kIntMin, kIntMax, v)) return e;
    *dst = int(v);
  }
  constexpr std::int64_t kI64Max = std::numeric_limits<std::int64_t>::max();
  constexpr std::int64_t kI64Min = std::numeric_limits<std::int64_t>::min();
  if (auto e = read_int(j, "t_q", kI64Min, kI64Max, p.t_q)) return e;
  if (auto e = read_int(j, "t_kv", kI64Min, kI64Max, p.t_kv)) return e;

  if (auto e = validate(p)) return e;
  out = std::move(p);
  return std::nullopt;
}

json to_json(const Problem& p) {
  json j = json::object();
  if (p.device) j["device"] = *p.device;
  if (!p.device_uuid.empty()) j["device_uuid"] = p.device_uuid;
  if (!p.arch.empty()) j["arch"] = p.arch;
  j["dtype"] = std::string(to_string(p.dtype));
  j["d_qk"] = p.d_qk;
  j["d_v"] = p.d_v;
  j["h"] = p.h;
  j["h_kv"] = p.h_kv;
  j["block"] = p.block;
  j["n"] = p.n;
  j["t_q"] = p.t_q;
  j["t_kv"] = p.t_kv;
  j["batch"] = p.batch;
  return j;
}

std::string Family::key() const {
  return format("%s.dqk%d.dv%d.h%d.blk%d.n%d.%s", std::string(to_string(dtype)).c_str(), d_qk, d_v, h,
                block, n, std::string(to_string(phase)).c_str());
}

std::optional<Family> Family::parse(std::string_view key) {
  auto parts = split_dots(key);
  if (parts.size() != 7) return std::nullopt;
  Family f;
  auto d = parse_dtype(parts[0]);
  if (!d) return std::nullopt;
  f.dtype = *d;
  auto dqk = prefixed<int>(parts[1], "dqk");
  auto dv = prefixed<int>(parts[2], "dv");
  auto h = prefixed<int>(parts[3], "h");
  auto blk = prefixed<int>(parts[4], "blk");
  auto n = prefixed<int>(parts[5], "n");
  if (!dqk || !dv || !h || !blk || !n) return std::nullopt;
  if (*dqk < 1 || *dv < 1 || *h < 1 || *blk < 1 || *n < 1) return std::nullopt;
  f.d_qk = *dqk, f.d_v = *dv, f.h = *h, f.block = *blk, f.n = *n;
  if (parts[6] == "decode") f.phase = Phase::decode;
  else if (parts[6] == "prefill") f.phase = Phase::prefill;
  else return std::nullopt;
  return f;
}

Family family_of(const Problem& p) {
  return Family{p.dtype, p.d_qk, p.d_v, p.h, p.block, p.n, p.phase()};
}

std::string Point::key() const {
  return format("b%d.hkv%d.tq%lld.tkv%lld", batch, h_kv, (long long)t_q, (long long)t_kv);
}

std::optional<Point> Point::parse(std::string_view key) {
  auto parts = split_dots(key);
  if (parts.size() != 4) return std::nullopt;
  auto b = prefixed<int>(parts[0], "b");
  auto hkv = prefixed<int>(parts[1], "hkv");
  auto tq = prefixed<std::int64_t>(parts[2], "tq");
  auto tkv = prefixed<std::int64_t>(parts[3], "tkv");
  if (!b || !hkv || !tq || !tkv || *b < 1 || *hkv < 1 || *tq < 1 || *tkv < 1) return std::nullopt;
  return Point{*b, *hkv, *tq, *tkv};
}

Point point_of(const Problem& p) { return Point{p.batch, p.h_kv, p.t_q, p.t_kv}; }

double point_distance(const Point& a, const Point& b) {
  // Work (rows) and context length (t_kv) are the two axes along which the winner changes; both
  // matter by ratio, not difference, hence logs. Clamp at 1 so malformed points stay finite.
  auto l2 = [](double x) { return std::log2(std::max(x, 1.0)); };
  return std::abs(l2(double(a.rows())) - l2(double(b.rows()))) +
         std::abs(l2(double(a.t_kv)) - l2(double(b.t_kv)));
}

std::optional<std::size_t> nearest_point(const Point& query, std::span<const Point> measured) {
  std::optional<std::size_t> best;
  for (std::size_t i = 0; i < measured.size(); ++i) {
    if (!best) { best = i; continue; }
    const Point& c = measured[i];
    const Point& b = measured[*best];
    double dc = point_distance(query, c), db = point_distance(query, b);
    // Distances are sums of log2s of integers; compare with a tolerance so ties are real ties.
    if (dc < db - 1e-9) { best = i; continue; }
    if (dc > db + 1e-9) continue;
    // Tie: prefer the larger t_kv, then the larger rows, then the smaller key, so the choice
    // depends only on the set of points and never on their order.
    auto rank = [](const Point& p) { return std::make_tuple(p.t_kv, p.rows()); };
    if (rank(c) > rank(b) || (rank(c) == rank(b) && c.key() < b.key())) best = i;
  }
  return best;
}

}  // namespace nsa::api
