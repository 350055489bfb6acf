#pragma once
// A stand-in daemon for the client tests: a real Unix socket, real threads, real bytes of the
// protocol (framed by FrameReader, parsed by parse_request/parse_problem), with switches for the
// ways a daemon can misbehave. It answers like a small daemon would:
//   arch sm_89                 -> sdpa, pinned
//   t_kv >= 8192               -> sparse, measured, variant ...sm90, speedup 1.5, run 42
//   otherwise                  -> sdpa, untuned
// and every reason names the problem's point key, so a test can check which problem an answer
// belongs to. Problems with batch == kRejectedBatch are rejected as bad_shape, as a stricter
// daemon might.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "../support/temp_dir.hpp"

namespace nsa::api::testing {

inline constexpr int kRejectedBatch = 999;

class TestPeer {
 public:
  enum class Mode {
    correct,            // speaks the protocol
    silent,             // accepts and reads, never writes
    version_mismatch,   // hello -> version_mismatch error with protocol 2, then closes
    protocol2_ok,       // hello -> ok but protocol 2 (a daemon that does not check)
    garbage,            // hello fine, dispatch -> a line that is not JSON
    wrong_count,        // hello fine, dispatch -> one answer too few
    long_variant,       // hello fine, answers carry a 300-byte variant key
  };
  struct Options {
    Mode mode = Mode::correct;
    std::int64_t epoch = 7;
    std::chrono::milliseconds dispatch_delay{0};  // before each dispatch reply
  };

  TestPeer(std::filesystem::path socket_path, Options options);
  ~TestPeer();
  TestPeer(const TestPeer&) = delete;
  TestPeer& operator=(const TestPeer&) = delete;

  /// Closes the listener and every connection (the client sees EOF) and joins all threads.
  void stop();

  /// Requests seen so far with this op ("dispatch", "hello", "subscribe", ...).
  int requests(const std::string& op) const;
  /// Problems seen in dispatch requests so far.
  int problems_seen() const { return m_problems_seen.load(); }
  /// Moves the epoch and pushes {"event":"epoch"} to every subscribed connection.
  void push_epoch(std::int64_t epoch);
  void set_dispatch_delay(std::chrono::milliseconds d) { m_delay_ms.store(d.count()); }

 private:
  void accept_loop();
  void serve(int fd);
  /// Writes a frame to `fd` (under the write lock, so events never split a reply).
  void write(int fd, const std::string& bytes);
  nlohmann::json handle(int fd, const nlohmann::json& request, bool& close_after);

  std::filesystem::path m_path;
  Options m_options;
  std::atomic<std::int64_t> m_epoch;
  std::atomic<long long> m_delay_ms;
  int m_listen_fd = -1;
  int m_stop_fd = -1;
  std::thread m_acceptor;
  mutable std::mutex m_mutex;  // guards the members below and every write
  std::vector<std::thread> m_workers;
  std::vector<int> m_fds;
  std::vector<int> m_subscribers;
  std::map<std::string, int> m_counts;
  std::atomic<int> m_problems_seen{0};
  bool m_stopped = false;
};

using nsa::test::TempDir;

}  // namespace nsa::api::testing
