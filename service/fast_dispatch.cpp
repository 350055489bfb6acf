#include "nsa/service/fast_dispatch.hpp"

#include <cstdint>
#include <functional>
#include <limits>
#include <string>

#include "nsa/api/protocol.hpp"

namespace nsa::service {
namespace {

using nlohmann::json;

// Problem fields, in the order of a bit mask.
enum Field : int { f_device, f_uuid, f_arch, f_dtype, f_dqk, f_dv, f_h, f_hkv, f_block, f_n, f_tq, f_tkv, f_batch, f_count };
constexpr std::uint32_t kRequired = (1u << f_dtype) | (1u << f_dqk) | (1u << f_dv) | (1u << f_h) | (1u << f_hkv) |
                                    (1u << f_block) | (1u << f_n) | (1u << f_tq) | (1u << f_tkv) | (1u << f_batch);

int field_of(std::string_view k) {
  static constexpr std::string_view names[f_count] = {"device", "device_uuid", "arch", "dtype", "d_qk", "d_v", "h",
                                                      "h_kv",   "block",       "n",    "t_q",   "t_kv", "batch"};
  for (int i = 0; i < f_count; ++i)
    if (names[i] == k) return i;
  return -1;
}

/// Declines (returns false) at the first thing the general path should look at.
class Sax {
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  FastDispatch out;
  bool complete = false;

  bool null() {
    if (m_where == Where::top && m_key == TopKey::id) return take_id(json(nullptr));
    return false;
  }
  bool boolean(bool) { return false; }
  bool number_integer(number_integer_t v) {
    if (m_where == Where::top) return m_key == TopKey::id && take_id(json(v));
    return m_where == Where::problem && take_int(v);
  }
  bool number_unsigned(number_unsigned_t v) {
    if (m_where == Where::top) return m_key == TopKey::id && take_id(json(v));
    if (v > static_cast<number_unsigned_t>(std::numeric_limits<std::int64_t>::max())) return false;
    return m_where == Where::problem && take_int(static_cast<std::int64_t>(v));
  }
  bool number_float(number_float_t v, const string_t&) {
    // A float id is a number and allowed; a float in a problem is bad_type for the general path.
    return m_where == Where::top && m_key == TopKey::id && take_id(json(v));
  }
  bool string(string_t& s) {
    if (m_where == Where::top) {
      if (m_key == TopKey::op) {
        if (m_seen_top & 1u) return false;
        m_seen_top |= 1u;
        return s == "dispatch";
      }
      return m_key == TopKey::id && take_id(json(std::move(s)));
    }
    if (m_where != Where::problem || s.empty()) return false;  // empty arch/uuid: the general path says why
    switch (m_field) {
      case f_uuid: m_problem.device_uuid = std::move(s); return true;
      case f_arch: m_problem.arch = std::move(s); return true;
      case f_dtype:
        if (auto d = api::parse_dtype(s)) {
          m_problem.dtype = *d;
          return true;
        }
        return false;
      default: return false;  // a string where an integer goes
    }
  }
  bool binary(binary_t&) { return false; }
  bool start_object(std::size_t) {
    if (m_where == Where::none) {
      m_where = Where::top;
      return true;
    }
    if (m_where == Where::problems) {
      m_where = Where::problem;
      m_problem = api::Problem{};
      m_seen = 0;
      m_field = -1;
      return out.problems.size() < api::kMaxProblemsPerRequest;
    }
    return false;
  }
  bool key(string_t& k) {
    if (m_where == Where::top) {
      if (k == "op") m_key = TopKey::op;
      else if (k == "id") m_key = TopKey::id;
      else if (k == "problems") m_key = TopKey::problems;
      else return false;  // unknown top-level fields are ignored by the protocol: let the general path do it
      return true;
    }
    if (m_where != Where::problem) return false;
    m_field = field_of(k);
    if (m_field < 0 || (m_seen & (1u << m_field))) return false;
    m_seen |= 1u << m_field;
    return true;
  }
  bool end_object() {
    if (m_where == Where::problem) {
      if ((m_seen & kRequired) != kRequired || api::validate(m_problem)) return false;
      out.problems.push_back(std::move(m_problem));
      m_where = Where::problems;
      return true;
    }
    if (m_where == Where::top) {
      m_where = Where::done;
      complete = (m_seen_top & 1u) && (m_seen_top & 4u) && !out.problems.empty();
      return complete;
    }
    return false;
  }
  bool start_array(std::size_t) {
    if (m_where != Where::top || m_key != TopKey::problems || (m_seen_top & 4u)) return false;
    m_seen_top |= 4u;
    m_where = Where::problems;
    return true;
  }
  bool end_array() {
    if (m_where != Where::problems) return false;
    m_where = Where::top;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }

 private:
  enum class Where { none, top, problems, problem, done };
  enum class TopKey { none, op, id, problems };

  bool take_id(json v) {
    if (m_seen_top & 2u) return false;
    m_seen_top |= 2u;
    out.id = std::move(v);
    return true;
  }
  bool take_int(std::int64_t v) {
    constexpr std::int64_t lo = std::numeric_limits<int>::min(), hi = std::numeric_limits<int>::max();
    auto small = [&](int& dst) {
      if (v < lo || v > hi) return false;
      dst = static_cast<int>(v);
      return true;
    };
    switch (m_field) {
      case f_device: {
        int d = 0;
        if (!small(d)) return false;
        m_problem.device = d;
        return true;
      }
      case f_dqk: return small(m_problem.d_qk);
      case f_dv: return small(m_problem.d_v);
      case f_h: return small(m_problem.h);
      case f_hkv: return small(m_problem.h_kv);
      case f_block: return small(m_problem.block);
      case f_n: return small(m_problem.n);
      case f_batch: return small(m_problem.batch);
      case f_tq: m_problem.t_q = v; return true;
      case f_tkv: m_problem.t_kv = v; return true;
      default: return false;  // an integer where a string goes
    }
  }

  Where m_where = Where::none;
  TopKey m_key = TopKey::none;
  std::uint32_t m_seen_top = 0;  // 1 op, 2 id, 4 problems
  api::Problem m_problem;
  std::uint32_t m_seen = 0;
  int m_field = -1;
};

}  // namespace

std::optional<FastDispatch> parse_dispatch_fast(std::string_view frame) {
  Sax sax;
  bool ok = false;
  try {
    ok = json::sax_parse(frame, &sax);
  } catch (...) {
    return std::nullopt;
  }
  if (!ok || !sax.complete) return std::nullopt;
  return std::move(sax.out);
}

std::size_t ProblemHash::operator()(const api::Problem& p) const noexcept {
  std::size_t h = 1469598103934665603ull;
  auto mix = [&h](std::uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  mix(p.device ? static_cast<std::uint64_t>(*p.device) + 1 : 0);
  mix(std::hash<std::string>{}(p.device_uuid));
  mix(std::hash<std::string>{}(p.arch));
  mix(static_cast<std::uint64_t>(p.dtype));
  for (std::int64_t v : {std::int64_t{p.d_qk}, std::int64_t{p.d_v}, std::int64_t{p.h}, std::int64_t{p.h_kv},
                         std::int64_t{p.block}, std::int64_t{p.n}, p.t_q, p.t_kv, std::int64_t{p.batch}})
    mix(static_cast<std::uint64_t>(v));
  return h;
}

}  // namespace nsa::service
