#pragma once
// Requests to replies. The handler reads like the protocol (docs/protocol.md): one function per
// op, each turning a parsed request into one reply frame. It never throws and never asks for the
// connection to be dropped: every bad input becomes a structured error reply
// {"ok":false,"id":...,"error":{"code":...,"message":...}} and the connection carries on.
//
// Dispatch answers the problems of a request in order, in "answers". If any problem is invalid
// the whole request fails with that problem's error, its message prefixed "problems[i]: ", and
// no answer is given for the others: this is what docs/protocol.md specifies (a client sending
// an impossible shape has a bug to fix, not a fallback to take), and it keeps "answers[i]
// answers problems[i]" free of holes for every client.
//
// Unknown fields in a request are ignored (protocol.md: new optional fields do not need a new
// protocol version); unknown fields inside a problem are errors (api::parse_problem).
//
// Admin ops (pin, unpin, retune) are checked against the peer's credentials from SO_PEERCRED
// before their fields are looked at: allowed are the daemon's own uid and members (primary or
// supplementary group) of the configured admin group.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <sys/types.h>

#include <nlohmann/json.hpp>

#include "nsa/api/protocol.hpp"
#include "nsa/service/config.hpp"
#include "nsa/service/fast_dispatch.hpp"
#include "nsa/service/state.hpp"
#include "nsa/service/tuning.hpp"

namespace nsa::service {

/// Who is on the other end of a connection, as the kernel vouches for it.
struct Peer {
  pid_t pid = 0;
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  std::vector<gid_t> groups;  // supplementary groups
  /// "uid 1000, pid 4242"
  std::string describe() const;
};

/// Who may run admin ops.
struct AdminPolicy {
  uid_t daemon_uid = 0;
  std::optional<gid_t> admin_gid;
  std::string admin_group;  // its name, for messages; empty when none is configured
  bool allows(const Peer&) const;
  /// "the daemon's uid 998 or members of group nsa-admin", for `forbidden` messages.
  std::string describe() const;
};

/// Counters the daemon keeps for `status`.
struct ServiceStats {
  std::int64_t started_at_unix = 0;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::uint64_t connections_open = 0;
  std::uint64_t connections_accepted = 0;
  std::uint64_t connections_refused = 0;  // over max_connections
  std::uint64_t subscribers = 0;
  std::uint64_t requests = 0;             // frames answered, errors included
  std::uint64_t problems = 0;             // problems answered by dispatch
  std::uint64_t error_replies = 0;
  std::uint64_t timeouts = 0;
};

/// Per-connection protocol state.
struct Connection {
  std::uint64_t id = 0;
  Peer peer;
  bool greeted = false;     // a hello with our protocol version was answered
  bool subscribed = false;  // epoch events are pushed to it
  bool close_after_reply = false;  // set by the handler: the protocol ends this connection
};

class Handler {
 public:
  /// `tuning` answers status's "tuning" and the retune op (it may be off: see tuning.hpp).
  Handler(State& state, const Config& config, AdminPolicy admin, ServiceStats& stats, Tuning& tuning);

  /// Appends the reply frame for one request frame to `out`.
  void handle(std::string_view frame, Connection& conn, std::string& out);
  /// Appends the error reply for a frame over api::kMaxFrameBytes.
  void oversized(Connection& conn, std::string& out);
  /// The error reply for a frame left incomplete past the frame timeout.
  std::string timeout_reply() const;
  /// The event pushed to subscribers when the epoch moves.
  static std::string epoch_event(std::int64_t epoch);

  const AdminPolicy& admin() const { return m_admin; }

 private:
  nlohmann::json reply(const api::Request&, Connection&);
  nlohmann::json hello(const api::Request&, Connection&);
  /// Validates a dispatch request's problems (throws the error reply) for the general path.
  std::vector<api::Problem> dispatch_problems(const api::Request&);
  /// Appends the reply to a dispatch of valid problems, from the answer memo where it can.
  void answer_dispatch(const nlohmann::json& id, const std::vector<api::Problem>&, std::string& out);
  nlohmann::json status(const api::Request&);
  nlohmann::json report(const api::Request&);
  nlohmann::json pins(const api::Request&);
  nlohmann::json pin(const api::Request&, const Connection&);
  nlohmann::json unpin(const api::Request&, const Connection&);
  nlohmann::json retune(const api::Request&, const Connection&);
  nlohmann::json subscribe(const api::Request&, Connection&);
  void count_error() { ++m_stats.error_replies; }

  State& m_state;
  const Config& m_config;
  AdminPolicy m_admin;
  ServiceStats& m_stats;
  Tuning& m_tuning;

  // Answers already encoded, per problem, for the snapshot they were decided on: a repeated
  // problem (the common case: a job asks the same few shapes) costs a hash lookup instead of a
  // decision and a JSON encoding. Dropped whenever the snapshot changes; bounded in size.
  struct MemoEntry {
    std::string json;                 // the encoded answer object
    std::optional<DemandKey> demand;  // counted again on every hit
  };
  static constexpr std::size_t kMemoLimit = 1 << 16;
  std::unordered_map<api::Problem, MemoEntry, ProblemHash> m_memo;
  // The snapshot the memo was filled from, held so that its address cannot be reused by a newer
  // snapshot (which would make a stale memo look current).
  std::shared_ptr<const Snapshot> m_memo_snapshot;
};

}  // namespace nsa::service
