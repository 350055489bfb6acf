#pragma once
// A small blocking client of the protocol for nsa-tunectl, the end-to-end tests and the
// benchmark: one connection, one request at a time, every wait bounded by a deadline.
// (Applications use the C client library or the Python client, which add memoization and the
// daemon_unavailable fallback; this one reports every failure instead.)

#include <chrono>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace nsa::service {

struct ClientError {
  enum class Kind {
    unavailable,  // nothing accepts on the socket (no daemon, wrong path, no permission)
    timeout,      // no complete reply within the deadline
    closed,       // the daemon closed the connection
    protocol,     // a reply that is not a JSON object frame
  };
  Kind kind = Kind::unavailable;
  std::string message;
};

class SyncClient {
 public:
  using Clock = std::chrono::steady_clock;

  /// Connects; with `hello`, also exchanges the hello (an error reply to it, e.g.
  /// version_mismatch, is returned as protocol error with the daemon's message).
  static std::expected<SyncClient, ClientError> connect(const std::filesystem::path& socket,
                                                        std::chrono::milliseconds timeout,
                                                        bool hello = true,
                                                        std::string client_name = "nsa-service-sync-client");
  SyncClient(SyncClient&&) noexcept;
  SyncClient& operator=(SyncClient&&) noexcept;
  SyncClient(const SyncClient&) = delete;
  SyncClient& operator=(const SyncClient&) = delete;
  ~SyncClient();

  /// Sends `request` (an "id" is added when absent) and returns the reply with the same id,
  /// skipping pushed events. Error replies ({"ok":false,...}) are returned as values.
  std::expected<nlohmann::json, ClientError> request(nlohmann::json request);
  /// Writes raw bytes (tests use it to send malformed frames).
  std::expected<void, ClientError> send_raw(std::string_view bytes);
  /// The next frame the daemon sends, as text without its '\n'.
  std::expected<std::string, ClientError> read_frame();
  /// The next frame parsed as JSON.
  std::expected<nlohmann::json, ClientError> read_json();
  /// True when the daemon has closed the connection (EOF within `wait`).
  bool closed_by_peer(std::chrono::milliseconds wait);

  void set_timeout(std::chrono::milliseconds t) { m_timeout = t; }
  std::chrono::milliseconds timeout() const { return m_timeout; }
  int fd() const { return m_fd; }
  /// The hello reply (empty when connected without hello).
  const nlohmann::json& hello_reply() const { return m_hello; }

 private:
  explicit SyncClient(int fd, std::chrono::milliseconds timeout) : m_fd(fd), m_timeout(timeout) {}
  std::expected<void, ClientError> write_all(std::string_view, Clock::time_point deadline);

  int m_fd = -1;
  std::chrono::milliseconds m_timeout;
  std::string m_buffer;  // bytes read past the last frame
  std::int64_t m_next_id = 1;
  nlohmann::json m_hello;
};

}  // namespace nsa::service
