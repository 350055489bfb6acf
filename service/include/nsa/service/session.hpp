#pragma once
// One client connection: a reader coroutine, a writer coroutine and an outbox between them.
//
//   socket --read_some--> FrameReader --frames--> Handler --reply frames--> outbox --write--> socket
//                                                   epoch events (push) --/
//
// The reader answers every complete frame it has, appending replies to the outbox in request
// order, and wakes the writer; the writer sends whatever the outbox holds in one write. Epoch
// events for subscribers go through the same outbox, so nothing ever interleaves inside a frame.
//
// Fairness and bounds: the reader yields to other connections every kFramesPerTurn frames, and
// stops reading while more than kOutboxHighWater bytes wait to be written, so a client that
// floods requests without reading replies holds at most that much memory and blocks only itself.
// Deadlines are checked by the server's sweep (Server::sweep): a frame started but not finished
// within the frame timeout ends the session with a `timeout` error; a write that makes no
// progress for as long ends it without one (the peer is not reading).
//
// Shutdown: stop() shuts down the receive side (the pending read completes with EOF), the
// reader finishes the frames it already has, the writer drains the outbox, then the socket
// closes. abort() closes at once.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "nsa/api/protocol.hpp"
#include "nsa/service/asio.hpp"
#include "nsa/service/handler.hpp"

namespace nsa::service {

class Session;

/// What a session needs from the server that owns it.
class SessionHost {
 public:
  virtual ~SessionHost() = default;
  virtual void session_ended(Session&) = 0;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  using Socket = asio::local::stream_protocol::socket;
  using Clock = std::chrono::steady_clock;
  static constexpr std::size_t kFramesPerTurn = 32;
  static constexpr std::size_t kOutboxHighWater = 1 << 20;

  Session(Socket socket, Handler& handler, SessionHost& host, ServiceStats& stats, Connection conn);
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  /// Spawns the reader and the writer on the socket's executor.
  void start();
  /// Queues a server-initiated frame (an epoch event).
  void push(std::string frame);
  /// Graceful end: answer what was received, flush, close.
  void stop();
  /// Immediate end.
  void abort();
  /// Ends the session because a frame stayed incomplete too long: a `timeout` error, then close.
  void time_out();

  /// Since when a started frame has been waiting for its end (Clock::time_point::max() if none).
  Clock::time_point partial_since() const { return m_partial_since; }
  /// Since when the current write has been in flight (max() if none).
  Clock::time_point write_since() const { return m_write_since; }
  const Connection& connection() const { return m_conn; }
  bool closed() const { return m_closed; }

 private:
  asio::awaitable<void> read_loop();
  asio::awaitable<void> write_loop();
  void wake_writer();
  void send_or_wake();
  void close_socket();

  Socket m_socket;
  Handler& m_handler;
  SessionHost& m_host;
  ServiceStats& m_stats;
  Connection m_conn;
  api::FrameReader m_reader;
  std::string m_outbox;        // reply frames not yet handed to the socket
  std::size_t m_writing = 0;   // bytes of the write in flight
  asio::steady_timer m_wake;     // writer sleeps on it while the outbox is empty
  asio::steady_timer m_drained;  // reader sleeps on it while the outbox is over the high water
  Clock::time_point m_partial_since = Clock::time_point::max();
  Clock::time_point m_write_since = Clock::time_point::max();
  bool m_stopping = false;     // stop() or time_out(): read no more
  bool m_timed_out = false;
  bool m_reader_done = false;
  bool m_closed = false;
  bool m_ended = false;        // session_ended reported
};

}  // namespace nsa::service
