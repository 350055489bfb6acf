// Frames, requests and replies of the wire protocol (docs/protocol.md is the specification).
//
// FrameReader is the piece both ends rely on to survive hostile input. Its contract, on a small
// example with max_frame = 8:
//
//   feed("{\"a\":1}\n{\"b\"")   -> next() = frame {"a":1}; next() = nullopt; pending() = 4
//   feed(":2}\n")               -> next() = frame {"b":2}; pending() = 0
//   feed("0123456789")          -> next() = oversized (reported as soon as the limit is passed,
//                                  not when the line ends, so a peer cannot make us buffer more)
//   feed("abc\n{}\n")           -> the rest of the oversized line is dropped; next() = frame {}
//
// Every byte is looked at once: feed() scans only the new bytes for '\n' and appends the tail to
// the held-back start of the current frame, so a frame dribbled in one byte at a time costs
// linear, not quadratic, time.

#include "nsa/api/protocol.hpp"

#include <array>
#include <cstring>
#include <utility>

namespace nsa::api {

namespace {

using nlohmann::json;

constexpr std::array<std::pair<Op, std::string_view>, 10> kOps = {{
    {Op::hello, "hello"},
    {Op::ping, "ping"},
    {Op::dispatch, "dispatch"},
    {Op::status, "status"},
    {Op::report, "report"},
    {Op::pins, "pins"},
    {Op::retune, "retune"},
    {Op::pin, "pin"},
    {Op::unpin, "unpin"},
    {Op::subscribe, "subscribe"},
}};

std::string clip(std::string_view s, std::size_t max = 40) {
  if (s.size() <= max) return std::string(s);
  return std::string(s.substr(0, max - 3)) + "...";
}

}  // namespace

std::optional<Op> parse_op(std::string_view s) {
  for (auto [op, name] : kOps)
    if (name == s) return op;
  return std::nullopt;
}

std::string_view to_string(Op op) {
  for (auto [o, name] : kOps)
    if (o == op) return name;
  return "unknown";
}

bool is_admin(Op op) { return op == Op::retune || op == Op::pin || op == Op::unpin; }

std::optional<Error> parse_request(std::string_view frame, Request& out) {
  out.id = nullptr;
  // The parser rejects invalid UTF-8 inside strings, so a frame that parses is valid UTF-8.
  json j = json::parse(frame, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return Error{std::string(errc::not_json),
                 "frame is not valid JSON (or not UTF-8); send one JSON object per line"};
  if (!j.is_object())
    return Error{std::string(errc::bad_request),
                 "a request must be a JSON object like {\"op\":\"ping\",\"id\":1}"};
  if (auto it = j.find("id"); it != j.end()) {
    if (!(it->is_number() || it->is_string() || it->is_null()))
      return Error{std::string(errc::bad_request), "field 'id' must be a number, a string or null"};
    out.id = *it;
  }
  auto it = j.find("op");
  if (it == j.end())
    return Error{std::string(errc::missing_field), "request has no field 'op'; e.g. {\"op\":\"ping\"}"};
  if (!it->is_string())
    return Error{std::string(errc::bad_type), "field 'op' must be a string"};
  auto op = parse_op(it->get_ref<const std::string&>());
  if (!op)
    return Error{std::string(errc::unknown_op),
                 "unknown op '" + clip(it->get_ref<const std::string&>()) +
                     "'; ops are hello, ping, dispatch, status, report, pins, retune, pin, unpin, "
                     "subscribe"};
  out.op = *op;
  out.body = std::move(j);
  return std::nullopt;
}

std::string encode_frame(const json& j) {
  // Compact JSON escapes control characters inside strings, so the only '\n' is the terminator.
  // Invalid UTF-8 in a string (a message quoting a client's bytes) is replaced, never thrown on.
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  s.push_back('\n');
  return s;
}

json ok_reply(const json& id) { return json{{"ok", true}, {"id", id}}; }

json error_reply(const json& id, std::string_view code, std::string message) {
  return json{{"ok", false},
              {"id", id},
              {"error", json{{"code", std::string(code)}, {"message", std::move(message)}}}};
}

json error_reply(const json& id, const Error& e) { return error_reply(id, e.code, e.message); }

void FrameReader::feed(std::string_view bytes) {
  while (!bytes.empty()) {
    const char* nl = static_cast<const char*>(std::memchr(bytes.data(), '\n', bytes.size()));
    if (m_discarding) {
      if (!nl) return;  // the whole chunk belongs to the oversized frame
      bytes.remove_prefix(std::size_t(nl - bytes.data()) + 1);
      m_discarding = false;
      continue;
    }
    if (!nl) {
      // One byte of slack for a '\r' that may precede the '\n'.
      if (m_buffer.size() + bytes.size() > m_max + 1) {
        m_ready.push_back(Item{Kind::oversized, {}});
        m_buffer.clear();
        m_discarding = true;
        return;
      }
      m_buffer.append(bytes);
      return;
    }
    std::string_view tail = bytes.substr(0, std::size_t(nl - bytes.data()));
    bytes.remove_prefix(tail.size() + 1);
    std::size_t size = m_buffer.size() + tail.size();
    bool cr = size > 0 && (tail.empty() ? m_buffer.back() : tail.back()) == '\r';
    if (cr) --size;
    if (size > m_max) {
      m_ready.push_back(Item{Kind::oversized, {}});
    } else if (size > 0) {
      std::string frame = std::move(m_buffer);
      frame.append(tail);
      if (cr) frame.pop_back();
      m_ready.push_back(Item{Kind::frame, std::move(frame)});
    }
    m_buffer.clear();
  }
}

std::optional<FrameReader::Item> FrameReader::next() {
  if (m_ready_from == m_ready.size()) {
    m_ready.clear();
    m_ready_from = 0;
    return std::nullopt;
  }
  Item item = std::move(m_ready[m_ready_from++]);
  if (m_ready_from == m_ready.size()) {
    m_ready.clear();
    m_ready_from = 0;
  }
  return item;
}

}  // namespace nsa::api
