#pragma once
// One client connection to nsa-tuned, with every blocking step bounded by a deadline.
// Internal to libnsa_tune_client (not installed): the public surface is client.h.

#include <chrono>
#include <expected>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "nsa/api/protocol.hpp"

namespace nsa::api::client {

using Clock = std::chrono::steady_clock;

/// Why an exchange failed, as the fallback's reason needs it.
enum class Failure {
  no_daemon,     // connect failed: nothing listens at the path
  timeout,       // the deadline passed
  closed,        // the daemon closed the connection
  garbage,       // bytes that are not a protocol reply
  incompatible,  // the daemon speaks another protocol version
  io,            // another socket error
  cancelled,     // the cancel fd became readable (client shutting down)
};

struct ConnError {
  Failure kind;
  std::string message;  // "connect to /run/...: No such file or directory"
  bool known = false;   // answered from the background thread's knowledge, without trying
};

/// A connected Unix stream socket and the bytes of replies not yet taken. Move-only owner of its
/// file descriptor. Non-blocking; every wait is a ppoll that also watches `cancel_fd` (-1: none).
class Connection {
 public:
  Connection() = default;
  Connection(Connection&& o) noexcept;
  Connection& operator=(Connection&& o) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  /// Connects to `path`. A Unix socket connect either completes or fails at once, except when the
  /// listener's backlog is full, where it waits for the deadline.
  static std::expected<Connection, ConnError> connect(const std::string& path, Clock::time_point deadline,
                                                      int cancel_fd = -1);

  /// Writes all of `bytes` before the deadline.
  std::expected<void, ConnError> send(std::string_view bytes, Clock::time_point deadline, int cancel_fd = -1);

  /// Reads the next frame that is a reply (has "ok"), handing event frames to `on_event` (may be
  /// null: events are then dropped). The reply must be a JSON object; anything else is garbage.
  template <class OnEvent>
  std::expected<nlohmann::json, ConnError> read_reply(Clock::time_point deadline, int cancel_fd,
                                                      OnEvent&& on_event);

  /// Reads the next frame of any kind (reply or event).
  std::expected<nlohmann::json, ConnError> read_frame(Clock::time_point deadline, int cancel_fd = -1);

  /// Performs the hello handshake (optionally with `then` pipelined right behind it, whose reply
  /// the caller reads next). Returns the daemon's epoch. Incompatible when the daemon answers
  /// version_mismatch or a protocol other than kProtocolVersion.
  std::expected<std::int64_t, ConnError> hello(const std::string& client_name, Clock::time_point deadline,
                                               int cancel_fd = -1, std::string_view then = {});

  int fd() const { return m_fd; }
  void close();

 private:
  explicit Connection(int fd) : m_fd(fd) {}
  int m_fd = -1;
  FrameReader m_reader{kMaxReplyFrameBytes};
};

/// Microseconds left until `deadline` (0 when passed).
long long micros_left(Clock::time_point deadline);

template <class OnEvent>
std::expected<nlohmann::json, ConnError> Connection::read_reply(Clock::time_point deadline, int cancel_fd,
                                                                OnEvent&& on_event) {
  for (;;) {
    auto frame = read_frame(deadline, cancel_fd);
    if (!frame) return frame;
    if (frame->contains("event")) {
      on_event(*frame);
      continue;
    }
    if (!frame->contains("ok") || !(*frame)["ok"].is_boolean())
      return std::unexpected(ConnError{Failure::garbage, "a reply without a boolean 'ok'"});
    return frame;
  }
}

}  // namespace nsa::api::client
