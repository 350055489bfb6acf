#include "nsa/service/session.hpp"

#include <array>

#include "nsa/service/log.hpp"

namespace nsa::service {

namespace {
using boost::system::error_code;
}

Session::Session(Socket socket, Handler& handler, SessionHost& host, ServiceStats& stats, Connection conn)
    : m_socket(std::move(socket)),
      m_handler(handler),
      m_host(host),
      m_stats(stats),
      m_conn(std::move(conn)),
      m_wake(m_socket.get_executor()),
      m_drained(m_socket.get_executor()) {}

void Session::start() {
  auto self = shared_from_this();
  error_code ec;
  m_socket.non_blocking(true, ec);  // send_or_wake() must never block the daemon's thread
  asio::co_spawn(m_socket.get_executor(), [self]() { return self->read_loop(); }, asio::detached);
  asio::co_spawn(m_socket.get_executor(), [self]() { return self->write_loop(); }, asio::detached);
}

void Session::wake_writer() { m_wake.cancel(); }

void Session::send_or_wake() {
  // The common case is one small reply and an idle writer: write it from here, without the hop
  // to the writer coroutine. What the socket does not take at once is left to the writer.
  if (m_writing == 0 && !m_outbox.empty() && !m_closed) {
    error_code ec;
    std::size_t n = m_socket.write_some(asio::buffer(m_outbox), ec);
    if (!ec) m_outbox.erase(0, n);
  }
  if (!m_outbox.empty()) wake_writer();
}

void Session::push(std::string frame) {
  if (m_closed || m_reader_done) return;
  // Events are small and rare (one per epoch change); a subscriber that lets them pile up past
  // the high water is not reading at all and is dropped rather than buffered without bound.
  if (m_outbox.size() > kOutboxHighWater) {
    NSA_WARN("connection %llu (%s) does not read its events; closing it",
             static_cast<unsigned long long>(m_conn.id), m_conn.peer.describe().c_str());
    abort();
    return;
  }
  m_outbox += frame;
  wake_writer();
}

void Session::stop() {
  if (m_stopping || m_closed) return;
  m_stopping = true;
  error_code ignored;
  m_socket.shutdown(Socket::shutdown_receive, ignored);  // the pending read completes with EOF
  m_drained.cancel();
}

void Session::time_out() {
  if (m_stopping || m_closed) return;
  m_timed_out = true;
  m_partial_since = Clock::time_point::max();
  stop();
}

void Session::abort() { close_socket(); }

void Session::close_socket() {
  if (m_closed) return;
  m_closed = true;
  error_code ignored;
  m_socket.shutdown(Socket::shutdown_both, ignored);
  m_socket.close(ignored);
  m_wake.cancel();
  m_drained.cancel();
}

asio::awaitable<void> Session::read_loop() {
  auto self = shared_from_this();
  std::array<char, 16 * 1024> buf;
  for (;;) {
    error_code ec;
    std::size_t n = co_await m_socket.async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
    if (ec || m_closed) break;  // EOF (the peer left, or stop()/time_out()), or the socket closed
    m_reader.feed(std::string_view(buf.data(), n));
    std::size_t answered = 0;
    while (auto item = m_reader.next()) {
      if (item->kind == api::FrameReader::Kind::oversized) {
        m_handler.oversized(m_conn, m_outbox);
      } else {
        m_handler.handle(item->frame, m_conn, m_outbox);
      }
      if (m_conn.close_after_reply) {
        // The protocol ends this connection (version_mismatch): frames after it are not read.
        m_stopping = true;
        break;
      }
      if (++answered % kFramesPerTurn == 0) {
        wake_writer();
        co_await asio::post(m_socket.get_executor(), asio::use_awaitable);  // let other clients in
        if (m_closed) co_return;
      }
    }
    if (answered) send_or_wake();
    // A frame's clock starts with its first byte: restart it whenever a frame completed in this
    // read (the bytes held back now begin a new one).
    if (m_reader.pending() == 0) {
      m_partial_since = Clock::time_point::max();
    } else if (answered || m_partial_since == Clock::time_point::max()) {
      m_partial_since = Clock::now();
    }
    while (!m_closed && !m_stopping && m_outbox.size() + m_writing > kOutboxHighWater) {
      m_drained.expires_at(Clock::time_point::max());
      co_await m_drained.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    if (m_closed || m_stopping) break;
  }
  m_partial_since = Clock::time_point::max();
  if (m_timed_out && !m_closed) {
    ++m_stats.timeouts;
    NSA_INFO("connection %llu (%s) left a frame incomplete; sent timeout and closing",
             static_cast<unsigned long long>(m_conn.id), m_conn.peer.describe().c_str());
    m_outbox += m_handler.timeout_reply();
  }
  m_reader_done = true;
  wake_writer();
}

asio::awaitable<void> Session::write_loop() {
  auto self = shared_from_this();
  std::string writing;
  while (!m_closed) {
    if (m_outbox.empty()) {
      if (m_reader_done) break;
      error_code ec;
      m_wake.expires_at(Clock::time_point::max());
      co_await m_wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      continue;
    }
    writing.clear();
    writing.swap(m_outbox);
    m_writing = writing.size();
    m_write_since = Clock::now();
    error_code ec;
    co_await asio::async_write(m_socket, asio::buffer(writing), asio::redirect_error(asio::use_awaitable, ec));
    m_write_since = Clock::time_point::max();
    m_writing = 0;
    if (ec) {
      if (ec != asio::error::operation_aborted && ec != asio::error::broken_pipe &&
          ec != asio::error::connection_reset && ec != asio::error::bad_descriptor)
        NSA_DEBUG("connection %llu: write failed: %s", static_cast<unsigned long long>(m_conn.id),
                  ec.message().c_str());
      break;
    }
    m_drained.cancel();
  }
  close_socket();
  // The reader may still be parked in a read that close() has completed; it sees m_closed and
  // ends. Report the end once, after both loops can no longer touch the socket's data.
  if (!m_ended) {
    m_ended = true;
    m_host.session_ended(*this);
  }
}

}  // namespace nsa::service
