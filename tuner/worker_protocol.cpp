// Encoding and decoding of the supervisor <-> worker protocol (worker_protocol.hpp), and the
// worker kernels' compile key.

#include "nsa/tuner/worker_protocol.hpp"

#include "nsa/tuner/plan_json.hpp"

#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "nsa/jit/device.hpp"
#include "nsa/jit/nvrtc.hpp"
#include "nsa/jit/sources.hpp"

namespace nsa::tuner {

using nlohmann::json;

namespace {

// A decode error with the path of the offending field; caught at the top of each decoder.
struct FieldError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Strict reads of one JSON object: every accessor names the path in its error.
class Reader {
 public:
  Reader(const json& j, std::string path) : m_j(j), m_path(std::move(path)) {
    if (!m_j.is_object()) throw FieldError(m_path + ": expected an object");
  }
  const json& at(const char* key) const {
    auto it = m_j.find(key);
    if (it == m_j.end()) throw FieldError(where(key) + ": missing");
    return *it;
  }
  bool has(const char* key) const { return m_j.contains(key) && !m_j.at(key).is_null(); }
  std::string str(const char* key) const {
    const json& v = at(key);
    if (!v.is_string()) throw FieldError(where(key) + ": expected a string");
    return v.get<std::string>();
  }
  std::int64_t i64(const char* key) const {
    const json& v = at(key);
    if (!v.is_number_integer()) throw FieldError(where(key) + ": expected an integer");
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t(std::numeric_limits<std::int64_t>::max()))
      throw FieldError(where(key) + ": out of range");
    return v.get<std::int64_t>();
  }
  int i32(const char* key) const {
    const std::int64_t x = i64(key);
    if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
      throw FieldError(where(key) + ": out of range");
    return static_cast<int>(x);
  }
  std::uint64_t u64(const char* key) const {
    const json& v = at(key);
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
      throw FieldError(where(key) + ": expected a non-negative integer");
    return v.get<std::uint64_t>();
  }
  /// A number; null reads as NaN (non-finite values are written as null).
  double num(const char* key) const {
    const json& v = at(key);
    if (v.is_null()) return std::numeric_limits<double>::quiet_NaN();
    if (!v.is_number()) throw FieldError(where(key) + ": expected a number or null");
    return v.get<double>();
  }
  bool boolean(const char* key) const {
    const json& v = at(key);
    if (!v.is_boolean()) throw FieldError(where(key) + ": expected true or false");
    return v.get<bool>();
  }
  Reader obj(const char* key) const { return Reader(at(key), where(key)); }
  const json& arr(const char* key) const {
    const json& v = at(key);
    if (!v.is_array()) throw FieldError(where(key) + ": expected an array");
    return v;
  }
  std::string where(const char* key) const { return m_path + "." + key; }
  const std::string& path() const { return m_path; }

 private:
  const json& m_j;
  std::string m_path;
};

json number(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

void read_dims(const Reader& r, const char* key, unsigned (&out)[3]) {
  const json& a = r.arr(key);
  if (a.size() != 3) throw FieldError(r.where(key) + ": expected 3 dimensions");
  for (int i = 0; i < 3; ++i) {
    if (!a[i].is_number_unsigned() || a[i].get<std::uint64_t>() > 0xFFFFFFFFull)
      throw FieldError(r.where(key) + "[" + std::to_string(i) + "]: expected an unsigned 32-bit integer");
    out[i] = a[i].get<unsigned>();
  }
}

jit::LaunchPlan plan_from(const Reader& r) {
  jit::LaunchPlan plan;
  plan.workspace_bytes = r.u64("workspace_bytes");
  const json& launches = r.arr("launches");
  for (std::size_t i = 0; i < launches.size(); ++i) {
    Reader l(launches[i], r.where("launches") + "[" + std::to_string(i) + "]");
    jit::Launch launch;
    launch.entry = l.str("entry");
    read_dims(l, "grid", launch.grid);
    read_dims(l, "block", launch.block);
    const std::uint64_t shared = l.u64("shared_bytes");
    if (shared > 0xFFFFFFFFull) throw FieldError(l.where("shared_bytes") + ": out of range");
    launch.shared_bytes = static_cast<unsigned>(shared);
    if (l.has("tensor_maps")) {
      const json& maps = l.arr("tensor_maps");
      for (std::size_t m = 0; m < maps.size(); ++m) {
        Reader t(maps[m], l.where("tensor_maps") + "[" + std::to_string(m) + "]");
        jit::TensorMapArg arg;
        const std::string operand = t.str("operand");
        if (operand != "k" && operand != "v") throw FieldError(t.where("operand") + ": expected \"k\" or \"v\"");
        arg.operand = operand == "k" ? jit::TensorMapArg::Operand::k : jit::TensorMapArg::Operand::v;
        const std::uint64_t dim = t.u64("dim"), rows = t.u64("box_rows");
        if (dim > 0xFFFFFFFFull || rows > 0xFFFFFFFFull) throw FieldError(t.where("dim") + ": out of range");
        arg.dim = static_cast<unsigned>(dim);
        arg.box_rows = static_cast<unsigned>(rows);
        launch.tensor_maps.push_back(arg);
      }
    }
    plan.launches.push_back(std::move(launch));
  }
  return plan;
}

json variant_to_json(const JobVariant& v, const std::function<bool(const std::string&)>& send_cubin) {
  json j = {{"key", v.key}, {"backend", v.backend}, {"plan", plan_to_json(v.plan)}};
  if (v.cubin && !v.cubin->empty() && (!send_cubin || send_cubin(v.key))) j["cubin"] = base64_encode(*v.cubin);
  return j;
}

JobVariant variant_from(const Reader& r) {
  JobVariant v;
  v.key = r.str("key");
  if (v.key.empty()) throw FieldError(r.where("key") + ": empty");
  v.backend = r.str("backend");
  if (v.backend != "reference" && v.backend != "sdpa" && v.backend != "sparse" && v.backend != "support")
    throw FieldError(r.where("backend") + ": '" + v.backend + "' is not reference, sdpa, sparse or support");
  v.plan = plan_from(r.obj("plan"));
  if (r.has("cubin")) {
    const json& c = r.at("cubin");
    if (!c.is_string()) throw FieldError(r.where("cubin") + ": expected a base64 string");
    auto bytes = base64_decode(c.get_ref<const std::string&>());
    if (!bytes) throw FieldError(r.where("cubin") + ": " + bytes.error());
    v.cubin = std::make_shared<const std::vector<std::uint8_t>>(std::move(*bytes));
  }
  return v;
}

template <class T>
std::string field_error_message(const char* what, const T& e) {
  return std::string(what) + ": " + e.what();
}

bool same_number(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

}  // namespace

// Repetitions ----------------------------------------------------------------------------------

std::optional<std::string> Repetitions::validate() const {
  if (warmup < 0 || warmup > 1000) return "warmup " + std::to_string(warmup) + " must be in [0, 1000]";
  if (probe_runs < 1 || probe_runs > 1000) return "probe_runs " + std::to_string(probe_runs) + " must be in [1, 1000]";
  if (min_runs < probe_runs) return "min_runs " + std::to_string(min_runs) + " must be at least probe_runs (" +
                                    std::to_string(probe_runs) + ")";
  if (max_runs < min_runs || max_runs > 100000)
    return "max_runs " + std::to_string(max_runs) + " must be in [min_runs, 100000]";
  if (!(target_ms > 0) || !(target_ms <= 60000)) return "target_ms must be in (0, 60000]";
  return std::nullopt;
}

bool JobVariant::operator==(const JobVariant& o) const {
  auto bytes = [](const std::shared_ptr<const std::vector<std::uint8_t>>& p) {
    return p ? *p : std::vector<std::uint8_t>{};
  };
  return key == o.key && backend == o.backend && plan == o.plan && bytes(cubin) == bytes(o.cubin);
}

// Results ----------------------------------------------------------------------------------------

cache::Measurement VariantResult::to_measurement(std::int64_t run_id, const std::string& family,
                                                 const std::string& point) const {
  cache::Measurement m;
  m.run_id = run_id;
  m.family = family;
  m.point = point;
  m.backend = backend;
  m.variant = variant;
  m.median_us = median_us;
  m.spread_us = spread_us();
  m.rel_l2 = rel_l2;
  m.max_abs = max_abs;
  m.status = status;
  m.detail = detail;
  if (runs > 0) {  // keep the spread's ends and the LSE check with the row
    char buf[128];
    std::snprintf(buf, sizeof buf, "%d runs, p10 %.2f us, p90 %.2f us, LSE max abs %.2e", runs, p10_us, p90_us,
                  lse_max_abs);
    m.detail = detail.empty() ? std::string(buf) : detail + "; " + buf;
  }
  return m;
}

bool VariantResult::operator==(const VariantResult& o) const {
  return job == o.job && variant == o.variant && backend == o.backend && status == o.status &&
         same_number(median_us, o.median_us) && same_number(p10_us, o.p10_us) && same_number(p90_us, o.p90_us) &&
         runs == o.runs && same_number(rel_l2, o.rel_l2) && same_number(max_abs, o.max_abs) &&
         same_number(mean_abs, o.mean_abs) && nonfinite == o.nonfinite && same_number(lse_max_abs, o.lse_max_abs) &&
         detail == o.detail;
}

// Jobs ------------------------------------------------------------------------------------------

std::string encode_job(const Job& job, const std::function<bool(const std::string& key)>& send_cubin) {
  json variants = json::array();
  for (const auto& v : job.variants) variants.push_back(variant_to_json(v, send_cubin));
  json j = {{"type", "job"},
            {"id", job.id},
            {"family", job.family.key()},
            {"point", job.point.key()},
            {"pattern", std::string(jit::to_string(job.pattern))},
            {"seed", job.seed},
            {"reps",
             {{"warmup", job.reps.warmup},
              {"probe_runs", job.reps.probe_runs},
              {"min_runs", job.reps.min_runs},
              {"max_runs", job.reps.max_runs},
              {"target_ms", job.reps.target_ms}}},
            {"cut_factor", job.cut_factor},
            {"best_so_far_us", number(job.best_so_far_us)},
            {"rotate_bytes", job.rotate_bytes},
            {"support", variant_to_json(job.support, send_cubin)},
            {"reference", variant_to_json(job.reference, send_cubin)},
            {"variants", std::move(variants)}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::expected<Job, std::string> decode_job(std::string_view line) {
  json j = json::parse(line, nullptr, false);
  if (j.is_discarded()) return std::unexpected("job: not JSON");
  try {
    Reader r(j, "job");
    if (r.str("type") != "job") return std::unexpected("job.type: '" + r.str("type") + "' is not 'job'");
    Job job;
    job.id = r.i64("id");
    const std::string family = r.str("family");
    auto f = api::Family::parse(family);
    if (!f) return std::unexpected("job.family: '" + family + "' is not a family key");
    job.family = *f;
    const std::string point = r.str("point");
    auto p = api::Point::parse(point);
    if (!p) return std::unexpected("job.point: '" + point + "' is not a point key");
    job.point = *p;
    const std::string pattern = r.str("pattern");
    auto pat = jit::parse_selection_pattern(pattern);
    if (!pat) return std::unexpected("job.pattern: '" + pattern + "' is not random or clustered");
    job.pattern = *pat;
    job.seed = r.u64("seed");
    Reader reps = r.obj("reps");
    job.reps.warmup = reps.i32("warmup");
    job.reps.probe_runs = reps.i32("probe_runs");
    job.reps.min_runs = reps.i32("min_runs");
    job.reps.max_runs = reps.i32("max_runs");
    job.reps.target_ms = reps.num("target_ms");
    if (auto bad = job.reps.validate()) return std::unexpected("job.reps: " + *bad);
    job.cut_factor = r.num("cut_factor");
    if (!(job.cut_factor >= 0)) return std::unexpected("job.cut_factor: must be >= 0");
    job.best_so_far_us = r.num("best_so_far_us");
    if (std::isnan(job.best_so_far_us)) job.best_so_far_us = 0;
    job.rotate_bytes = r.u64("rotate_bytes");
    job.support = variant_from(r.obj("support"));
    job.reference = variant_from(r.obj("reference"));
    const json& variants = r.arr("variants");
    for (std::size_t i = 0; i < variants.size(); ++i)
      job.variants.push_back(variant_from(Reader(variants[i], "job.variants[" + std::to_string(i) + "]")));
    return job;
  } catch (const FieldError& e) {
    return std::unexpected(std::string(e.what()));
  } catch (const json::exception& e) {
    return std::unexpected(field_error_message("job", e));
  }
}

// Worker messages ----------------------------------------------------------------------------------

std::string encode_message(const WorkerMessage& message) {
  json j = std::visit(
      [](const auto& m) -> json {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, WorkerHello>) {
          return {{"type", "hello"},       {"protocol", m.protocol},   {"device", m.device},
                  {"pid", m.pid},          {"uuid", m.uuid},           {"name", m.name},
                  {"arch", m.arch},        {"memory_bytes", m.memory_bytes}, {"l2_bytes", m.l2_bytes},
                  {"driver_version", m.driver_version}};
        } else if constexpr (std::is_same_v<T, StepBegin>) {
          return {{"type", "begin"}, {"job", m.job}, {"step", m.step}};
        } else if constexpr (std::is_same_v<T, VariantResult>) {
          return {{"type", "result"},
                  {"job", m.job},
                  {"variant", m.variant},
                  {"backend", m.backend},
                  {"status", cache::to_string(m.status)},
                  {"median_us", number(m.median_us)},
                  {"p10_us", number(m.p10_us)},
                  {"p90_us", number(m.p90_us)},
                  {"runs", m.runs},
                  {"rel_l2", number(m.rel_l2)},
                  {"max_abs", number(m.max_abs)},
                  {"mean_abs", number(m.mean_abs)},
                  {"nonfinite", m.nonfinite},
                  {"lse_max_abs", number(m.lse_max_abs)},
                  {"detail", m.detail}};
        } else if constexpr (std::is_same_v<T, JobDone>) {
          return {{"type", "done"},
                  {"job", m.job},
                  {"copies", m.copies},
                  {"input_bytes", m.input_bytes},
                  {"reference_ms", number(m.reference_ms)},
                  {"seconds", number(m.seconds)}};
        } else if constexpr (std::is_same_v<T, JobFailed>) {
          return {{"type", "job_failed"}, {"job", m.job}, {"error", m.error}};
        } else {
          return {{"type", "fatal"}, {"error", m.error}, {"sticky", m.sticky}};
        }
      },
      message);
  // Invalid UTF-8 in a detail (a driver message, a log excerpt) must not make the line unencodable.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::expected<WorkerMessage, std::string> decode_message(std::string_view line) {
  json j = json::parse(line, nullptr, false);
  if (j.is_discarded()) return std::unexpected("not JSON");
  try {
    Reader r(j, "message");
    const std::string type = r.str("type");
    if (type == "hello") {
      WorkerHello m;
      m.protocol = r.i32("protocol");
      m.device = r.i32("device");
      m.pid = r.i32("pid");
      m.uuid = r.str("uuid");
      m.name = r.str("name");
      m.arch = r.str("arch");
      m.memory_bytes = r.u64("memory_bytes");
      m.l2_bytes = r.u64("l2_bytes");
      m.driver_version = r.i32("driver_version");
      return m;
    }
    if (type == "begin") {
      StepBegin m;
      m.job = r.i64("job");
      m.step = r.str("step");
      if (m.step.empty()) return std::unexpected("message.step: empty");
      return m;
    }
    if (type == "result") {
      VariantResult m;
      m.job = r.i64("job");
      m.variant = r.str("variant");
      m.backend = r.str("backend");
      if (m.backend != "sdpa" && m.backend != "sparse")
        return std::unexpected("message.backend: '" + m.backend + "' is not sdpa or sparse");
      const std::string status = r.str("status");
      auto s = cache::parse_measurement_status(status);
      if (!s) return std::unexpected("message.status: '" + status + "' is not a measurement status");
      m.status = *s;
      m.median_us = r.num("median_us");
      m.p10_us = r.num("p10_us");
      m.p90_us = r.num("p90_us");
      m.runs = r.i32("runs");
      m.rel_l2 = r.num("rel_l2");
      m.max_abs = r.num("max_abs");
      m.mean_abs = r.num("mean_abs");
      m.nonfinite = r.i64("nonfinite");
      m.lse_max_abs = r.num("lse_max_abs");
      m.detail = r.str("detail");
      return m;
    }
    if (type == "done") {
      JobDone m;
      m.job = r.i64("job");
      m.copies = r.i32("copies");
      m.input_bytes = r.u64("input_bytes");
      m.reference_ms = r.num("reference_ms");
      m.seconds = r.num("seconds");
      return m;
    }
    if (type == "job_failed") return JobFailed{r.i64("job"), r.str("error")};
    if (type == "fatal") return WorkerFatal{r.str("error"), r.boolean("sticky")};
    return std::unexpected("message.type: '" + type + "' is not hello, begin, result, done, job_failed or fatal");
  } catch (const FieldError& e) {
    return std::unexpected(std::string(e.what()));
  } catch (const json::exception& e) {
    return std::unexpected(field_error_message("message", e));
  }
}

// Base64 (RFC 4648, with padding) -----------------------------------------------------------------

namespace {
constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

std::string base64_encode(const std::vector<std::uint8_t>& in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const std::uint32_t v = (std::uint32_t(in[i]) << 16) | (std::uint32_t(in[i + 1]) << 8) | in[i + 2];
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (const std::size_t rest = in.size() - i; rest > 0) {
    std::uint32_t v = std::uint32_t(in[i]) << 16;
    if (rest == 2) v |= std::uint32_t(in[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::expected<std::vector<std::uint8_t>, std::string> base64_decode(std::string_view in) {
  static const auto table = [] {
    std::array<int, 256> t{};
    t.fill(-1);
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(kAlphabet[i])] = i;
    return t;
  }();
  if (in.size() % 4 != 0) return std::unexpected("base64 length " + std::to_string(in.size()) + " is not a multiple of 4");
  std::vector<std::uint8_t> out;
  out.reserve(in.size() / 4 * 3);
  for (std::size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = in[i + k];
      if (c == '=' && i + 4 == in.size() && k >= 2) {
        v[k] = 0;
        ++pad;
        continue;
      }
      if (pad > 0 || table[static_cast<unsigned char>(c)] < 0)
        return std::unexpected("invalid base64 character at offset " + std::to_string(i + k));
      v[k] = table[static_cast<unsigned char>(c)];
    }
    const std::uint32_t x = (std::uint32_t(v[0]) << 18) | (std::uint32_t(v[1]) << 12) | (std::uint32_t(v[2]) << 6) |
                            std::uint32_t(v[3]);
    out.push_back(static_cast<std::uint8_t>(x >> 16));
    if (pad < 2) out.push_back(static_cast<std::uint8_t>(x >> 8));
    if (pad < 1) out.push_back(static_cast<std::uint8_t>(x));
  }
  return out;
}

// Families and kernels ----------------------------------------------------------------------------

jit::FamilySpec spec_of(const api::Family& f) {
  jit::FamilySpec s;
  s.dtype = f.dtype == api::DType::bf16 ? jit::ElemType::bf16 : jit::ElemType::fp16;
  s.d_qk = f.d_qk;
  s.d_v = f.d_v;
  s.h = f.h;
  s.block = f.block;
  s.n = f.n;
  return s;
}

jit::RuntimeShape shape_of(const api::Point& p) {
  return jit::RuntimeShape{p.batch, p.t_q, p.t_kv, p.h_kv};
}


jit::CubinKey worker_kernels_key(const std::string& arch) {
  jit::CubinKey key;
  key.variant_key = "nsa_worker.kernels." + arch;
  key.arch = arch;
  key.source_hash = jit::source_text_hash(worker_kernel_source());
  key.options = jit::options_string(arch);
  key.nvrtc_version = jit::nvrtc_version();
  return key;
}

std::expected<jit::Cubin, jit::CompileError> compile_worker_kernels(const std::string& arch, jit::CubinCache* cache) {
  const jit::CubinKey key = worker_kernels_key(arch);
  if (cache)
    if (auto hit = cache->get(key)) return *hit;
  auto cubin = jit::compile_source_to_cubin(worker_kernel_source(), "worker_kernels.cu", arch, key.variant_key);
  if (cubin && cache) (void)cache->put(key, *cubin);  // a cache failure only costs a recompile later
  return cubin;
}

}  // namespace nsa::tuner
