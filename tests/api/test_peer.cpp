// The stand-in daemon of test_peer.hpp.

#include "test_peer.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <poll.h>
#include <stdexcept>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "nsa/api/answer.hpp"
#include "nsa/api/problem.hpp"
#include "nsa/api/protocol.hpp"

namespace nsa::api::testing {

using nlohmann::json;

TestPeer::TestPeer(std::filesystem::path socket_path, Options options)
    : m_path(std::move(socket_path)), m_options(options), m_epoch(options.epoch),
      m_delay_ms(options.dispatch_delay.count()) {
  m_stop_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  m_listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (m_stop_fd < 0 || m_listen_fd < 0) throw std::runtime_error("socket/eventfd failed");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string p = m_path.string();
  if (p.size() >= sizeof addr.sun_path) throw std::runtime_error("socket path too long: " + p);
  std::memcpy(addr.sun_path, p.c_str(), p.size() + 1);
  ::unlink(p.c_str());
  if (::bind(m_listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(m_listen_fd, 64) != 0)
    throw std::runtime_error("bind/listen " + p + ": " + std::strerror(errno));
  m_acceptor = std::thread([this] { accept_loop(); });
}

TestPeer::~TestPeer() { stop(); }

void TestPeer::stop() {
  {
    std::lock_guard lock(m_mutex);
    if (m_stopped) return;
    m_stopped = true;
  }
  std::uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(m_stop_fd, &one, sizeof one);
  m_acceptor.join();
  ::close(m_listen_fd);
  ::unlink(m_path.c_str());
  std::vector<std::thread> workers;
  {
    std::lock_guard lock(m_mutex);
    workers.swap(m_workers);
  }
  for (auto& t : workers) t.join();
  ::close(m_stop_fd);
}

int TestPeer::requests(const std::string& op) const {
  std::lock_guard lock(m_mutex);
  auto it = m_counts.find(op);
  return it == m_counts.end() ? 0 : it->second;
}

void TestPeer::push_epoch(std::int64_t epoch) {
  m_epoch.store(epoch);
  std::string frame = encode_frame(json{{"event", "epoch"}, {"epoch", epoch}});
  std::lock_guard lock(m_mutex);
  for (int fd : m_subscribers) ::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL);
}

void TestPeer::write(int fd, const std::string& bytes) {
  std::lock_guard lock(m_mutex);
  ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
}

void TestPeer::accept_loop() {
  for (;;) {
    pollfd fds[2] = {{m_listen_fd, POLLIN, 0}, {m_stop_fd, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (fds[1].revents) return;
    if (!(fds[0].revents & POLLIN)) continue;
    int fd = ::accept4(m_listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    std::lock_guard lock(m_mutex);
    m_fds.push_back(fd);
    m_workers.emplace_back([this, fd] { serve(fd); });
  }
}

void TestPeer::serve(int fd) {
  FrameReader reader;
  char buf[65536];
  bool open = true;
  while (open) {
    pollfd fds[2] = {{fd, POLLIN, 0}, {m_stop_fd, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) break;
    if (fds[1].revents) break;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    if (m_options.mode == Mode::silent) continue;
    reader.feed(std::string_view(buf, std::size_t(n)));
    while (auto item = reader.next()) {
      json reply;
      bool close_after = false;
      if (item->kind == FrameReader::Kind::oversized) {
        reply = error_reply(nullptr, errc::frame_too_large, "frame too large");
      } else {
        Request req;
        if (auto e = parse_request(item->frame, req)) reply = error_reply(req.id, *e);
        else reply = handle(fd, req.body, close_after);
      }
      if (reply.is_string()) write(fd, reply.get<std::string>());  // raw bytes (garbage mode)
      else write(fd, encode_frame(reply));
      if (close_after) {
        open = false;
        break;
      }
    }
  }
  std::lock_guard lock(m_mutex);
  std::erase(m_subscribers, fd);
  std::erase(m_fds, fd);
  ::close(fd);
}

json TestPeer::handle(int fd, const json& req, bool& close_after) {
  std::string op = req["op"].get<std::string>();
  json id = req.contains("id") ? req["id"] : json(nullptr);
  {
    std::lock_guard lock(m_mutex);
    ++m_counts[op];
  }
  if (op == "hello") {
    if (m_options.mode == Mode::version_mismatch) {
      close_after = true;
      json r = error_reply(id, errc::version_mismatch, "this daemon speaks protocol 2; the client asked for 1");
      r["protocol"] = 2;
      r["daemon"] = "9.0.0";
      return r;
    }
    json r = ok_reply(id);
    r["protocol"] = m_options.mode == Mode::protocol2_ok ? 2 : kProtocolVersion;
    r["daemon"] = "0.1.0-testpeer";
    r["epoch"] = m_epoch.load();
    return r;
  }
  if (op == "subscribe") {
    std::lock_guard lock(m_mutex);
    m_subscribers.push_back(fd);
    json r = ok_reply(id);
    r["epoch"] = m_epoch.load();
    return r;
  }
  if (op == "ping") {
    json r = ok_reply(id);
    r["epoch"] = m_epoch.load();
    return r;
  }
  if (op != "dispatch") return error_reply(id, errc::unknown_op, "the test peer only knows hello, ping, subscribe, dispatch");

  if (long long d = m_delay_ms.load(); d > 0) {
    pollfd stop{m_stop_fd, POLLIN, 0};
    ::poll(&stop, 1, int(d));
  }
  if (m_options.mode == Mode::garbage) return json("this is not json at all\n");
  const json& problems = req.at("problems");
  m_problems_seen += int(problems.size());
  json answers = json::array();
  for (std::size_t i = 0; i < problems.size(); ++i) {
    Problem p;
    if (auto e = parse_problem(problems[i], p))
      return error_reply(id, e->code, "problems[" + std::to_string(i) + "]: " + e->message);
    if (p.batch == kRejectedBatch)
      return error_reply(id, errc::bad_shape, "problems[" + std::to_string(i) + "]: batch=999 is not allowed here");
    Answer a;
    std::string point = point_of(p).key();
    if (p.arch == "sm_89") {
      a = Answer::fallback(Provenance::pinned, "sm_89 is pinned to sdpa at " + point);
      a.arch = "sm_89";
    } else if (p.t_kv >= 8192) {
      a.backend = Backend::sparse;
      a.provenance = Provenance::measured;
      a.variant = "sel_fwd.query_outer." + family_of(p).key() + ".warps4_stages2.sm90";
      if (m_options.mode == Mode::long_variant) a.variant = std::string(300, 'v');
      a.launch = json{{"launches", json::array({json{{"entry", "sel_fwd_query_outer"},
                                                     {"grid", {p.batch, p.h_kv, 1}},
                                                     {"block", {128, 1, 1}},
                                                     {"shared_bytes", 49152}}})},
                      {"workspace_bytes", 0}};
      a.speedup = 1.5;
      a.run_id = 42;
      a.arch = "sm_90";
      a.reason = "measured at " + point;
    } else {
      a = Answer::fallback(Provenance::untuned, "untuned at " + point);
      a.arch = "sm_90";
    }
    answers.push_back(to_json(a));
  }
  if (m_options.mode == Mode::wrong_count && !answers.empty()) answers.erase(answers.size() - 1);
  json r = ok_reply(id);
  r["epoch"] = m_epoch.load();
  r["answers"] = std::move(answers);
  return r;
}

}  // namespace nsa::api::testing
