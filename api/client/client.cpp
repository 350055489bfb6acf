// libnsa_tune_client: the C-ABI client of nsa-tuned (client.h states the contracts).
//
// How a call is answered, and why it never blocks beyond the budget:
//
//   nsa_tune_dispatch(p)
//     1. memo lookup under a shared lock, keyed by the whole problem        hit: done, no syscall
//     2. local validation (the same rules as the daemon)          invalid: INVALID_PROBLEM, no syscall
//     3. daemon known down or incompatible (the background thread says so)? fallback, no syscall
//     4. take an idle connection from the pool, or connect and pipeline hello + dispatch;
//        every wait is a ppoll against one deadline = start + budget
//     5. reply in time: fill the answer, memoize it if the reply's epoch is current
//        anything else (no reply, EOF, garbage, other protocol): close that connection (a late
//        reply must never be read as the reply to the next request) and answer the fallback.
//
// The background thread keeps one `subscribe` connection. Each epoch it learns (from its hello,
// the subscribe reply and the events) that differs from the known one drops the memo: the daemon
// pushes an event whenever an answer may have changed. When the subscription is lost it marks the
// daemon down (step 3 then answers at once), empties the pool (those connections died with it)
// and reconnects with exponential backoff; a successful re-subscription drops the memo too, since
// what happened while it was away (a restart on a new driver) cannot be known. Replies on
// request connections only ever move the known epoch forward: a reply that raced with a change
// and carries an older epoch is returned to its caller but not memoized.
//
// Closing writes to an eventfd that every wait of the background thread also polls, so close
// joins the thread at once, even in the middle of a backoff or a handshake with a hung daemon.

#include "nsa/api/client.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <poll.h>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <sys/eventfd.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include "connection.hpp"
#include "nsa/api/answer.hpp"
#include "nsa/api/problem.hpp"
#include "nsa/api/protocol.hpp"

#ifndef NSA_TUNE_VERSION
#error "NSA_TUNE_VERSION must be defined by the build"
#endif

namespace nsa::api::client {

namespace {

using nlohmann::json;

constexpr std::int64_t kDefaultBudgetUs = 2000;
constexpr std::int64_t kDefaultBackoffMinUs = 10'000;
constexpr std::int64_t kDefaultBackoffMaxUs = 2'000'000;
constexpr std::int64_t kDefaultMemoCapacity = 65536;
constexpr std::size_t kMaxIdleConnections = 8;
// The background thread is not on anyone's hot path, so its handshakes may wait this long.
constexpr auto kBackgroundHandshake = std::chrono::seconds(2);

/// The memo key: the whole problem in a canonical fixed layout (zeroed padding, the target
/// normalised), so equality is memcmp and hashing is over raw bytes, with no allocation.
struct MemoKey {
  char uuid[NSA_TUNE_UUID_BYTES];
  char arch[NSA_TUNE_ARCH_BYTES];
  std::int64_t t_q, t_kv;
  std::int32_t device, dtype, d_qk, d_v, h, h_kv, block, n, batch, pad;
  bool operator==(const MemoKey& o) const { return std::memcmp(this, &o, sizeof *this) == 0; }
};
static_assert(std::has_unique_object_representations_v<MemoKey>);

struct MemoKeyHash {
  std::size_t operator()(const MemoKey& k) const {
    return std::hash<std::string_view>{}(std::string_view(reinterpret_cast<const char*>(&k), sizeof k));
  }
};

/// A memoized answer, compactly (the C struct is ~5 KB, mostly empty buffers).
struct Cached {
  std::int32_t backend;
  std::int32_t provenance;
  double speedup;
  std::int64_t run_id, epoch;
  std::string variant, arch, reason, launch_json;
};

void copy_str(char* dst, std::size_t cap, std::string_view s) {
  if (s.size() < cap) {
    std::memcpy(dst, s.data(), s.size());
    dst[s.size()] = '\0';
    return;
  }
  // Truncate, marking it, without splitting a UTF-8 sequence.
  std::size_t n = cap - 4;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  std::memcpy(dst, s.data(), n);
  std::memcpy(dst + n, "...", 4);
}

void fill(nsa_tune_answer& a, const Cached& c) {
  a.backend = c.backend;
  a.provenance = c.provenance;
  a.speedup = c.speedup;
  a.run_id = c.run_id;
  a.epoch = c.epoch;
  copy_str(a.variant, sizeof a.variant, c.variant);
  copy_str(a.arch, sizeof a.arch, c.arch);
  copy_str(a.reason, sizeof a.reason, c.reason);
  copy_str(a.launch_json, sizeof a.launch_json, c.launch_json);
}

void fill_sdpa(nsa_tune_answer& a, std::int32_t why, std::string_view reason) {
  a.backend = NSA_TUNE_BACKEND_SDPA;
  a.provenance = why;
  a.speedup = 0;
  a.run_id = 0;
  a.epoch = -1;
  a.variant[0] = '\0';
  a.arch[0] = '\0';
  a.launch_json[0] = '\0';
  copy_str(a.reason, sizeof a.reason, reason);
}

/// Reads a fixed char buffer that must hold a NUL within its size.
bool fixed_string(const char* buf, std::size_t cap, std::string_view& out) {
  std::size_t n = strnlen(buf, cap);
  if (n == cap) return false;
  out = std::string_view(buf, n);
  return true;
}

/// The canonical key of a C problem; nullopt (with `error`) when its strings are unterminated
/// or its target is ambiguous. Shape rules are checked later, by validate(), on misses only.
std::optional<MemoKey> make_key(const nsa_tune_problem& p, std::string& error) {
  MemoKey k;
  std::memset(&k, 0, sizeof k);
  std::string_view uuid, arch;
  if (!fixed_string(p.device_uuid, sizeof p.device_uuid, uuid)) {
    error = "device_uuid is not NUL-terminated within its 64 bytes";
    return std::nullopt;
  }
  if (!fixed_string(p.arch, sizeof p.arch, arch)) {
    error = "arch is not NUL-terminated within its 16 bytes";
    return std::nullopt;
  }
  if (!uuid.empty() && !arch.empty()) {
    error = "give at most one of device_uuid and arch (an empty arch and uuid mean the device ordinal)";
    return std::nullopt;
  }
  std::memcpy(k.uuid, uuid.data(), uuid.size());
  std::memcpy(k.arch, arch.data(), arch.size());
  k.device = uuid.empty() && arch.empty() ? p.device : -1;
  k.dtype = static_cast<std::int32_t>(p.dtype);
  k.d_qk = p.d_qk, k.d_v = p.d_v, k.h = p.h, k.h_kv = p.h_kv, k.block = p.block, k.n = p.n, k.batch = p.batch;
  k.t_q = p.t_q, k.t_kv = p.t_kv;
  return k;
}

std::optional<Error> to_problem(const nsa_tune_problem& c, const MemoKey& k, Problem& out) {
  Problem p;
  if (k.arch[0]) p.arch = k.arch;
  else if (k.uuid[0]) p.device_uuid = k.uuid;
  else p.device = k.device;
  if (c.dtype == NSA_TUNE_DTYPE_BF16) p.dtype = DType::bf16;
  else if (c.dtype == NSA_TUNE_DTYPE_FP16) p.dtype = DType::fp16;
  else return Error{"bad_shape", "dtype " + std::to_string(c.dtype) + " is not NSA_TUNE_DTYPE_BF16 (0) or NSA_TUNE_DTYPE_FP16 (1)"};
  p.d_qk = c.d_qk, p.d_v = c.d_v, p.h = c.h, p.h_kv = c.h_kv, p.block = c.block, p.n = c.n;
  p.t_q = c.t_q, p.t_kv = c.t_kv, p.batch = c.batch;
  if (auto e = validate(p)) return e;
  out = std::move(p);
  return std::nullopt;
}

std::optional<std::int32_t> c_provenance(Provenance p) {
  switch (p) {
    case Provenance::pinned: return NSA_TUNE_PROVENANCE_PINNED;
    case Provenance::measured: return NSA_TUNE_PROVENANCE_MEASURED;
    case Provenance::untuned: return NSA_TUNE_PROVENANCE_UNTUNED;
    case Provenance::no_device: return NSA_TUNE_PROVENANCE_NO_DEVICE;
    case Provenance::daemon_unavailable: return std::nullopt;  // the daemon never sends it
  }
  return std::nullopt;
}

/// Converts a parsed answer into its cached form; nullopt (with `error`) when the C struct
/// cannot hold it faithfully (a truncated variant or launch would be a wrong answer, not a
/// shortened one).
std::optional<Cached> to_cached(const Answer& a, std::int64_t epoch, std::string& error) {
  auto prov = c_provenance(a.provenance);
  if (!prov) {
    error = "an answer with provenance daemon_unavailable, which only clients may give";
    return std::nullopt;
  }
  Cached c{a.backend == Backend::sparse ? NSA_TUNE_BACKEND_SPARSE : NSA_TUNE_BACKEND_SDPA, *prov, a.speedup,
           a.run_id, epoch, a.variant, a.arch, a.reason, std::string()};
  if (!a.launch.is_null()) c.launch_json = a.launch.dump(-1, ' ', false, json::error_handler_t::replace);
  if (c.variant.size() >= NSA_TUNE_VARIANT_BYTES) error = "a variant key longer than 255 bytes";
  else if (c.arch.size() >= NSA_TUNE_ARCH_BYTES) error = "an arch name longer than 15 bytes";
  else if (c.launch_json.size() >= NSA_TUNE_LAUNCH_BYTES) error = "a launch description longer than 4095 bytes";
  else return c;
  return std::nullopt;
}

std::string describe(const ConnError& e, std::int64_t budget_us) {
  std::string what;
  switch (e.kind) {
    case Failure::no_daemon: what = "no daemon listening (" + e.message + ")"; break;
    case Failure::timeout: what = e.message + " (" + std::to_string(budget_us) + " us)"; break;
    case Failure::garbage: what = "the daemon replied garbage (" + e.message + ")"; break;
    case Failure::incompatible: what = "protocol version mismatch: " + e.message; break;
    case Failure::cancelled: what = "the client is closing"; break;
    case Failure::closed:
    case Failure::io: what = e.message; break;
  }
  return "nsa-tuned unavailable: " + what + (e.known ? "; retrying in the background" : "") + "; answering sdpa";
}

}  // namespace

class Client {
 public:
  explicit Client(const nsa_tune_client_options* o) {
    nsa_tune_client_options opts{};
    if (o) opts = *o;
    if (opts.socket_path && *opts.socket_path) {
      m_path = opts.socket_path;
    } else if (const char* env = std::getenv("NSA_TUNE_SOCKET"); env && *env) {
      m_path = env;
    } else {
      m_path = kDefaultSocketPath;
    }
    m_budget_us = opts.budget_us > 0 ? opts.budget_us : kDefaultBudgetUs;
    m_name = opts.client_name && *opts.client_name ? opts.client_name
                                                   : std::string("libnsa_tune_client/") + NSA_TUNE_VERSION;
    m_backoff_min_us = opts.backoff_min_us > 0 ? opts.backoff_min_us : kDefaultBackoffMinUs;
    m_backoff_max_us = std::max(m_backoff_min_us, opts.backoff_max_us > 0 ? opts.backoff_max_us : kDefaultBackoffMaxUs);
    m_memo_capacity = opts.memo_capacity > 0 ? std::size_t(opts.memo_capacity) : std::size_t(kDefaultMemoCapacity);
    m_wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (m_wake_fd < 0) throw std::runtime_error("eventfd failed");
    try {
      m_thread = std::thread([this] { subscription_loop(); });
    } catch (...) {
      ::close(m_wake_fd);
      throw;
    }
  }

  ~Client() {
    m_stop.store(true);
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(m_wake_fd, &one, sizeof one);
    if (m_thread.joinable()) m_thread.join();
    ::close(m_wake_fd);
  }

  int dispatch(const nsa_tune_problem& p, nsa_tune_answer& a) {
    std::string error;
    auto key = make_key(p, error);
    if (!key) return invalid(a, error);
    if (lookup(*key, a)) return NSA_TUNE_OK;
    Pending one{0, *key, {}};
    if (auto e = to_problem(p, *key, one.problem)) return invalid(a, e->message);
    m_misses.fetch_add(1, std::memory_order_relaxed);
    std::vector<Pending> pending{std::move(one)};
    return exchange(pending, &a, Clock::now() + std::chrono::microseconds(m_budget_us));
  }

  int dispatch_many(const nsa_tune_problem* ps, std::size_t count, nsa_tune_answer* as) {
    auto deadline = Clock::now() + std::chrono::microseconds(m_budget_us);
    int result = NSA_TUNE_OK;
    std::vector<Pending> pending;
    for (std::size_t i = 0; i < count; ++i) {
      std::string error;
      auto key = make_key(ps[i], error);
      if (!key) {
        result = std::max(result, invalid(as[i], error));
        continue;
      }
      if (lookup(*key, as[i])) continue;
      Pending one{i, *key, {}};
      if (auto e = to_problem(ps[i], *key, one.problem)) {
        result = std::max(result, invalid(as[i], e->message));
        continue;
      }
      m_misses.fetch_add(1, std::memory_order_relaxed);
      pending.push_back(std::move(one));
    }
    // NSA_TUNE_FALLBACK (1) outranks NSA_TUNE_INVALID_PROBLEM (2) in the result.
    auto worst = [](int a, int b) {
      if (a == NSA_TUNE_FALLBACK || b == NSA_TUNE_FALLBACK) return NSA_TUNE_FALLBACK;
      return std::max(a, b);
    };
    for (std::size_t from = 0; from < pending.size(); from += kMaxProblemsPerRequest) {
      std::size_t to = std::min(pending.size(), from + kMaxProblemsPerRequest);
      std::vector<Pending> chunk(pending.begin() + std::ptrdiff_t(from), pending.begin() + std::ptrdiff_t(to));
      result = worst(result, exchange(chunk, as, deadline));
    }
    return result;
  }

  std::int64_t epoch() const { return m_epoch_mirror.load(std::memory_order_acquire); }

  nsa_tune_stats stats() const {
    nsa_tune_stats s{};
    s.hits = m_hits.load(std::memory_order_relaxed);
    s.misses = m_misses.load(std::memory_order_relaxed);
    s.fallbacks = m_fallbacks.load(std::memory_order_relaxed);
    s.reconnects = m_reconnects.load(std::memory_order_relaxed);
    s.invalid = m_invalid.load(std::memory_order_relaxed);
    s.epoch_changes = m_epoch_changes.load(std::memory_order_relaxed);
    return s;
  }

 private:
  enum class DaemonState { unknown, up, down, incompatible };

  struct Pending {
    std::size_t index;  // into the caller's answers
    MemoKey key;
    Problem problem;
  };

  // ---- memo ------------------------------------------------------------------------------

  bool lookup(const MemoKey& key, nsa_tune_answer& a) {
    std::shared_lock lock(m_memo_mutex);
    auto it = m_memo.find(key);
    if (it == m_memo.end()) return false;
    fill(a, it->second);
    lock.unlock();
    m_hits.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  /// Caller holds m_memo_mutex exclusively.
  void set_epoch_locked(std::int64_t e) {
    if (m_epoch >= 0 && e != m_epoch) {
      m_memo.clear();
      m_epoch_changes.fetch_add(1, std::memory_order_relaxed);
    }
    m_epoch = e;
    m_epoch_mirror.store(e, std::memory_order_release);
  }

  /// From the subscription: any different epoch is a change (a restarted or other daemon).
  /// `resubscribed`: the subscription was lost and is back; whatever happened meanwhile (a
  /// restart with a new driver, another state directory) cannot be ruled out, so the memo goes
  /// even if the epoch looks the same.
  void adopt_epoch(std::int64_t e, bool resubscribed = false) {
    std::unique_lock lock(m_memo_mutex);
    if (resubscribed && e == m_epoch && !m_memo.empty()) {
      m_memo.clear();
      m_epoch_changes.fetch_add(1, std::memory_order_relaxed);
    }
    if (e != m_epoch) set_epoch_locked(e);
  }

  // ---- answering misses ------------------------------------------------------------------

  int invalid(nsa_tune_answer& a, std::string_view why) {
    m_invalid.fetch_add(1, std::memory_order_relaxed);
    fill_sdpa(a, NSA_TUNE_PROVENANCE_INVALID_PROBLEM, "invalid problem: " + std::string(why));
    return NSA_TUNE_INVALID_PROBLEM;
  }

  int fallback(const std::vector<Pending>& ps, nsa_tune_answer* as, const std::string& why) {
    for (const Pending& p : ps) fill_sdpa(as[p.index], NSA_TUNE_PROVENANCE_DAEMON_UNAVAILABLE, why);
    m_fallbacks.fetch_add(ps.size(), std::memory_order_relaxed);
    return NSA_TUNE_FALLBACK;
  }

  /// Sends one dispatch request for `ps` (at most kMaxProblemsPerRequest) and fills their
  /// answers, all before `deadline`.
  int exchange(const std::vector<Pending>& ps, nsa_tune_answer* as, Clock::time_point deadline) {
    json problems = json::array();
    for (const Pending& p : ps) problems.push_back(to_json(p.problem));
    std::string frame = encode_frame(json{{"op", "dispatch"}, {"id", "dispatch"}, {"problems", std::move(problems)}});

    auto reply = request(frame, deadline);
    if (!reply) return fallback(ps, as, describe(reply.error(), m_budget_us));
    const json& r = *reply;

    if (!r["ok"].get<bool>()) return daemon_error(r, ps, as);

    auto answers = r.find("answers");
    auto epoch = r.find("epoch");
    if (answers == r.end() || !answers->is_array() || answers->size() != ps.size() || epoch == r.end() ||
        !epoch->is_number_integer())
      return garbage(ps, as, "a dispatch reply without 'epoch' or with " +
                                 std::string(answers != r.end() && answers->is_array()
                                                 ? std::to_string(answers->size()) : "no") +
                                 " answers for " + std::to_string(ps.size()) + " problems");
    std::int64_t e = epoch->get<std::int64_t>();
    std::vector<Cached> cached;
    cached.reserve(ps.size());
    for (std::size_t i = 0; i < ps.size(); ++i) {
      std::string error;
      auto a = answer_from_json((*answers)[i], &error);
      std::optional<Cached> c;
      if (a) c = to_cached(*a, e, error);
      if (!c) return garbage(ps, as, "answers[" + std::to_string(i) + "]: " + error);
      cached.push_back(std::move(*c));
    }
    for (std::size_t i = 0; i < ps.size(); ++i) fill(as[ps[i].index], cached[i]);

    std::unique_lock lock(m_memo_mutex);
    if (m_epoch < 0 || e > m_epoch) set_epoch_locked(e);
    if (e == m_epoch) {
      for (std::size_t i = 0; i < ps.size(); ++i) {
        if (m_memo.size() >= m_memo_capacity) m_memo.clear();
        m_memo.insert_or_assign(ps[i].key, std::move(cached[i]));
      }
    }
    return NSA_TUNE_OK;
  }

  int garbage(const std::vector<Pending>& ps, nsa_tune_answer* as, const std::string& what) {
    return fallback(ps, as, describe(ConnError{Failure::garbage, what}, m_budget_us));
  }

  /// An error reply to a dispatch. The daemon names the offending problem ("problems[3]: ...");
  /// that one is invalid, the others of the request get the fallback.
  int daemon_error(const json& r, const std::vector<Pending>& ps, nsa_tune_answer* as) {
    const json* err = r.contains("error") && r["error"].is_object() ? &r["error"] : nullptr;
    std::string code = err && err->contains("code") && (*err)["code"].is_string() ? (*err)["code"].get<std::string>() : "";
    std::string message =
        err && err->contains("message") && (*err)["message"].is_string() ? (*err)["message"].get<std::string>() : "";
    if (code.empty()) return garbage(ps, as, "an error reply without an error code");
    bool shape_error = code == errc::bad_shape || code == errc::bad_type || code == errc::missing_field ||
                       code == errc::bad_request;
    std::size_t bad = ps.size();
    if (shape_error && message.starts_with("problems[")) {
      std::size_t idx = 0, pos = 9;
      while (pos < message.size() && message[pos] >= '0' && message[pos] <= '9') idx = idx * 10 + (message[pos++] - '0');
      if (pos > 9 && pos < message.size() && message[pos] == ']' && idx < ps.size()) bad = idx;
    }
    if (bad == ps.size())
      return fallback(ps, as, "nsa-tuned unavailable: the daemon answered " + code + ": " + message + "; answering sdpa");
    int result = NSA_TUNE_INVALID_PROBLEM;
    for (std::size_t i = 0; i < ps.size(); ++i) {
      if (i == bad) {
        invalid(as[ps[i].index], "the daemon rejected it: " + code + ": " + message);
      } else {
        fill_sdpa(as[ps[i].index], NSA_TUNE_PROVENANCE_DAEMON_UNAVAILABLE,
                  "nsa-tuned rejected problems[" + std::to_string(bad) + "] of the same request; answering sdpa");
        m_fallbacks.fetch_add(1, std::memory_order_relaxed);
        result = NSA_TUNE_FALLBACK;
      }
    }
    return result;
  }

  /// One request/reply exchange on a pooled or fresh connection, before `deadline`.
  std::expected<json, ConnError> request(const std::string& frame, Clock::time_point deadline) {
    if (auto known = known_failure()) return std::unexpected(*known);
    for (int attempt = 0; attempt < 2; ++attempt) {
      Connection conn;
      bool pooled = false;
      {
        std::lock_guard lock(m_pool_mutex);
        if (!m_idle.empty()) {
          conn = std::move(m_idle.back());
          m_idle.pop_back();
          pooled = true;
        }
      }
      std::expected<json, ConnError> reply = std::unexpected(ConnError{Failure::io, ""});
      if (pooled) {
        auto sent = conn.send(frame, deadline);
        if (sent) reply = conn.read_reply(deadline, -1, [](const json&) {});
        else reply = std::unexpected(sent.error());
      } else {
        auto c = Connection::connect(m_path, deadline);
        if (!c) {
          if (c.error().kind == Failure::no_daemon) mark(DaemonState::down, c.error());
          return std::unexpected(c.error());
        }
        conn = std::move(*c);
        auto hello = conn.hello(m_name, deadline, -1, frame);
        if (!hello) {
          if (hello.error().kind == Failure::incompatible) mark(DaemonState::incompatible, hello.error());
          return std::unexpected(hello.error());
        }
        reply = conn.read_reply(deadline, -1, [](const json&) {});
      }
      if (reply) {
        give_back(std::move(conn));
        return reply;
      }
      // A pooled connection the daemon closed while idle (a restart) deserves one fresh try.
      if (pooled && reply.error().kind == Failure::closed && micros_left(deadline) > 0) continue;
      return reply;
    }
    return std::unexpected(ConnError{Failure::closed, "the daemon closed the connection"});
  }

  void give_back(Connection conn) {
    std::lock_guard lock(m_pool_mutex);
    if (m_idle.size() < kMaxIdleConnections) m_idle.push_back(std::move(conn));
  }

  std::optional<ConnError> known_failure() {
    DaemonState s = m_state.load(std::memory_order_acquire);
    if (s != DaemonState::down && s != DaemonState::incompatible) return std::nullopt;
    std::lock_guard lock(m_state_mutex);
    ConnError e = m_state_reason;
    e.known = true;
    return e;
  }

  void mark(DaemonState s, const ConnError& why) {
    std::lock_guard lock(m_state_mutex);
    m_state_reason = why;
    m_state.store(s, std::memory_order_release);
  }

  // ---- the background subscription -------------------------------------------------------

  bool wait_backoff(std::int64_t us) {
    pollfd pfd{m_wake_fd, POLLIN, 0};
    timespec ts{static_cast<time_t>(us / 1'000'000), static_cast<long>((us % 1'000'000) * 1000)};
    ::ppoll(&pfd, 1, &ts, nullptr);
    return !m_stop.load();
  }

  void subscription_loop() {
    std::int64_t backoff = m_backoff_min_us;
    bool ever_connected = false;
    const std::string subscribe = encode_frame(json{{"op", "subscribe"}, {"id", "subscribe"}});
    while (!m_stop.load()) {
      auto deadline = Clock::now() + kBackgroundHandshake;
      auto c = Connection::connect(m_path, deadline, m_wake_fd);
      std::expected<std::int64_t, ConnError> hello = std::unexpected(ConnError{Failure::io, ""});
      std::expected<json, ConnError> sub = std::unexpected(ConnError{Failure::io, ""});
      if (c) hello = c->hello(m_name, deadline, m_wake_fd, subscribe);
      if (c && hello) sub = c->read_reply(deadline, m_wake_fd, [](const json&) {});
      std::optional<ConnError> failure;
      if (!c) failure = c.error();
      else if (!hello) failure = hello.error();
      else if (!sub) failure = sub.error();
      else if (!(*sub)["ok"].get<bool>() || !sub->contains("epoch") || !(*sub)["epoch"].is_number_integer())
        failure = ConnError{Failure::garbage, "the daemon refused subscribe: " + sub->dump()};
      if (failure) {
        if (failure->kind == Failure::cancelled) break;
        // A daemon that is there but hangs is not "down": misses keep trying within their budget.
        if (failure->kind != Failure::timeout) {
          mark(failure->kind == Failure::incompatible ? DaemonState::incompatible : DaemonState::down, *failure);
          // Idle connections are to the daemon that is gone (one that died before this
          // subscription's first reply leaves them behind, as a lost subscription does).
          std::lock_guard lock(m_pool_mutex);
          m_idle.clear();
        }
        if (!wait_backoff(backoff)) break;
        backoff = std::min(backoff * 2, m_backoff_max_us);
        continue;
      }
      // Counted before the epoch is adopted: whoever sees the new epoch (its release store)
      // sees the reconnect too.
      if (ever_connected) m_reconnects.fetch_add(1, std::memory_order_relaxed);
      adopt_epoch((*sub)["epoch"].get<std::int64_t>(), /*resubscribed=*/ever_connected);
      ever_connected = true;
      backoff = m_backoff_min_us;
      m_state.store(DaemonState::up, std::memory_order_release);
      prewarm();

      // Follow the events until the daemon goes away (or we are closed).
      ConnError lost{Failure::closed, "the daemon closed the subscription"};
      for (;;) {
        auto frame = c->read_frame(Clock::time_point::max(), m_wake_fd);
        if (!frame) {
          lost = frame.error();
          break;
        }
        auto ev = frame->find("event");
        if (ev != frame->end() && *ev == "epoch" && frame->contains("epoch") && (*frame)["epoch"].is_number_integer())
          adopt_epoch((*frame)["epoch"].get<std::int64_t>());
      }
      if (lost.kind == Failure::cancelled) break;
      mark(DaemonState::down, lost);
      {
        std::lock_guard lock(m_pool_mutex);
        m_idle.clear();
      }
      // Reconnect at once the first time (a restart is quick), then back off.
      continue;
    }
  }

  /// Opens one request connection ahead of need, so the first miss skips connect and hello.
  void prewarm() {
    {
      std::lock_guard lock(m_pool_mutex);
      if (!m_idle.empty()) return;
    }
    auto deadline = Clock::now() + kBackgroundHandshake;
    auto c = Connection::connect(m_path, deadline, m_wake_fd);
    if (!c) return;
    auto hello = c->hello(m_name, deadline, m_wake_fd);
    if (!hello) return;
    std::unique_lock lock(m_memo_mutex);
    if (m_epoch < 0 || *hello > m_epoch) set_epoch_locked(*hello);
    lock.unlock();
    give_back(std::move(*c));
  }

  std::string m_path;
  std::int64_t m_budget_us = kDefaultBudgetUs;
  std::string m_name;
  std::int64_t m_backoff_min_us = kDefaultBackoffMinUs, m_backoff_max_us = kDefaultBackoffMaxUs;
  std::size_t m_memo_capacity = kDefaultMemoCapacity;

  mutable std::shared_mutex m_memo_mutex;
  std::unordered_map<MemoKey, Cached, MemoKeyHash> m_memo;  // guarded by m_memo_mutex
  std::int64_t m_epoch = -1;                                // guarded by m_memo_mutex
  std::atomic<std::int64_t> m_epoch_mirror{-1};             // for lock-free nsa_tune_epoch

  std::mutex m_pool_mutex;
  std::vector<Connection> m_idle;  // guarded by m_pool_mutex

  std::atomic<DaemonState> m_state{DaemonState::unknown};
  std::mutex m_state_mutex;
  ConnError m_state_reason{Failure::io, ""};  // guarded by m_state_mutex

  std::atomic<std::uint64_t> m_hits{0}, m_misses{0}, m_fallbacks{0}, m_reconnects{0}, m_invalid{0},
      m_epoch_changes{0};

  std::atomic<bool> m_stop{false};
  int m_wake_fd = -1;
  std::thread m_thread;
};

}  // namespace nsa::api::client

struct nsa_tune_client {
  nsa::api::client::Client impl;
  explicit nsa_tune_client(const nsa_tune_client_options* o) : impl(o) {}
};

extern "C" {

NSA_TUNE_API void nsa_tune_client_options_init(nsa_tune_client_options* options) {
  if (options) *options = nsa_tune_client_options{};
}

NSA_TUNE_API void nsa_tune_problem_init(nsa_tune_problem* problem) {
  if (problem) {
    *problem = nsa_tune_problem{};
    problem->dtype = NSA_TUNE_DTYPE_BF16;
  }
}

NSA_TUNE_API nsa_tune_client* nsa_tune_client_open(const nsa_tune_client_options* options) {
  try {
    return new nsa_tune_client(options);
  } catch (...) {
    return nullptr;
  }
}

NSA_TUNE_API void nsa_tune_client_close(nsa_tune_client* client) {
  try {
    delete client;
  } catch (...) {
  }
}

NSA_TUNE_API int nsa_tune_dispatch(nsa_tune_client* client, const nsa_tune_problem* problem,
                                   nsa_tune_answer* answer) {
  if (!client || !problem || !answer) return NSA_TUNE_EINVAL;
  try {
    return client->impl.dispatch(*problem, *answer);
  } catch (const std::exception& e) {
    nsa::api::client::fill_sdpa(*answer, NSA_TUNE_PROVENANCE_DAEMON_UNAVAILABLE,
                                std::string("nsa-tune client failed: ") + e.what() + "; answering sdpa");
    return NSA_TUNE_FALLBACK;
  } catch (...) {
    nsa::api::client::fill_sdpa(*answer, NSA_TUNE_PROVENANCE_DAEMON_UNAVAILABLE,
                                "nsa-tune client failed; answering sdpa");
    return NSA_TUNE_FALLBACK;
  }
}

NSA_TUNE_API int nsa_tune_dispatch_many(nsa_tune_client* client, const nsa_tune_problem* problems, size_t count,
                                        nsa_tune_answer* answers) {
  if (!client || (count > 0 && (!problems || !answers))) return NSA_TUNE_EINVAL;
  try {
    return client->impl.dispatch_many(problems, count, answers);
  } catch (...) {
    for (size_t i = 0; i < count; ++i)
      nsa::api::client::fill_sdpa(answers[i], NSA_TUNE_PROVENANCE_DAEMON_UNAVAILABLE,
                                  "nsa-tune client failed; answering sdpa");
    return NSA_TUNE_FALLBACK;
  }
}

NSA_TUNE_API int64_t nsa_tune_epoch(const nsa_tune_client* client) { return client ? client->impl.epoch() : -1; }

NSA_TUNE_API int nsa_tune_client_stats(const nsa_tune_client* client, nsa_tune_stats* stats) {
  if (!client || !stats) return NSA_TUNE_EINVAL;
  *stats = client->impl.stats();
  return NSA_TUNE_OK;
}

NSA_TUNE_API const char* nsa_tune_version(void) { return NSA_TUNE_VERSION; }

NSA_TUNE_API int nsa_tune_protocol_version(void) { return nsa::api::kProtocolVersion; }

}  // extern "C"
