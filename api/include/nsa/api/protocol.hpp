#pragma once
// The wire protocol between nsa-tuned and its clients: newline-delimited JSON over a Unix
// stream socket. docs/protocol.md is the specification; this header is its vocabulary, shared
// by the daemon, the C++ client and the tests (the Python client mirrors it).

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "nsa/api/problem.hpp"

namespace nsa::api {

inline constexpr int kProtocolVersion = 1;
/// A frame is one JSON object followed by '\n'. Longer frames are refused with frame_too_large.
inline constexpr std::size_t kMaxFrameBytes = 64 * 1024;
/// At most this many problems in one dispatch request.
inline constexpr std::size_t kMaxProblemsPerRequest = 256;

/// Stable error codes of error replies: {"ok":false,"id":...,"error":{"code":..,"message":..}}.
namespace errc {
inline constexpr std::string_view not_json = "not_json";              // frame is not JSON
inline constexpr std::string_view bad_request = "bad_request";        // JSON, but not a request object
inline constexpr std::string_view unknown_op = "unknown_op";
inline constexpr std::string_view missing_field = "missing_field";
inline constexpr std::string_view bad_type = "bad_type";
inline constexpr std::string_view bad_shape = "bad_shape";            // impossible problem shape
inline constexpr std::string_view frame_too_large = "frame_too_large";
inline constexpr std::string_view version_mismatch = "version_mismatch";
inline constexpr std::string_view hello_required = "hello_required";  // first frame must be hello
inline constexpr std::string_view forbidden = "forbidden";            // admin op from a peer not allowed
inline constexpr std::string_view not_found = "not_found";
inline constexpr std::string_view refused = "refused";                // e.g. unpin of the seeded pin
inline constexpr std::string_view tuning_disabled = "tuning_disabled";
inline constexpr std::string_view timeout = "timeout";                // half a frame, then silence
inline constexpr std::string_view internal = "internal";
}  // namespace errc

/// The operations a request's "op" may name.
enum class Op { hello, ping, dispatch, status, report, pins, retune, pin, unpin, subscribe };
std::optional<Op> parse_op(std::string_view);
std::string_view to_string(Op);
/// Admin operations need the daemon's uid or its configured admin group.
bool is_admin(Op);

/// Serialises one frame: compact JSON and the terminating '\n'.
std::string encode_frame(const nlohmann::json&);

nlohmann::json ok_reply(const nlohmann::json& id);
nlohmann::json error_reply(const nlohmann::json& id, std::string_view code, std::string message);
nlohmann::json error_reply(const nlohmann::json& id, const Error&);

/// Splits a byte stream into frames. Feed it what the socket returned; take complete frames
/// out. A frame longer than kMaxFrameBytes is reported once as oversized and its bytes are
/// discarded up to the next '\n', so one bad frame costs one error reply, not the connection.
class FrameReader {
 public:
  enum class Kind { frame, oversized };
  struct Item {
    Kind kind;
    std::string frame;  // without the '\n'; empty for oversized
  };
  explicit FrameReader(std::size_t max_frame = kMaxFrameBytes) : m_max(max_frame) {}
  void feed(std::string_view bytes);
  /// The next complete item, or nullopt when more bytes are needed.
  std::optional<Item> next();
  /// Bytes of an incomplete frame held back (0 means the peer is between frames).
  std::size_t pending() const { return m_discarding ? 1 : m_buffer.size() - m_scan_from_start; }

 private:
  std::size_t m_max;
  std::string m_buffer;
  std::size_t m_scan_from_start = 0;  // consumed prefix of m_buffer
  bool m_discarding = false;          // inside an oversized frame
  bool m_oversize_reported = false;
  std::vector<Item> m_ready;
};

}  // namespace nsa::api
