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
/// A frame is one JSON object followed by '\n'. Longer request frames are refused with
/// frame_too_large (the limit counts the bytes before the '\n').
inline constexpr std::size_t kMaxFrameBytes = 64 * 1024;
/// Reply frames (a report, 256 answers) may be longer than request frames; clients accept
/// replies up to this size and treat a longer one as a broken daemon.
inline constexpr std::size_t kMaxReplyFrameBytes = 16 * 1024 * 1024;
/// At most this many problems in one dispatch request.
inline constexpr std::size_t kMaxProblemsPerRequest = 256;
/// A connection holding part of a frame for this long without completing it gets a `timeout`
/// error and is closed. A connection idle between frames is never timed out.
inline constexpr int kPartialFrameTimeoutMs = 10'000;
/// Where clients look for the daemon unless told otherwise (the NSA_TUNE_SOCKET environment
/// variable overrides it for clients).
inline constexpr const char* kDefaultSocketPath = "/run/nsa-tune/nsa-tuned.sock";

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

/// A request frame parsed as far as the envelope every op shares.
struct Request {
  nlohmann::json id;    // echoed verbatim in the reply: a number, a string, or null when absent
  Op op = Op::ping;
  nlohmann::json body;  // the whole request object, for the op's own fields
};
/// Parses one frame (without its '\n') into `out`. Errors: not_json (not JSON, or not UTF-8),
/// bad_request (not an object, or an id that is not a number, string or null), missing_field
/// (no "op"), bad_type ("op" not a string), unknown_op. `out.id` is set whenever the id could be
/// read, also on error, so that the error reply carries it.
std::optional<Error> parse_request(std::string_view frame, Request& out);

/// Serialises one frame: compact JSON and the terminating '\n'.
std::string encode_frame(const nlohmann::json&);

nlohmann::json ok_reply(const nlohmann::json& id);
nlohmann::json error_reply(const nlohmann::json& id, std::string_view code, std::string message);
nlohmann::json error_reply(const nlohmann::json& id, const Error&);

/// Splits a byte stream into frames. Feed it what the socket returned; take complete frames
/// out. A frame longer than kMaxFrameBytes is reported once as oversized and its bytes are
/// discarded up to the next '\n', so one bad frame costs one error reply, not the connection.
/// A frame is a line: "\r\n" ends one too (the '\r' is dropped) and empty lines are skipped,
/// so that a person typing into socat is understood. The size limit counts the frame's bytes
/// without its line end.
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
  /// Bytes of an incomplete frame held back (0 means the peer is between frames; inside an
  /// oversized frame it is 1, since the peer is still mid-frame).
  std::size_t pending() const { return m_discarding ? 1 : m_buffer.size(); }

 private:
  // feed() does all the splitting, looking at each byte once: m_buffer holds only the start of
  // the incomplete frame, m_ready the items not yet taken (from m_ready_from on).
  std::size_t m_max;
  std::string m_buffer;
  bool m_discarding = false;  // inside an oversized frame: drop bytes up to the next '\n'
  std::vector<Item> m_ready;
  std::size_t m_ready_from = 0;
};

}  // namespace nsa::api
