// The answer object of the protocol. Every field is always present on the wire, with null where
// it does not apply, so that a client in any language can read it without guessing:
//   {"backend":"sdpa","provenance":"pinned","variant":null,"launch":null,"speedup":null,
//    "run_id":null,"arch":"sm_89","reason":"..."}
// In the struct "does not apply" is the zero value (empty string, null json, 0), which is what
// makes to_json/answer_from_json an exact round trip.

#include "nsa/api/answer.hpp"

#include <cmath>

namespace nsa::api {

namespace {

using nlohmann::json;

bool fail(std::string* error, std::string message) {
  if (error) *error = std::move(message);
  return false;
}

}  // namespace

std::string_view to_string(Backend b) { return b == Backend::sdpa ? "sdpa" : "sparse"; }

std::optional<Backend> parse_backend(std::string_view s) {
  if (s == "sdpa") return Backend::sdpa;
  if (s == "sparse") return Backend::sparse;
  return std::nullopt;
}

std::string_view to_string(Provenance p) {
  switch (p) {
    case Provenance::pinned: return "pinned";
    case Provenance::measured: return "measured";
    case Provenance::untuned: return "untuned";
    case Provenance::no_device: return "no_device";
    case Provenance::daemon_unavailable: return "daemon_unavailable";
  }
  return "untuned";
}

std::optional<Provenance> parse_provenance(std::string_view s) {
  for (auto p : {Provenance::pinned, Provenance::measured, Provenance::untuned, Provenance::no_device,
                 Provenance::daemon_unavailable})
    if (to_string(p) == s) return p;
  return std::nullopt;
}

Answer Answer::fallback(Provenance why, std::string reason) {
  Answer a;
  a.backend = Backend::sdpa;
  a.provenance = why;
  a.reason = std::move(reason);
  return a;
}

json to_json(const Answer& a) {
  json j = json::object();
  j["backend"] = std::string(to_string(a.backend));
  j["provenance"] = std::string(to_string(a.provenance));
  j["variant"] = a.variant.empty() ? json(nullptr) : json(a.variant);
  j["launch"] = a.launch.is_null() ? json(nullptr) : a.launch;
  j["speedup"] = a.speedup == 0 ? json(nullptr) : json(a.speedup);
  j["run_id"] = a.run_id == 0 ? json(nullptr) : json(a.run_id);
  j["arch"] = a.arch.empty() ? json(nullptr) : json(a.arch);
  j["reason"] = a.reason;
  return j;
}

std::optional<Answer> answer_from_json(const json& j, std::string* error) {
  auto parse = [&](Answer& a) -> bool {
    if (!j.is_object()) return fail(error, "an answer must be a JSON object");
    auto it = j.find("backend");
    if (it == j.end() || !it->is_string()) return fail(error, "answer has no string field 'backend'");
    auto b = parse_backend(it->get_ref<const std::string&>());
    if (!b) return fail(error, "answer has unknown backend '" + it->get<std::string>() + "'");
    a.backend = *b;

    it = j.find("provenance");
    if (it == j.end() || !it->is_string()) return fail(error, "answer has no string field 'provenance'");
    auto p = parse_provenance(it->get_ref<const std::string&>());
    if (!p) return fail(error, "answer has unknown provenance '" + it->get<std::string>() + "'");
    a.provenance = *p;

    it = j.find("reason");
    if (it == j.end() || !it->is_string()) return fail(error, "answer has no string field 'reason'");
    a.reason = it->get<std::string>();

    // Optional fields: absent and null both mean "does not apply".
    auto opt = [&](const char* name) -> const json* {
      auto f = j.find(name);
      return f == j.end() || f->is_null() ? nullptr : &*f;
    };
    if (const json* v = opt("variant")) {
      if (!v->is_string()) return fail(error, "answer field 'variant' must be a string or null");
      a.variant = v->get<std::string>();
    }
    if (const json* v = opt("launch")) {
      if (!v->is_object()) return fail(error, "answer field 'launch' must be an object or null");
      a.launch = *v;
    }
    if (const json* v = opt("speedup")) {
      if (!v->is_number() || !std::isfinite(v->get<double>()) || v->get<double>() < 0)
        return fail(error, "answer field 'speedup' must be a non-negative number or null");
      a.speedup = v->get<double>();
    }
    if (const json* v = opt("run_id")) {
      if (!v->is_number_integer() || v->get<std::int64_t>() < 0)
        return fail(error, "answer field 'run_id' must be a non-negative integer or null");
      a.run_id = v->get<std::int64_t>();
    }
    if (const json* v = opt("arch")) {
      if (!v->is_string()) return fail(error, "answer field 'arch' must be a string or null");
      a.arch = v->get<std::string>();
    }
    // A sparse answer a client cannot act on is worse than none: it must name its variant, and
    // only a measurement can choose sparse (pins only ever force sdpa).
    if (a.backend == Backend::sparse && a.variant.empty())
      return fail(error, "sparse answer without a variant");
    if (a.backend == Backend::sparse && a.provenance != Provenance::measured)
      return fail(error, "sparse answer with provenance '" + std::string(to_string(a.provenance)) +
                             "'; only 'measured' can choose sparse");
    return true;
  };
  Answer a;
  if (!parse(a)) return std::nullopt;
  return a;
}

}  // namespace nsa::api
