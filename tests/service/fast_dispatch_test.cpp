// The hot-path dispatch parser may decline any frame, but what it accepts it must read exactly
// as the general path (api::parse_request + api::parse_problem) does.

#include <gtest/gtest.h>

#include <random>

#include "nsa/api/protocol.hpp"
#include "nsa/service/fast_dispatch.hpp"
#include "service_test_support.hpp"

namespace nsa::service {
namespace {

using testing::dispatch_request;
using testing::problem;
using nlohmann::json;

/// The general path's reading of a frame, or nullopt if it answers with an error.
std::optional<FastDispatch> general(std::string_view frame) {
  api::Request r;
  if (api::parse_request(frame, r) || r.op != api::Op::dispatch) return std::nullopt;
  auto it = r.body.find("problems");
  if (it == r.body.end() || !it->is_array() || it->empty() || it->size() > api::kMaxProblemsPerRequest)
    return std::nullopt;
  FastDispatch d;
  d.id = r.id;
  for (const auto& pj : *it) {
    api::Problem p;
    if (api::parse_problem(pj, p)) return std::nullopt;
    d.problems.push_back(p);
  }
  return d;
}

void expect_agrees(const std::string& frame) {
  auto fast = parse_dispatch_fast(frame);
  if (!fast) return;  // declining is always allowed
  auto slow = general(frame);
  ASSERT_TRUE(slow) << "the fast path accepted a frame the general path rejects: " << frame;
  EXPECT_EQ(fast->id, slow->id) << frame;
  EXPECT_EQ(fast->problems, slow->problems) << frame;
}

TEST(FastDispatch, AcceptsPlainValidRequestsAndReadsThemLikeTheGeneralPath) {
  const std::vector<json> requests = {
      dispatch_request(json::array({problem()})),
      dispatch_request(json::array({problem({{"arch", "sm_89"}}), problem({{"device", 3}}),
                                    problem({{"device_uuid", "GPU-1234"}, {"dtype", "fp16"}})})),
      json{{"op", "dispatch"}, {"id", "abc"}, {"problems", json::array({problem({{"t_q", 7}, {"t_kv", 9}})})}},
      json{{"op", "dispatch"}, {"id", 2.5}, {"problems", json::array({problem()})}},
      json{{"op", "dispatch"}, {"id", nullptr}, {"problems", json::array({problem()})}},
      json{{"op", "dispatch"}, {"id", 18446744073709551615ull}, {"problems", json::array({problem()})}},
  };
  for (const auto& r : requests) {
    const std::string frame = r.dump();
    auto fast = parse_dispatch_fast(frame);
    ASSERT_TRUE(fast) << "declined a plain valid request: " << frame;
    expect_agrees(frame);
  }
  json big = json::array();
  for (int i = 0; i < 256; ++i) big.push_back(problem({{"t_kv", 1000 + i}}));
  auto fast = parse_dispatch_fast(dispatch_request(big).dump());
  ASSERT_TRUE(fast);
  EXPECT_EQ(fast->problems.size(), 256u);
  EXPECT_EQ(fast->problems[255].t_kv, 1255);
}

TEST(FastDispatch, DeclinesEverythingTheGeneralPathMustAnswerWithAnError) {
  json no_n = problem();
  no_n.erase("n");
  json many = json::array();
  for (int i = 0; i < 257; ++i) many.push_back(problem());
  const std::vector<std::string> frames = {
      "", "not json", "[1]", R"({"op":"ping"})", R"({"op":"dispatch"})", R"({"op":"dispatch","problems":[]})",
      R"({"op":"dispatch","problems":"x"})", R"({"op":"dispatch","problems":[7]})",
      dispatch_request(json::array({no_n})).dump(),
      dispatch_request(json::array({problem({{"d_qk", 100}})})).dump(),
      dispatch_request(json::array({problem({{"d_qk", 128.0}})})).dump(),
      dispatch_request(json::array({problem({{"d_qk", "128"}})})).dump(),
      dispatch_request(json::array({problem({{"d_k", 128}})})).dump(),
      dispatch_request(json::array({problem({{"arch", ""}})})).dump(),
      dispatch_request(json::array({problem({{"arch", "sm_90"}, {"device", 1}})})).dump(),
      dispatch_request(json::array({problem({{"dtype", "fp8"}})})).dump(),
      dispatch_request(json::array({problem({{"batch", 4294967296ll}})})).dump(),
      dispatch_request(many).dump(),
      R"({"op":"dispatch","problems":[{"dtype":"bf16","dtype":"fp16"}]})",
      R"({"op":"dispatch","id":{"a":1},"problems":[]})",
      dispatch_request(json::array({problem()})).dump() + " trailing",
  };
  for (const auto& f : frames) {
    EXPECT_FALSE(parse_dispatch_fast(f)) << f;
    expect_agrees(f);
  }
}

TEST(FastDispatch, RandomMutationsOfValidFramesNeverMakeItDisagree) {
  std::mt19937 rng(20251125);
  const std::string base =
      dispatch_request(json::array({problem({{"arch", "sm_90"}}), problem({{"device", 1}, {"t_q", 4}})})).dump();
  const std::string alphabet = "{}[]\",:0123456789-.e abcdefghijklmnopqrstuvwxyz_\\\x01\xff";
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string f = base;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      std::size_t at = rng() % f.size();
      switch (rng() % 3) {
        case 0: f[at] = alphabet[rng() % alphabet.size()]; break;
        case 1: f.erase(at, 1); break;
        default: f.insert(at, 1, alphabet[rng() % alphabet.size()]); break;
      }
    }
    if (parse_dispatch_fast(f)) ++accepted;
    expect_agrees(f);
    if (::testing::Test::HasFailure()) break;
  }
  EXPECT_GT(accepted, 100) << "mutations of digits should often stay valid";
}

TEST(ProblemHashTest, EqualProblemsHashEquallyAndFieldsMatter) {
  api::Problem a;
  a.d_qk = 128;
  api::Problem b = a;
  EXPECT_EQ(ProblemHash{}(a), ProblemHash{}(b));
  b.t_kv = 1;
  EXPECT_NE(ProblemHash{}(a), ProblemHash{}(b));
  api::Problem c = a;
  c.device = 0;
  EXPECT_NE(ProblemHash{}(a), ProblemHash{}(c)) << "device 0 and no device are different problems";
}

}  // namespace
}  // namespace nsa::service
