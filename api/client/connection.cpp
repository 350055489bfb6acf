// Deadline-bounded socket I/O for the client library. Every wait is a ppoll (microsecond
// timeouts: a 2 ms budget cannot afford poll()'s millisecond rounding) on the socket and, when
// given, a cancel fd, so that closing the client interrupts a background handshake at once.

#include "connection.hpp"

#include <cerrno>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace nsa::api::client {

namespace {

using nlohmann::json;

std::string errno_text(int err) {
  char buf[128];
  // GNU strerror_r returns the message pointer (which may not be buf).
  return std::string(strerror_r(err, buf, sizeof buf));
}

enum class Ready { ready, timeout, cancelled, error };

Ready wait_for(int fd, short events, Clock::time_point deadline, int cancel_fd) {
  for (;;) {
    long long us = micros_left(deadline);
    if (us <= 0) return Ready::timeout;
    pollfd fds[2] = {{fd, events, 0}, {cancel_fd, POLLIN, 0}};
    timespec ts{static_cast<time_t>(us / 1'000'000), static_cast<long>((us % 1'000'000) * 1000)};
    int n = ::ppoll(fds, cancel_fd >= 0 ? 2 : 1, &ts, nullptr);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Ready::error;
    }
    if (n == 0) continue;  // re-check the deadline: ppoll may wake a little early
    if (cancel_fd >= 0 && (fds[1].revents & POLLIN)) return Ready::cancelled;
    if (fds[0].revents) return Ready::ready;  // readable, writable, hung up or in error
  }
}

ConnError waited_out(Ready r, const char* what) {
  if (r == Ready::cancelled) return {Failure::cancelled, "client is closing"};
  if (r == Ready::timeout) return {Failure::timeout, std::string("no ") + what + " within the budget"};
  return {Failure::io, std::string("poll failed while waiting for ") + what + ": " + errno_text(errno)};
}

}  // namespace

long long micros_left(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now()).count();
  return left > 0 ? left : 0;
}

Connection::Connection(Connection&& o) noexcept : m_fd(o.m_fd), m_reader(std::move(o.m_reader)) { o.m_fd = -1; }

Connection& Connection::operator=(Connection&& o) noexcept {
  if (this != &o) {
    close();
    m_fd = o.m_fd;
    m_reader = std::move(o.m_reader);
    o.m_fd = -1;
  }
  return *this;
}

Connection::~Connection() { close(); }

void Connection::close() {
  if (m_fd >= 0) ::close(m_fd);
  m_fd = -1;
  m_reader = FrameReader{kMaxReplyFrameBytes};
}

std::expected<Connection, ConnError> Connection::connect(const std::string& path, Clock::time_point deadline,
                                                         int cancel_fd) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path)
    return std::unexpected(ConnError{Failure::io, "socket path '" + path + "' is empty or longer than " +
                                                      std::to_string(sizeof addr.sun_path - 1) + " bytes"});
  std::memcpy(addr.sun_path, path.data(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::unexpected(ConnError{Failure::io, "socket(): " + errno_text(errno)});
  Connection c(fd);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return c;
  int err = errno;
  if (err == EAGAIN || err == EINPROGRESS) {
    // The listener's backlog is full: wait for room until the deadline.
    Ready r = wait_for(fd, POLLOUT, deadline, cancel_fd);
    if (r != Ready::ready) {
      ConnError e = waited_out(r, "room in the daemon's accept queue");
      if (e.kind == Failure::timeout) e.message = "the daemon at " + path + " accepts no connections (backlog full)";
      return std::unexpected(e);
    }
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) return c;
  }
  Failure kind = (err == ENOENT || err == ECONNREFUSED || err == ENOTSOCK) ? Failure::no_daemon : Failure::io;
  return std::unexpected(ConnError{kind, "connect to " + path + ": " + errno_text(err)});
}

std::expected<void, ConnError> Connection::send(std::string_view bytes, Clock::time_point deadline, int cancel_fd) {
  while (!bytes.empty()) {
    ssize_t n = ::send(m_fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      bytes.remove_prefix(std::size_t(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      Ready r = wait_for(m_fd, POLLOUT, deadline, cancel_fd);
      if (r != Ready::ready) return std::unexpected(waited_out(r, "room to send the request"));
      continue;
    }
    int err = errno;
    Failure kind = (err == EPIPE || err == ECONNRESET) ? Failure::closed : Failure::io;
    return std::unexpected(ConnError{kind, "send: " + errno_text(err)});
  }
  return {};
}

std::expected<json, ConnError> Connection::read_frame(Clock::time_point deadline, int cancel_fd) {
  char buf[16384];
  for (;;) {
    if (auto item = m_reader.next()) {
      if (item->kind == FrameReader::Kind::oversized)
        return std::unexpected(ConnError{Failure::garbage, "a reply frame larger than 16 MiB"});
      json j = json::parse(item->frame, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object()) {
        std::string start = item->frame.substr(0, 40);
        for (char& c : start)
          if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
        return std::unexpected(ConnError{Failure::garbage, "a reply that is not a JSON object: '" + start + "'"});
      }
      return j;
    }
    ssize_t n = ::recv(m_fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      m_reader.feed(std::string_view(buf, std::size_t(n)));
      continue;
    }
    if (n == 0) return std::unexpected(ConnError{Failure::closed, "the daemon closed the connection"});
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      Ready r = wait_for(m_fd, POLLIN, deadline, cancel_fd);
      if (r != Ready::ready) return std::unexpected(waited_out(r, "reply"));
      continue;
    }
    int err = errno;
    Failure kind = err == ECONNRESET ? Failure::closed : Failure::io;
    return std::unexpected(ConnError{kind, "recv: " + errno_text(err)});
  }
}

std::expected<std::int64_t, ConnError> Connection::hello(const std::string& client_name, Clock::time_point deadline,
                                                         int cancel_fd, std::string_view then) {
  std::string bytes = encode_frame(json{{"op", "hello"}, {"id", "hello"}, {"protocol", kProtocolVersion},
                                        {"client", client_name}});
  bytes.append(then);
  if (auto sent = send(bytes, deadline, cancel_fd); !sent) return std::unexpected(sent.error());
  auto reply = read_reply(deadline, cancel_fd, [](const json&) {});
  if (!reply) {
    if (reply.error().kind == Failure::timeout) reply.error().message = "no hello reply within the budget";
    return std::unexpected(reply.error());
  }
  const json& r = *reply;
  auto daemon_version = [&] {
    auto it = r.find("daemon");
    return it != r.end() && it->is_string() ? it->get<std::string>() : std::string("unknown version");
  };
  auto protocol = r.find("protocol");
  if (!r["ok"].get<bool>()) {
    const json* err = r.contains("error") && r["error"].is_object() ? &r["error"] : nullptr;
    std::string code = err && err->contains("code") && (*err)["code"].is_string() ? (*err)["code"].get<std::string>() : "";
    std::string message = err && err->contains("message") && (*err)["message"].is_string()
                              ? (*err)["message"].get<std::string>() : "";
    if (code == errc::version_mismatch) {
      std::string theirs = protocol != r.end() && protocol->is_number_integer()
                               ? std::to_string(protocol->get<long long>()) : std::string("?");
      return std::unexpected(ConnError{Failure::incompatible,
                                       "daemon " + daemon_version() + " speaks protocol " + theirs +
                                           ", this client speaks protocol " + std::to_string(kProtocolVersion)});
    }
    return std::unexpected(ConnError{Failure::garbage, "the daemon refused hello: " + code + " " + message});
  }
  if (protocol == r.end() || !protocol->is_number_integer())
    return std::unexpected(ConnError{Failure::garbage, "a hello reply without an integer 'protocol'"});
  if (protocol->get<long long>() != kProtocolVersion)
    return std::unexpected(ConnError{Failure::incompatible,
                                     "daemon " + daemon_version() + " speaks protocol " +
                                         std::to_string(protocol->get<long long>()) + ", this client speaks protocol " +
                                         std::to_string(kProtocolVersion)});
  auto epoch = r.find("epoch");
  if (epoch == r.end() || !epoch->is_number_integer())
    return std::unexpected(ConnError{Failure::garbage, "a hello reply without an integer 'epoch'"});
  return epoch->get<std::int64_t>();
}

}  // namespace nsa::api::client
