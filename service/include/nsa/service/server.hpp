#pragma once
// The acceptor side of nsa-tuned: claiming the socket path, accepting connections, reading the
// peer's credentials, capping connections, the deadline sweep, periodic maintenance (demand
// flush, epoch check) and the graceful stop.
//
// Claiming the path, in order:
//   1. an exclusive flock on "<socket>.lock" (and, in daemon_main, on "<state-dir>/nsa-tuned.lock")
//      so two daemons starting at once cannot both decide a socket is stale;
//   2. probe_socket(): nothing there -> bind; a socket nobody accepts on (ECONNREFUSED: its daemon
//      died) -> unlink and bind; a socket that accepts -> refuse to start (exit 1); anything else
//      at the path (a file, a socket we may not connect to) -> refuse, it is not ours to delete;
//   3. bind with umask 0117, then chmod 0660: owner and group may connect, nobody else.

#include <chrono>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "nsa/service/asio.hpp"
#include "nsa/service/config.hpp"
#include "nsa/service/handler.hpp"
#include "nsa/service/session.hpp"
#include "nsa/service/state.hpp"

namespace nsa::service {

/// An exclusive advisory lock on a file, held for the owner's lifetime (move-only fd owner).
/// The file keeps the holder's pid as text so a refused second instance can name it.
class InstanceLock {
 public:
  /// Takes the lock without waiting. On failure the message names the holder's pid when known.
  static std::expected<InstanceLock, std::string> acquire(const std::filesystem::path& path);
  InstanceLock(InstanceLock&& o) noexcept : m_fd(std::exchange(o.m_fd, -1)) {}
  InstanceLock& operator=(InstanceLock&& o) noexcept;
  InstanceLock(const InstanceLock&) = delete;
  InstanceLock& operator=(const InstanceLock&) = delete;
  ~InstanceLock();

 private:
  explicit InstanceLock(int fd) : m_fd(fd) {}
  int m_fd = -1;
};

enum class SocketState {
  absent,   // nothing at the path
  stale,    // a socket file nobody accepts on: its daemon died
  live,     // something accepts connections there
  foreign,  // not a socket, or a socket we cannot probe: not ours to replace
};
/// Looks at `path` without changing it: is a daemon accepting there? `detail` gets the reason
/// for foreign, or "pid N" of a live one when SO_PEERCRED tells it.
SocketState probe_socket(const std::filesystem::path& path, std::string* detail = nullptr);

/// Reads SO_PEERCRED (pid, uid, gid) and SO_PEERGROUPS (supplementary groups; falls back to
/// the uid's groups from the group database on kernels without it).
Peer peer_of(int fd);

class Server final : public SessionHost {
 public:
  Server(asio::io_context& io, const Config& config, State& state, Handler& handler, ServiceStats& stats);
  ~Server() override;

  /// Binds and listens on config.socket (its parent directory is created if missing). The path
  /// must have been claimed (absent or stale removed) before. The message says what to do.
  std::expected<void, std::string> listen();
  /// Starts accepting, the deadline sweep and the maintenance tick.
  void start();
  /// Graceful stop: stop accepting, let sessions finish what they received and flush their
  /// replies (each at most `grace`, then they are closed), stop the timers. io_context::run()
  /// returns once the last session is gone.
  /// Called again while stopping, it shortens the grace to `grace` (0: close everything now).
  void stop(std::chrono::milliseconds grace = std::chrono::milliseconds(3000));
  bool stopping() const { return m_stopping; }
  /// Called once, after stop(), when the last connection has ended (for whoever holds other
  /// work on the io_context, like a signal wait, to release it).
  void on_stopped(std::function<void()> f) { m_on_stopped = std::move(f); }
  /// Pushes an epoch event to every subscribed session.
  void broadcast_epoch(std::int64_t epoch);
  /// Removes the socket file (after the io_context stopped).
  void unlink_socket();

  void session_ended(Session&) override;

 private:
  asio::awaitable<void> accept_loop();
  asio::awaitable<void> sweep_loop();
  asio::awaitable<void> maintenance_loop();
  void refuse(asio::local::stream_protocol::socket& socket);
  void maintain();
  void finished_stopping();

  asio::io_context& m_io;
  const Config& m_config;
  State& m_state;
  Handler& m_handler;
  ServiceStats& m_stats;
  asio::local::stream_protocol::acceptor m_acceptor;
  asio::steady_timer m_sweep_timer;
  asio::steady_timer m_maintenance_timer;
  asio::steady_timer m_grace_timer;
  std::map<std::uint64_t, std::shared_ptr<Session>> m_sessions;
  std::uint64_t m_next_id = 1;
  bool m_listening = false;
  bool m_stopping = false;
  std::function<void()> m_on_stopped;
};

}  // namespace nsa::service
