#include "nsa/service/handler.hpp"

#include <algorithm>
#include <ctime>
#include <initializer_list>

#include <unistd.h>

#include "nsa/api/answer.hpp"
#include "nsa/api/problem.hpp"
#include "nsa/service/dispatcher.hpp"
#include "nsa/service/log.hpp"
#include "nsa/tuner/report.hpp"

namespace nsa::service {
namespace {

using nlohmann::json;
namespace errc = api::errc;

std::int64_t now_unix() { return static_cast<std::int64_t>(std::time(nullptr)); }

std::string clip(std::string_view s, std::size_t max = 40) {
  if (s.size() <= max) return std::string(s);
  return std::string(s.substr(0, max - 3)) + "...";
}

/// Thrown inside an op to turn into an error reply; never escapes Handler::handle.
struct ReplyError {
  std::string_view code;
  std::string message;
};

/// Rejects fields an op does not know, so that a typo never silently means a default.
void allow_fields(const api::Request& r, std::initializer_list<std::string_view> fields) {
  for (const auto& [key, value] : r.body.items()) {
    if (key == "op" || key == "id") continue;
    if (std::find(fields.begin(), fields.end(), key) != fields.end()) continue;
    std::string known = "op, id";
    for (auto f : fields) known += ", " + std::string(f);
    throw ReplyError{errc::bad_request, "unknown field '" + clip(key) + "' in a " +
                                            std::string(api::to_string(r.op)) + " request; its fields are " + known};
  }
}

const json* field(const api::Request& r, const char* name) {
  auto it = r.body.find(name);
  return it == r.body.end() ? nullptr : &*it;
}

std::string require_string(const api::Request& r, const char* name, const char* example) {
  const json* v = field(r, name);
  if (!v)
    throw ReplyError{errc::missing_field, std::string(api::to_string(r.op)) + " needs the field '" + name +
                                              "', e.g. " + example};
  if (!v->is_string())
    throw ReplyError{errc::bad_type, std::string("field '") + name + "' must be a string, e.g. " + example};
  return v->get<std::string>();
}

json pin_json(const cache::Pin& p) {
  return json{{"arch", p.arch},       {"backend", p.backend},       {"reason", p.reason},
              {"seeded", p.seeded},   {"created_by", p.created_by}, {"created_at", p.created_at}};
}

std::string who(const Connection& c) { return "uid:" + std::to_string(c.peer.uid); }

bool arch_like(std::string_view s) {
  if (s.size() < 5 || s.substr(0, 3) != "sm_") return false;
  std::size_t i = 3;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
  if (i - 3 < 2 || i - 3 > 3) return false;
  return i == s.size() || (i + 1 == s.size() && (s[i] == 'a' || s[i] == 'f'));
}

}  // namespace

std::string Peer::describe() const {
  return "uid " + std::to_string(uid) + ", pid " + std::to_string(pid);
}

bool AdminPolicy::allows(const Peer& p) const {
  if (p.uid == daemon_uid || p.uid == 0) return true;
  if (!admin_gid) return false;
  return p.gid == *admin_gid || std::find(p.groups.begin(), p.groups.end(), *admin_gid) != p.groups.end();
}

std::string AdminPolicy::describe() const {
  std::string s = "the daemon's own uid " + std::to_string(daemon_uid) + ", root";
  if (admin_gid) s += ", or members of group " + admin_group;
  else s += " (no admin group is configured: see --admin-group)";
  return s;
}

std::string tuning_summary(const Config& c, std::size_t pending) {
  if (c.no_tune) return "disabled (--no-tune)";
  return "no tuner in this build: " + std::to_string(pending) + " retune request" + (pending == 1 ? "" : "s") +
         " queued";
}

Handler::Handler(State& state, const Config& config, AdminPolicy admin, ServiceStats& stats)
    : m_state(state), m_config(config), m_admin(std::move(admin)), m_stats(stats) {}

void Handler::handle(std::string_view frame, Connection& conn, std::string& out) {
  ++m_stats.requests;
  api::Request request;
  json r;
  try {
    if (auto e = api::parse_request(frame, request)) {
      r = api::error_reply(request.id, *e);
    } else {
      r = reply(request, conn);
    }
  } catch (const ReplyError& e) {
    r = api::error_reply(request.id, e.code, e.message);
  } catch (const cache::StoreFailure& e) {
    NSA_ERROR("store read failed while answering %s: %s", std::string(api::to_string(request.op)).c_str(),
              e.what());
    r = api::error_reply(request.id, errc::internal, std::string("the daemon's store failed: ") + e.what());
  } catch (const std::exception& e) {
    NSA_ERROR("unexpected failure answering %s: %s", std::string(api::to_string(request.op)).c_str(), e.what());
    r = api::error_reply(request.id, errc::internal, std::string("internal error: ") + e.what());
  }
  if (r.contains("error")) count_error();
  out += api::encode_frame(r);
}

void Handler::oversized(Connection&, std::string& out) {
  ++m_stats.requests;
  count_error();
  out += api::encode_frame(api::error_reply(
      nullptr, errc::frame_too_large,
      "frame longer than " + std::to_string(api::kMaxFrameBytes) +
          " bytes was discarded; split the request (at most " + std::to_string(api::kMaxProblemsPerRequest) +
          " problems per dispatch)"));
}

std::string Handler::timeout_reply() const {
  return api::encode_frame(api::error_reply(
      nullptr, errc::timeout,
      "a frame was left incomplete for " + std::to_string(m_config.frame_timeout.count()) +
          " ms; end every request with '\\n'. Closing the connection"));
}

std::string Handler::epoch_event(std::int64_t epoch) {
  return api::encode_frame(json{{"event", "epoch"}, {"epoch", epoch}});
}

json Handler::reply(const api::Request& r, Connection& conn) {
  if (r.op == api::Op::hello) return hello(r, conn);
  if (!conn.greeted)
    throw ReplyError{errc::hello_required,
                     "the first request on a connection must be {\"op\":\"hello\",\"protocol\":" +
                         std::to_string(api::kProtocolVersion) + "}"};
  if (api::is_admin(r.op) && !m_admin.allows(conn.peer)) {
    NSA_INFO("refused %s from %s: not an admin", std::string(api::to_string(r.op)).c_str(),
             conn.peer.describe().c_str());
    throw ReplyError{errc::forbidden, std::string(api::to_string(r.op)) + " is an admin op; allowed are " +
                                          m_admin.describe() + "; you are " + conn.peer.describe()};
  }
  switch (r.op) {
    case api::Op::hello: return hello(r, conn);
    case api::Op::ping: allow_fields(r, {}); {
        json j = api::ok_reply(r.id);
        j["epoch"] = m_state.snapshot()->epoch;
        return j;
      }
    case api::Op::dispatch: return dispatch(r);
    case api::Op::status: return status(r);
    case api::Op::report: return report(r);
    case api::Op::pins: return pins(r);
    case api::Op::pin: return pin(r, conn);
    case api::Op::unpin: return unpin(r, conn);
    case api::Op::retune: return retune(r, conn);
    case api::Op::subscribe: return subscribe(r, conn);
  }
  throw ReplyError{errc::unknown_op, "unknown op"};
}

json Handler::hello(const api::Request& r, Connection& conn) {
  allow_fields(r, {"protocol", "client"});
  const json* p = field(r, "protocol");
  if (!p) throw ReplyError{errc::missing_field, "hello needs the field 'protocol', e.g. {\"op\":\"hello\",\"protocol\":1}"};
  if (!p->is_number_integer()) throw ReplyError{errc::bad_type, "field 'protocol' must be an integer, e.g. 1"};
  if (const json* c = field(r, "client"); c && !c->is_string())
    throw ReplyError{errc::bad_type, "field 'client' must be a string naming the client, e.g. \"my-trainer 1.2\""};
  if (p->get<std::int64_t>() != api::kProtocolVersion) {
    throw ReplyError{errc::version_mismatch,
                     "this daemon (nsa-tuned " + std::string(kVersion) + ") speaks protocol " +
                         std::to_string(api::kProtocolVersion) + ", the client asked for " + p->dump() +
                         "; use a client of the same release"};
  }
  conn.greeted = true;
  json j = api::ok_reply(r.id);
  j["protocol"] = api::kProtocolVersion;
  j["daemon"] = "nsa-tuned";
  j["version"] = kVersion;
  j["pid"] = static_cast<std::int64_t>(::getpid());
  j["epoch"] = m_state.snapshot()->epoch;
  j["admin"] = m_admin.allows(conn.peer);
  return j;
}

json Handler::dispatch(const api::Request& r) {
  allow_fields(r, {"problems"});
  const json* problems = field(r, "problems");
  if (!problems)
    throw ReplyError{errc::missing_field, "dispatch needs the field 'problems': an array of 1 to " +
                                              std::to_string(api::kMaxProblemsPerRequest) + " problem objects"};
  if (!problems->is_array())
    throw ReplyError{errc::bad_type, "field 'problems' must be an array of problem objects"};
  if (problems->empty() || problems->size() > api::kMaxProblemsPerRequest)
    throw ReplyError{errc::bad_request, "'problems' holds " + std::to_string(problems->size()) +
                                            " problems; send 1 to " +
                                            std::to_string(api::kMaxProblemsPerRequest) + " per request"};
  const auto snapshot = m_state.snapshot();
  const std::int64_t now = now_unix();
  json answers = json::array();
  for (const json& pj : *problems) {
    api::Problem problem;
    if (auto e = api::parse_problem(pj, problem)) {
      answers.push_back(json{{"error", json{{"code", e->code}, {"message", e->message}}}});
      continue;
    }
    Decision d = decide(*snapshot, problem);
    if (d.demand) m_state.note_demand(*d.demand, now);
    answers.push_back(api::to_json(d.answer));
    ++m_stats.problems;
  }
  json j = api::ok_reply(r.id);
  j["epoch"] = snapshot->epoch;
  j["answers"] = std::move(answers);
  return j;
}

json Handler::status(const api::Request& r) {
  allow_fields(r, {});
  const auto snapshot = m_state.snapshot();
  const auto& host = m_state.host();
  auto& store = m_state.store();
  const auto pending = store.pending_retunes();

  json devices = json::array();
  for (std::size_t i = 0; i < snapshot->devices.size(); ++i) {
    const auto& d = snapshot->devices[i];
    std::size_t verdicts = 0;
    if (i < snapshot->verdicts.size() && snapshot->verdicts[i])
      for (const auto& [f, fv] : *snapshot->verdicts[i]) verdicts += fv.verdicts.size();
    auto pin = snapshot->pins.find(d.device_class.arch);
    devices.push_back(json{{"ordinal", d.record.ordinal},
                           {"uuid", d.record.uuid},
                           {"name", d.record.name},
                           {"arch", d.record.arch},
                           {"sm_count", d.record.sm_count},
                           {"memory_bytes", d.record.memory_bytes},
                           {"pinned", pin != snapshot->pins.end()},
                           {"current_verdicts", verdicts}});
  }
  json retunes = json::array();
  for (const auto& q : pending)
    retunes.push_back(json{{"id", q.id}, {"scope", q.scope}, {"requested_by", q.requested_by},
                           {"requested_at", q.requested_at}});

  const double uptime =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - m_stats.started).count();
  json j = api::ok_reply(r.id);
  j["daemon"] = json{{"version", kVersion},
                     {"protocol", api::kProtocolVersion},
                     {"pid", static_cast<std::int64_t>(::getpid())},
                     {"started_at", m_stats.started_at_unix},
                     {"uptime_s", uptime}};
  j["config"] = json{{"state_dir", m_config.state_dir.string()},
                     {"socket", m_config.socket.string()},
                     {"config_file", m_config.config_file.string()},
                     {"log_level", std::string(log::to_string(m_config.log_level))},
                     {"no_tune", m_config.no_tune},
                     {"admin_group", m_config.admin_group},
                     {"max_connections", m_config.max_connections},
                     {"frame_timeout_ms", m_config.frame_timeout.count()}};
  j["driver"] = json{{"loaded", host.driver_loaded},
                     {"version", host.driver_version},
                     {"nvrtc_version", host.nvrtc_version},
                     {"kernel_source_hash", host.source_hash},
                     {"problem", host.driver_problem.empty() ? json(nullptr) : json(host.driver_problem)}};
  j["devices"] = std::move(devices);
  j["store"] = json{{"path", store.path().string()},
                    {"schema_version", store.schema_version()},
                    {"epoch", snapshot->epoch}};
  json pins_by_arch = json::array();
  for (const auto& [arch, p] : snapshot->pins) pins_by_arch.push_back(arch);
  j["counts"] = json{{"pins", snapshot->pins.size()},
                     {"pinned_archs", std::move(pins_by_arch)},
                     {"current_verdicts", snapshot->verdict_count()},
                     {"compiled_kernels", store.kernel_count()},
                     {"demand_recorded", store.demand(100000).size()},
                     {"demand_unflushed", m_state.pending_demand()}};
  j["pending_retunes"] = std::move(retunes);
  j["connections"] = json{{"open", m_stats.connections_open},
                          {"max", m_config.max_connections},
                          {"accepted", m_stats.connections_accepted},
                          {"refused", m_stats.connections_refused},
                          {"subscribers", m_stats.subscribers}};
  j["requests"] = json{{"served", m_stats.requests},
                       {"problems", m_stats.problems},
                       {"errors", m_stats.error_replies},
                       {"timeouts", m_stats.timeouts}};
  j["tuning"] = tuning_summary(m_config, pending.size());
  return j;
}

json Handler::report(const api::Request& r) {
  allow_fields(r, {});
  json j = api::ok_reply(r.id);
  j["report"] = tuner::build_report(m_state.store(), m_state.current_classes());
  return j;
}

json Handler::pins(const api::Request& r) {
  allow_fields(r, {});
  const auto snapshot = m_state.snapshot();
  json list = json::array();
  for (const auto& [arch, p] : snapshot->pins) list.push_back(pin_json(p));
  json j = api::ok_reply(r.id);
  j["epoch"] = snapshot->epoch;
  j["pins"] = std::move(list);
  return j;
}

json Handler::pin(const api::Request& r, const Connection& conn) {
  allow_fields(r, {"arch", "reason"});
  cache::Pin p;
  p.arch = require_string(r, "arch", "\"sm_90\"");
  p.reason = require_string(r, "reason", "\"numerics regression on driver 580, see INC-123\"");
  if (!arch_like(p.arch))
    throw ReplyError{errc::bad_request, "arch '" + clip(p.arch) + "' is not an arch name; write it like sm_90"};
  if (p.reason.find_first_not_of(" \t") == std::string::npos)
    throw ReplyError{errc::bad_request, "a pin needs a reason that says why, for the operators who find it later"};
  p.backend = "sdpa";
  p.seeded = false;
  p.created_by = who(conn);
  p.created_at = now_unix();
  if (auto e = m_state.store().add_pin(p); !e) {
    const auto& err = e.error();
    NSA_WARN("pin %s by %s failed: %s", p.arch.c_str(), conn.peer.describe().c_str(), err.message.c_str());
    throw ReplyError{err.code == "refused" ? errc::refused
                     : err.code == "invalid" ? errc::bad_request
                                             : errc::internal,
                     err.message};
  }
  NSA_INFO("pinned %s to sdpa by %s: %s", p.arch.c_str(), conn.peer.describe().c_str(), p.reason.c_str());
  m_state.refresh();
  json j = api::ok_reply(r.id);
  j["pin"] = pin_json(p);
  j["epoch"] = m_state.snapshot()->epoch;
  return j;
}

json Handler::unpin(const api::Request& r, const Connection& conn) {
  allow_fields(r, {"arch"});
  const std::string arch = require_string(r, "arch", "\"sm_90\"");
  if (auto e = m_state.store().remove_pin(arch); !e) {
    const auto& err = e.error();
    if (err.code == "refused") {
      const auto snapshot = m_state.snapshot();
      auto it = snapshot->pins.find(arch);
      std::string why = it != snapshot->pins.end() ? it->second.reason : err.message;
      NSA_INFO("refused unpin of seeded %s by %s", arch.c_str(), conn.peer.describe().c_str());
      throw ReplyError{errc::refused, "the " + clip(arch) +
                                          " pin is seeded policy and cannot be removed: " + why};
    }
    if (err.code == "not_found")
      throw ReplyError{errc::not_found, "there is no pin for '" + clip(arch) + "'; see the pins op for the list"};
    throw ReplyError{err.code == "invalid" ? errc::bad_request : errc::internal, err.message};
  }
  NSA_INFO("unpinned %s by %s", arch.c_str(), conn.peer.describe().c_str());
  m_state.refresh();
  json j = api::ok_reply(r.id);
  j["arch"] = arch;
  j["epoch"] = m_state.snapshot()->epoch;
  return j;
}

json Handler::retune(const api::Request& r, const Connection& conn) {
  allow_fields(r, {"scope"});
  std::string scope = "all";
  if (const json* s = field(r, "scope")) {
    if (!s->is_string())
      throw ReplyError{errc::bad_type, "field 'scope' must be a string: \"all\", an arch like \"sm_90\" or a family key"};
    scope = s->get<std::string>();
  }
  if (scope != "all" && !arch_like(scope) && !api::Family::parse(scope))
    throw ReplyError{errc::bad_request, "scope '" + clip(scope) +
                                            "' is neither \"all\", an arch like \"sm_90\", nor a family key like "
                                            "\"bf16.dqk128.dv128.h16.blk64.n16.decode\""};
  if (m_config.no_tune)
  {
    auto src = m_config.sources.find("no_tune");
    throw ReplyError{errc::tuning_disabled,
                     "this daemon runs with --no-tune (set by " +
                         (src == m_config.sources.end() ? std::string("its configuration") : src->second) +
                         "); restart it without --no-tune to tune"};
  }
  auto id = m_state.store().request_retune(scope, who(conn));
  if (!id) throw ReplyError{errc::internal, id.error().message};
  const auto pending = m_state.store().pending_retunes().size();
  NSA_INFO("retune of %s queued (#%lld) by %s", scope.c_str(), static_cast<long long>(*id),
           conn.peer.describe().c_str());
  json j = api::ok_reply(r.id);
  j["retune_id"] = *id;
  j["scope"] = scope;
  j["tuning"] = tuning_summary(m_config, pending);
  return j;
}

json Handler::subscribe(const api::Request& r, Connection& conn) {
  allow_fields(r, {});
  if (!conn.subscribed) {
    conn.subscribed = true;
    ++m_stats.subscribers;
  }
  json j = api::ok_reply(r.id);
  j["epoch"] = m_state.snapshot()->epoch;
  return j;
}

}  // namespace nsa::service
