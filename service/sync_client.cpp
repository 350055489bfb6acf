#include "nsa/service/sync_client.hpp"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "nsa/api/protocol.hpp"

namespace nsa::service {

namespace {

/// Replies such as a report may be far larger than a request frame may be.
constexpr std::size_t kMaxReplyBytes = 256u << 20;

int remaining_ms(SyncClient::Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SyncClient::Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

ClientError err(ClientError::Kind k, std::string m) { return ClientError{k, std::move(m)}; }

}  // namespace

std::expected<SyncClient, ClientError> SyncClient::connect(const std::filesystem::path& socket,
                                                           std::chrono::milliseconds timeout, bool hello,
                                                           std::string client_name) {
  sockaddr_un addr{};
  if (socket.string().size() >= sizeof addr.sun_path)
    return std::unexpected(err(ClientError::Kind::unavailable, "socket path " + socket.string() + " is too long"));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::unexpected(err(ClientError::Kind::unavailable, std::string("socket(): ") + std::strerror(errno)));
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket.c_str(), sizeof addr.sun_path - 1);
  // A Unix-socket connect does not wait for the accept; it fails at once when nobody listens
  // (ECONNREFUSED, ENOENT) and blocks only while the listen backlog is full.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    if (e == EAGAIN || e == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
      int so_error = 0;
      socklen_t len = sizeof so_error;
      if (rc == 1) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
      if (rc != 1 || so_error != 0) {
        ::close(fd);
        return std::unexpected(err(ClientError::Kind::unavailable,
                                   "cannot connect to " + socket.string() + ": " +
                                       (rc == 1 ? std::strerror(so_error) : "the daemon's backlog is full")));
      }
    } else {
      ::close(fd);
      return std::unexpected(err(ClientError::Kind::unavailable,
                                 "cannot connect to " + socket.string() + ": " + std::strerror(e)));
    }
  }
  SyncClient c(fd, timeout);
  if (hello) {
    auto r = c.request(nlohmann::json{{"op", "hello"}, {"protocol", api::kProtocolVersion}, {"client", client_name}});
    if (!r) return std::unexpected(r.error());
    if (!r->value("ok", false)) {
      std::string m = r->contains("error") ? (*r)["error"].value("message", r->dump()) : r->dump();
      return std::unexpected(err(ClientError::Kind::protocol, "the daemon refused hello: " + m));
    }
    c.m_hello = std::move(*r);
  }
  return c;
}

SyncClient::SyncClient(SyncClient&& o) noexcept
    : m_fd(std::exchange(o.m_fd, -1)),
      m_timeout(o.m_timeout),
      m_buffer(std::move(o.m_buffer)),
      m_next_id(o.m_next_id),
      m_hello(std::move(o.m_hello)) {}

SyncClient& SyncClient::operator=(SyncClient&& o) noexcept {
  if (this != &o) {
    if (m_fd >= 0) ::close(m_fd);
    m_fd = std::exchange(o.m_fd, -1);
    m_timeout = o.m_timeout;
    m_buffer = std::move(o.m_buffer);
    m_next_id = o.m_next_id;
    m_hello = std::move(o.m_hello);
  }
  return *this;
}

SyncClient::~SyncClient() {
  if (m_fd >= 0) ::close(m_fd);
}

std::expected<void, ClientError> SyncClient::write_all(std::string_view bytes, Clock::time_point deadline) {
  while (!bytes.empty()) {
    ssize_t n = ::send(m_fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n > 0) {
      bytes.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{m_fd, POLLOUT, 0};
      int rc = ::poll(&p, 1, remaining_ms(deadline));
      if (rc == 0) return std::unexpected(err(ClientError::Kind::timeout, "timed out writing to the daemon"));
      continue;
    }
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
      return std::unexpected(err(ClientError::Kind::closed, "the daemon closed the connection"));
    return std::unexpected(err(ClientError::Kind::closed, std::string("write failed: ") + std::strerror(errno)));
  }
  return {};
}

std::expected<void, ClientError> SyncClient::send_raw(std::string_view bytes) {
  return write_all(bytes, Clock::now() + m_timeout);
}

std::expected<std::string, ClientError> SyncClient::read_frame() {
  const auto deadline = Clock::now() + m_timeout;
  std::size_t scanned = 0;
  for (;;) {
    auto nl = m_buffer.find('\n', scanned);
    if (nl != std::string::npos) {
      std::string frame = m_buffer.substr(0, nl);
      m_buffer.erase(0, nl + 1);
      return frame;
    }
    scanned = m_buffer.size();
    if (m_buffer.size() > kMaxReplyBytes)
      return std::unexpected(err(ClientError::Kind::protocol, "a reply frame exceeds 256 MiB"));
    pollfd p{m_fd, POLLIN, 0};
    int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc == 0)
      return std::unexpected(err(ClientError::Kind::timeout, "no reply from the daemon within " +
                                                                 std::to_string(m_timeout.count()) + " ms"));
    char buf[65536];
    ssize_t n = ::recv(m_fd, buf, sizeof buf, 0);
    if (n == 0) return std::unexpected(err(ClientError::Kind::closed, "the daemon closed the connection"));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return std::unexpected(err(ClientError::Kind::closed, std::string("read failed: ") + std::strerror(errno)));
    }
    m_buffer.append(buf, static_cast<std::size_t>(n));
  }
}

std::expected<nlohmann::json, ClientError> SyncClient::read_json() {
  auto f = read_frame();
  if (!f) return std::unexpected(f.error());
  nlohmann::json j = nlohmann::json::parse(*f, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return std::unexpected(err(ClientError::Kind::protocol, "the daemon sent a frame that is not a JSON object: " +
                                                                f->substr(0, 200)));
  return j;
}

std::expected<nlohmann::json, ClientError> SyncClient::request(nlohmann::json request) {
  if (!request.contains("id")) request["id"] = m_next_id++;
  const nlohmann::json id = request["id"];
  if (auto w = write_all(api::encode_frame(request), Clock::now() + m_timeout); !w) return std::unexpected(w.error());
  for (;;) {
    auto j = read_json();
    if (!j) return j;
    if (j->contains("event")) continue;  // a pushed event, not our reply
    if ((*j)["id"] != id && !(*j)["id"].is_null())
      return std::unexpected(err(ClientError::Kind::protocol, "reply id " + (*j)["id"].dump() +
                                                                  " does not match request id " + id.dump()));
    return j;
  }
}

bool SyncClient::closed_by_peer(std::chrono::milliseconds wait) {
  const auto deadline = Clock::now() + wait;
  for (;;) {
    pollfd p{m_fd, POLLIN, 0};
    int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc <= 0) return false;
    char buf[4096];
    ssize_t n = ::recv(m_fd, buf, sizeof buf, 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
    m_buffer.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace nsa::service
