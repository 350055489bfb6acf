#include "nsa/service/server.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "nsa/service/log.hpp"

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

namespace nsa::service {

namespace {

using boost::system::error_code;
using stream = asio::local::stream_protocol;

/// A file descriptor with exactly one owner.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string errno_text(int e) { return std::strerror(e); }

}  // namespace

// InstanceLock ---------------------------------------------------------------------------------

std::expected<InstanceLock, std::string> InstanceLock::acquire(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return std::unexpected("cannot open lock file " + path.string() + ": " + errno_text(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    std::string holder;
    char buf[32] = {};
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    if (n > 0) {
      std::string pid(buf, static_cast<std::size_t>(n));
      pid.erase(pid.find_last_not_of(" \n") + 1);
      if (!pid.empty()) holder = " (pid " + pid + ")";
    }
    ::close(fd);
    if (e == EWOULDBLOCK) return std::unexpected("another nsa-tuned" + holder + " holds " + path.string());
    return std::unexpected("cannot lock " + path.string() + ": " + errno_text(e));
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    // The pid is only for messages; the lock itself is held.
    NSA_DEBUG("could not write the pid into %s: %s", path.c_str(), errno_text(errno).c_str());
  }
  return InstanceLock(fd);
}

InstanceLock& InstanceLock::operator=(InstanceLock&& o) noexcept {
  if (this != &o) {
    if (m_fd >= 0) ::close(m_fd);
    m_fd = std::exchange(o.m_fd, -1);
  }
  return *this;
}

InstanceLock::~InstanceLock() {
  if (m_fd >= 0) ::close(m_fd);  // closing the last fd releases the flock
}

// Socket probing and credentials ---------------------------------------------------------------

SocketState probe_socket(const std::filesystem::path& path, std::string* detail) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return SocketState::absent;
    if (detail) *detail = "cannot look at it: " + errno_text(errno);
    return SocketState::foreign;
  }
  if (!S_ISSOCK(st.st_mode)) {
    if (detail) *detail = "it exists and is not a socket";
    return SocketState::foreign;
  }
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.fd < 0) {
    if (detail) *detail = "cannot create a socket to probe it: " + errno_text(errno);
    return SocketState::foreign;
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (detail && ::getsockopt(fd.fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid > 0)
      *detail = "pid " + std::to_string(cred.pid);
    return SocketState::live;
  }
  int e = errno;
  if (e == ECONNREFUSED) return SocketState::stale;
  if (e == EAGAIN) return SocketState::live;  // a listener whose backlog is full is alive
  if (detail) *detail = "cannot connect to it to see whether a daemon listens: " + errno_text(e);
  return SocketState::foreign;
}

Peer peer_of(int fd) {
  Peer p;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    p.pid = cred.pid;
    p.uid = cred.uid;
    p.gid = cred.gid;
  }
  std::vector<gid_t> groups(32);
  for (int attempt = 0; attempt < 4; ++attempt) {
    socklen_t bytes = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &bytes) == 0) {
      groups.resize(bytes / sizeof(gid_t));
      p.groups = std::move(groups);
      return p;
    }
    if (errno != ERANGE) break;
    groups.resize(std::max<std::size_t>(bytes / sizeof(gid_t), groups.size() * 2));
  }
  // Kernels before 4.13: the groups the user database gives the peer's uid.
  if (p.uid == static_cast<uid_t>(-1)) return p;
  char buf[4096];
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(p.uid, &pw, buf, sizeof buf, &found) == 0 && found) {
    int n = 64;
    std::vector<gid_t> g(static_cast<std::size_t>(n));
    if (::getgrouplist(pw.pw_name, p.gid, g.data(), &n) < 0) {
      g.resize(static_cast<std::size_t>(n));
      ::getgrouplist(pw.pw_name, p.gid, g.data(), &n);
    }
    g.resize(static_cast<std::size_t>(std::max(n, 0)));
    p.groups = std::move(g);
  }
  return p;
}

// Server ---------------------------------------------------------------------------------------

Server::Server(asio::io_context& io, const Config& config, State& state, Handler& handler, ServiceStats& stats)
    : m_io(io),
      m_config(config),
      m_state(state),
      m_handler(handler),
      m_stats(stats),
      m_acceptor(io),
      m_sweep_timer(io),
      m_maintenance_timer(io),
      m_grace_timer(io) {}

Server::~Server() = default;

std::expected<void, std::string> Server::listen() {
  const auto& path = m_config.socket;
  std::error_code fs_ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), fs_ec);
  if (fs_ec)
    return std::unexpected("cannot create the socket's directory " + path.parent_path().string() + ": " +
                           fs_ec.message() + "; choose another --socket or create it with the right owner");
  error_code ec;
  m_acceptor.open(stream(), ec);
  if (!ec) {
    // Bind under a umask that leaves rw for owner and group only, so there is no moment at
    // which the socket is open to everyone; chmod afterwards makes the mode exact.
    mode_t old = ::umask(0117);
    m_acceptor.bind(stream::endpoint(path.string()), ec);
    ::umask(old);
  }
  if (ec)
    return std::unexpected("cannot bind " + path.string() + ": " + ec.message() +
                           "; check the directory's permissions or choose another --socket");
  if (::chmod(path.c_str(), 0660) != 0)
    return std::unexpected("cannot set mode 0660 on " + path.string() + ": " + errno_text(errno));
  m_acceptor.listen(SOMAXCONN, ec);
  if (ec) return std::unexpected("cannot listen on " + path.string() + ": " + ec.message());
  m_listening = true;
  return {};
}

void Server::start() {
  asio::co_spawn(m_io, accept_loop(), asio::detached);
  asio::co_spawn(m_io, sweep_loop(), asio::detached);
  asio::co_spawn(m_io, maintenance_loop(), asio::detached);
}

void Server::refuse(stream::socket& socket) {
  const std::string frame = api::encode_frame(api::error_reply(
      nullptr, api::errc::refused,
      "nsa-tuned is at its limit of " + std::to_string(m_config.max_connections) +
          " connections; retry later, reuse one connection per process, or raise max_connections"));
  error_code ec;
  socket.non_blocking(true, ec);
  // A fresh socket's send buffer is empty, so one small write never blocks; if it fails the
  // client sees the connection close, which its fallback handles anyway.
  socket.write_some(asio::buffer(frame), ec);
  socket.shutdown(stream::socket::shutdown_both, ec);
  socket.close(ec);
}

asio::awaitable<void> Server::accept_loop() {
  asio::steady_timer backoff(m_io);
  while (!m_stopping) {
    error_code ec;
    stream::socket socket = co_await m_acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
    if (m_stopping || ec == asio::error::operation_aborted) co_return;
    if (ec) {
      // Out of file descriptors and the like: say so and pause rather than spin.
      NSA_WARN("accept failed: %s; retrying in 100 ms", ec.message().c_str());
      backoff.expires_after(std::chrono::milliseconds(100));
      co_await backoff.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    if (m_sessions.size() >= static_cast<std::size_t>(m_config.max_connections)) {
      ++m_stats.connections_refused;
      NSA_WARN("refused a connection: %zu connections open, the limit is %d", m_sessions.size(),
               m_config.max_connections);
      refuse(socket);
      continue;
    }
    Connection conn;
    conn.id = m_next_id++;
    conn.peer = peer_of(socket.native_handle());
    ++m_stats.connections_accepted;
    ++m_stats.connections_open;
    NSA_DEBUG("connection %llu from %s", static_cast<unsigned long long>(conn.id), conn.peer.describe().c_str());
    auto session = std::make_shared<Session>(std::move(socket), m_handler, *this, m_stats, std::move(conn));
    m_sessions.emplace(session->connection().id, session);
    session->start();
  }
}

asio::awaitable<void> Server::sweep_loop() {
  // One timer for every connection's deadlines instead of one per connection: the check is a
  // comparison per session, and the deadline is honoured to within one period.
  const auto timeout = m_config.frame_timeout;
  const auto period = std::clamp<std::chrono::milliseconds>(timeout / 10, std::chrono::milliseconds(10),
                                                            std::chrono::milliseconds(250));
  while (!m_stopping) {
    m_sweep_timer.expires_after(period);
    error_code ec;
    co_await m_sweep_timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (m_stopping) co_return;
    const auto now = Session::Clock::now();
    for (auto& [id, s] : m_sessions) {
      if (s->closed()) continue;
      if (s->partial_since() != Session::Clock::time_point::max() && now - s->partial_since() >= timeout) {
        s->time_out();
      } else if (s->write_since() != Session::Clock::time_point::max() && now - s->write_since() >= timeout) {
        NSA_INFO("connection %llu (%s) has not read its replies for %lld ms; closing it",
                 static_cast<unsigned long long>(id), s->connection().peer.describe().c_str(),
                 static_cast<long long>(timeout.count()));
        s->abort();
      }
    }
  }
}

void Server::maintain() {
  if (auto r = m_state.flush_demand(); !r) {
    NSA_ERROR("cannot record demand in the store (kept in memory, retrying): %s", r.error().message.c_str());
  } else if (*r) {
    NSA_DEBUG("recorded demand for %zu untuned points", *r);
  }
  try {
    m_state.refresh();
  } catch (const cache::StoreFailure& e) {
    NSA_ERROR("cannot read the store's epoch (serving the last snapshot): %s", e.what());
  }
}

asio::awaitable<void> Server::maintenance_loop() {
  while (!m_stopping) {
    m_maintenance_timer.expires_after(m_config.demand_flush_interval);
    error_code ec;
    co_await m_maintenance_timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (m_stopping) co_return;
    maintain();
  }
}

void Server::broadcast_epoch(std::int64_t epoch) {
  if (m_stats.subscribers == 0) return;
  const std::string event = Handler::epoch_event(epoch);
  for (auto& [id, s] : m_sessions)
    if (s->connection().subscribed) s->push(event);
}

void Server::stop(std::chrono::milliseconds grace) {
  if (m_stopping) {
    if (grace.count() == 0)
      for (auto& [id, s] : m_sessions) s->abort();
    return;
  }
  m_stopping = true;
  error_code ec;
  m_acceptor.close(ec);
  m_sweep_timer.cancel();
  m_maintenance_timer.cancel();
  NSA_INFO("stopping: %zu connections finishing", m_sessions.size());
  for (auto& [id, s] : m_sessions) s->stop();
  if (m_sessions.empty()) {
    finished_stopping();
    return;
  }
  m_grace_timer.expires_after(grace);
  m_grace_timer.async_wait([this](error_code ec) {
    if (ec) return;
    if (!m_sessions.empty())
      NSA_WARN("closing %zu connections that did not finish within the grace period", m_sessions.size());
    for (auto& [id, s] : m_sessions) s->abort();
  });
}

void Server::session_ended(Session& s) {
  const auto& c = s.connection();
  if (c.subscribed && m_stats.subscribers) --m_stats.subscribers;
  if (m_stats.connections_open) --m_stats.connections_open;
  NSA_DEBUG("connection %llu closed", static_cast<unsigned long long>(c.id));
  m_sessions.erase(c.id);  // the session's own coroutine still holds a reference
  if (m_stopping && m_sessions.empty()) {
    m_grace_timer.cancel();
    finished_stopping();
  }
}

void Server::finished_stopping() {
  if (auto f = std::exchange(m_on_stopped, nullptr)) f();
}

void Server::unlink_socket() {
  if (!m_listening) return;
  error_code ec;
  m_acceptor.close(ec);
  if (::unlink(m_config.socket.c_str()) != 0 && errno != ENOENT)
    NSA_WARN("cannot remove the socket %s: %s", m_config.socket.c_str(), errno_text(errno).c_str());
  m_listening = false;
}

}  // namespace nsa::service
