#pragma once
// The hot path's request parser: a dispatch frame straight into api::Problem values, without
// building a JSON document (nlohmann's SAX interface, no allocation per value but the strings).
//
// It accepts only the plain, valid shape of a dispatch request:
//   {"op":"dispatch","id":<number|string|null>,"problems":[{<problem fields>}, ...]}
// with 1 to 256 problems, every problem field known, present at most once, of the right JSON
// type, and the problem passing api::validate. For anything else (another op, an unknown or
// repeated field, a nested value where none belongs, a float, a missing field, a bad shape) it
// declines, and the daemon parses the frame with the general path (api::parse_request and
// api::parse_problem), which produces the exact error docs/protocol.md specifies. So the fast
// path can never answer differently from the general one; it can only answer sooner.
// tests/service/fast_dispatch_test.cpp checks that equivalence on valid and broken frames.

#include <optional>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "nsa/api/problem.hpp"

namespace nsa::service {

struct FastDispatch {
  nlohmann::json id;  // null when absent
  std::vector<api::Problem> problems;
};

/// The parsed request, or nullopt when the frame needs the general path.
std::optional<FastDispatch> parse_dispatch_fast(std::string_view frame);

/// A hash of every field of a problem, for the daemon's per-epoch answer memo.
struct ProblemHash {
  std::size_t operator()(const api::Problem&) const noexcept;
};

}  // namespace nsa::service
