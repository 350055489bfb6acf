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
  ReplyError(std::string_view c, std::string m) : code(c), message(std::move(m)) {}
  std::string code;
  std::string message;
};

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
  if (p.uid == daemon_uid) return true;
  if (!admin_gid) return false;
  return p.gid == *admin_gid || std::find(p.groups.begin(), p.groups.end(), *admin_gid) != p.groups.end();
}

std::string AdminPolicy::describe() const {
  std::string s = "the daemon's own uid " + std::to_string(daemon_uid);
  if (admin_gid) s += " and members of group " + admin_group;
  else s += " (no admin group is configured: see --admin-group)";
  return s;
}

Handler::Handler(State& state, const Config& config, AdminPolicy admin, ServiceStats& stats, Tuning& tuning)
    : m_state(state), m_config(config), m_admin(std::move(admin)), m_stats(stats), m_tuning(tuning) {}

void Handler::handle(std::string_view frame, Connection& conn, std::string& out) {
  ++m_stats.requests;
  // The hot path: a plain valid dispatch, parsed without building a document. Anything else
  // (and any error) takes the general path below, which says exactly what is wrong.
  if (conn.greeted) {
    if (auto fast = parse_dispatch_fast(frame)) {
      answer_dispatch(fast->id, fast->problems, out);
      return;
    }
  }
  api::Request request;
  json r;
  try {
    if (auto e = api::parse_request(frame, request)) {
      r = api::error_reply(request.id, *e);
    } else if (request.op == api::Op::dispatch && conn.greeted) {
      auto problems = dispatch_problems(request);
      answer_dispatch(request.id, problems, out);
      return;
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
    case api::Op::ping: {
        json j = api::ok_reply(r.id);
        j["epoch"] = m_state.snapshot()->epoch;
        return j;
      }
    case api::Op::dispatch: break;  // answered by handle() before it gets here
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
  const json* p = field(r, "protocol");
  if (!p) throw ReplyError{errc::missing_field, "hello needs the field 'protocol', e.g. {\"op\":\"hello\",\"protocol\":1}"};
  if (!p->is_number_integer()) throw ReplyError{errc::bad_type, "field 'protocol' must be an integer, e.g. 1"};
  if (const json* c = field(r, "client"); c && !c->is_string())
    throw ReplyError{errc::bad_type, "field 'client' must be a string naming the client, e.g. \"my-trainer 1.2\""};
  if (p->get<std::int64_t>() != api::kProtocolVersion) {
    // The protocol ends the connection after this reply: nothing else it says can be trusted.
    conn.close_after_reply = true;
    json j = api::error_reply(r.id, errc::version_mismatch,
                              "this daemon (nsa-tuned " + std::string(kVersion) + ") speaks protocol " +
                                  std::to_string(api::kProtocolVersion) + "; the client asked for " + p->dump() +
                                  ": upgrade the client or the daemon");
    j["protocol"] = api::kProtocolVersion;
    j["daemon"] = kVersion;
    return j;
  }
  if (!conn.greeted) {
    if (const json* c = field(r, "client"))
      NSA_DEBUG("connection %llu (%s) is %s", static_cast<unsigned long long>(conn.id), conn.peer.describe().c_str(),
                c->get_ref<const std::string&>().c_str());
  }
  conn.greeted = true;
  json j = api::ok_reply(r.id);
  j["protocol"] = api::kProtocolVersion;
  j["daemon"] = kVersion;
  j["epoch"] = m_state.snapshot()->epoch;
  j["pid"] = static_cast<std::int64_t>(::getpid());
  j["admin"] = m_admin.allows(conn.peer);
  return j;
}

std::vector<api::Problem> Handler::dispatch_problems(const api::Request& r) {
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
  // Every problem is checked before any is decided, so a request that fails records no demand.
  std::vector<api::Problem> parsed(problems->size());
  for (std::size_t i = 0; i < problems->size(); ++i) {
    if (auto e = api::parse_problem((*problems)[i], parsed[i]))
      throw ReplyError{e->code, "problems[" + std::to_string(i) + "]: " + e->message};
  }
  return parsed;
}

void Handler::answer_dispatch(const json& id, const std::vector<api::Problem>& problems, std::string& out) {
  auto snapshot = m_state.snapshot();
  if (snapshot != m_memo_snapshot || m_memo.size() > kMemoLimit) {
    m_memo.clear();
    m_memo_snapshot = snapshot;
  }
  const std::int64_t now = now_unix();
  // The reply is written by hand, keys in the order nlohmann would sort them, so a memoized
  // answer is copied as text instead of being rebuilt as a document. If anything throws half way
  // (out of memory), the partial text is taken back and an error reply goes out instead: the
  // stream never carries half a frame.
  const std::size_t rollback = out.size();
  try {
    out += "{\"answers\":[";
    for (std::size_t i = 0; i < problems.size(); ++i) {
      auto it = m_memo.find(problems[i]);
      if (it == m_memo.end()) {
        Decision d = decide(*snapshot, problems[i]);
        MemoEntry e{api::to_json(d.answer).dump(-1, ' ', false, json::error_handler_t::replace), std::move(d.demand)};
        it = m_memo.emplace(problems[i], std::move(e)).first;
      }
      if (it->second.demand) m_state.note_demand(*it->second.demand, now);
      if (i) out += ',';
      out += it->second.json;
    }
    out += "],\"epoch\":";
    out += std::to_string(snapshot->epoch);
    out += ",\"id\":";
    out += id.dump(-1, ' ', false, json::error_handler_t::replace);
    out += ",\"ok\":true}\n";
  } catch (const std::exception& e) {
    out.resize(rollback);
    NSA_ERROR("dispatch failed: %s", e.what());
    count_error();
    out += api::encode_frame(api::error_reply(id, errc::internal, std::string("internal error: ") + e.what()));
    return;
  }
  m_stats.problems += problems.size();
}

json Handler::status(const api::Request& r) {
  // The fields docs/protocol.md lists first, then the daemon's own extras (clients ignore what
  // they do not know).
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
    devices.push_back(json{{"ordinal", d.record.ordinal},
                           {"uuid", d.record.uuid},
                           {"name", d.record.name},
                           {"arch", d.record.arch},
                           {"sm_count", d.record.sm_count},
                           {"memory_bytes", d.record.memory_bytes},
                           {"driver_version", d.record.driver_version},
                           {"pinned", snapshot->pins.count(d.device_class.arch) > 0},
                           {"current_verdicts", verdicts}});
  }
  json retunes = json::array();
  for (const auto& q : pending)
    retunes.push_back(json{{"id", q.id}, {"scope", q.scope}, {"requested_by", q.requested_by},
                           {"requested_at", q.requested_at}});
  json pinned_archs = json::array();
  for (const auto& [arch, p] : snapshot->pins) pinned_archs.push_back(arch);

  const double uptime =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - m_stats.started).count();
  json j = api::ok_reply(r.id);
  j["daemon"] = kVersion;
  j["protocol"] = api::kProtocolVersion;
  j["epoch"] = snapshot->epoch;
  j["pid"] = static_cast<std::int64_t>(::getpid());
  j["uptime_s"] = uptime;
  j["state_dir"] = m_config.state_dir.string();
  j["socket"] = m_config.socket.string();
  j["tuning_enabled"] = m_tuning.on();
  j["driver"] = json{{"loaded", host.driver_loaded},
                     {"version", host.driver_version},
                     {"error", host.driver_problem.empty() ? json(nullptr) : json(host.driver_problem)}};
  j["nvrtc"] = host.nvrtc_version;
  j["devices"] = std::move(devices);
  j["tuning"] = m_tuning.status(pending);
  j["tuning_note"] = m_tuning.summary(pending.size());
  j["started_at"] = m_stats.started_at_unix;
  j["kernel_source_hash"] = host.source_hash;
  j["config_file"] = m_config.config_file.string();
  j["admin_group"] = m_config.admin_group;
  j["store"] = json{{"path", store.path().string()},
                    {"schema_version", store.schema_version()},
                    {"epoch", snapshot->epoch}};
  j["counts"] = json{{"pins", snapshot->pins.size()},
                     {"pinned_archs", std::move(pinned_archs)},
                     {"current_verdicts", snapshot->verdict_count()},
                     {"compiled_kernels", store.kernel_count()},
                     {"demand_recorded", store.demand(100000).size()},
                     {"demand_unflushed", m_state.pending_demand()}};
  j["pending_retunes"] = std::move(retunes);
  // Completed requests keep their outcome here for a while: `nsa-tunectl retune --wait` reads it.
  json recent = json::array();
  for (const auto& q : store.recent_retunes(10))
    recent.push_back(json{{"id", q.id}, {"scope", q.scope}, {"requested_by", q.requested_by},
                          {"requested_at", q.requested_at}, {"completed_at", q.completed_at},
                          {"outcome", q.completed_at ? json(q.outcome) : json(nullptr)}});
  j["recent_retunes"] = std::move(recent);
  j["connections"] = json{{"open", m_stats.connections_open},
                          {"max", m_config.max_connections},
                          {"accepted", m_stats.connections_accepted},
                          {"refused", m_stats.connections_refused},
                          {"subscribers", m_stats.subscribers}};
  j["requests"] = json{{"served", m_stats.requests},
                       {"problems", m_stats.problems},
                       {"errors", m_stats.error_replies},
                       {"timeouts", m_stats.timeouts}};
  return j;
}

json Handler::report(const api::Request& r) {
  json j = api::ok_reply(r.id);
  j["report"] = tuner::build_report(m_state.store(), m_state.current_classes());
  return j;
}

json Handler::pins(const api::Request& r) {
  const auto snapshot = m_state.snapshot();
  json list = json::array();
  for (const auto& [arch, p] : snapshot->pins) list.push_back(pin_json(p));
  json j = api::ok_reply(r.id);
  j["epoch"] = snapshot->epoch;
  j["pins"] = std::move(list);
  return j;
}

json Handler::pin(const api::Request& r, const Connection& conn) {
  cache::Pin p;
  p.arch = require_string(r, "arch", "\"sm_90\"");
  p.reason = require_string(r, "reason", "\"numerics regression on driver 580, see INC-123\"");
  if (!arch_like(p.arch))
    throw ReplyError{errc::bad_request, "arch '" + clip(p.arch) + "' is not an arch name; write it like sm_90"};
  if (p.reason.find_first_not_of(" \t") == std::string::npos)
    throw ReplyError{errc::bad_request, "a pin needs a reason that says why, for the operators who find it later"};
  if (const json* b = field(r, "backend")) {
    if (!b->is_string()) throw ReplyError{errc::bad_type, "field 'backend' must be a string: \"sdpa\""};
    if (b->get_ref<const std::string&>() != "sdpa")
      throw ReplyError{errc::bad_request, "a pin can only force \"sdpa\" (got \"" + clip(b->get<std::string>()) +
                                              "\"): a sparse answer needs a measured variant"};
  }
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
  if (!m_tuning.on()) {
    const std::string why = m_tuning.off_reason().empty() ? std::string("nsa-tuned is stopping") : m_tuning.off_reason();
    throw ReplyError{errc::tuning_disabled,
                     "this daemon does not tune: " + why +
                         (m_config.no_tune ? "; restart it without --no-tune to tune" : "; nothing was queued")};
  }
  auto queued = m_tuning.request(scope, who(conn));
  if (!queued) throw ReplyError{errc::internal, "the retune could not be queued: " + queued.error()};
  const auto pending = m_state.store().pending_retunes().size();
  NSA_INFO("retune of %s queued (#%lld) by %s%s", scope.c_str(), static_cast<long long>(queued->id),
           conn.peer.describe().c_str(), queued->pending ? "" : ": no device of this host is named, completed at once");
  json j = api::ok_reply(r.id);
  j["request_id"] = queued->id;
  j["scope"] = scope;
  j["pending"] = queued->pending;
  j["tuning_note"] = queued->pending ? m_tuning.summary(pending)
                                     : "no device of this host is named by '" + scope + "': nothing to tune";
  return j;
}

json Handler::subscribe(const api::Request& r, Connection& conn) {
  if (!conn.subscribed) {
    conn.subscribed = true;
    ++m_stats.subscribers;
  }
  json j = api::ok_reply(r.id);
  j["epoch"] = m_state.snapshot()->epoch;
  return j;
}

}  // namespace nsa::service
