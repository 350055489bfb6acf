// Tests api/answer.cpp: the answer object's JSON form and its round trip.

#include "nsa/api/answer.hpp"

#include <gtest/gtest.h>

namespace nsa::api {
namespace {

using nlohmann::json;

Answer measured_sparse() {
  Answer a;
  a.backend = Backend::sparse;
  a.provenance = Provenance::measured;
  a.variant = "sel_fwd.query_outer.dqk128_dv128_h16_blk64_n16_bf16.warps4_stages2.sm90";
  a.launch = json{{"launches", json::array({json{{"entry", "sel_fwd_query_outer"},
                                                 {"grid", {64, 4, 1}},
                                                 {"block", {128, 1, 1}},
                                                 {"shared_bytes", 49152}}})},
                  {"workspace_bytes", 0}};
  a.speedup = 1.85;
  a.run_id = 42;
  a.arch = "sm_90";
  a.reason = "measured at b64.hkv4.tq1.tkv32768: sparse 1.85x faster than packed SDPA";
  return a;
}

TEST(Answer, PinnedAnswerWritesNullWhereNotApplicable) {
  Answer a = Answer::fallback(Provenance::pinned, "SM 8.9 is pinned to sdpa");
  a.arch = "sm_89";
  json expected = json::parse(R"({"backend":"sdpa","provenance":"pinned","variant":null,"launch":null,
      "speedup":null,"run_id":null,"arch":"sm_89","reason":"SM 8.9 is pinned to sdpa"})");
  EXPECT_EQ(to_json(a), expected);
}

TEST(Answer, RoundTripsThroughJsonForEveryProvenance) {
  std::vector<Answer> answers = {measured_sparse(), Answer::fallback(Provenance::untuned, "nobody tuned it"),
                                 Answer::fallback(Provenance::no_device, "no GPU"),
                                 Answer::fallback(Provenance::daemon_unavailable, "no daemon")};
  Answer measured_sdpa = measured_sparse();
  measured_sdpa.backend = Backend::sdpa;
  measured_sdpa.launch = nullptr;
  measured_sdpa.speedup = 0.8;  // the best loser's speedup
  answers.push_back(measured_sdpa);
  for (const Answer& a : answers) {
    std::string error;
    // Through text too, as the wire does it.
    auto back = answer_from_json(json::parse(to_json(a).dump()), &error);
    ASSERT_TRUE(back.has_value()) << error;
    EXPECT_EQ(*back, a) << to_json(a).dump();
  }
}

TEST(Answer, AbsentOptionalFieldsAndUnknownFieldsAreAccepted) {
  auto a = answer_from_json(json{{"backend", "sdpa"}, {"provenance", "untuned"}, {"reason", "r"}, {"future", 1}});
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->backend, Backend::sdpa);
  EXPECT_TRUE(a->variant.empty());
  EXPECT_TRUE(a->launch.is_null());
}

TEST(Answer, MalformedAnswersAreRejectedWithAReason) {
  json good = to_json(measured_sparse());
  struct Case {
    const char* what;
    json j;
    const char* error_part;
  };
  auto with = [&](const char* field, json value) {
    json j = good;
    if (value.is_discarded()) j.erase(field);
    else j[field] = value;
    return j;
  };
  json drop = json(json::value_t::discarded);
  std::vector<Case> cases = {
      {"array", json::array(), "JSON object"},
      {"no backend", with("backend", drop), "'backend'"},
      {"backend kind", with("backend", "triton"), "unknown backend 'triton'"},
      {"provenance kind", with("provenance", "guessed"), "unknown provenance 'guessed'"},
      {"no reason", with("reason", drop), "'reason'"},
      {"variant type", with("variant", 3), "'variant'"},
      {"launch type", with("launch", "grid"), "'launch'"},
      {"speedup type", with("speedup", "fast"), "'speedup'"},
      {"speedup negative", with("speedup", -1.0), "'speedup'"},
      {"run id float", with("run_id", 4.5), "'run_id'"},
      {"arch type", with("arch", 90), "'arch'"},
      {"sparse without variant", with("variant", nullptr), "without a variant"},
      {"sparse untuned", with("provenance", "untuned"), "only 'measured'"},
  };
  for (const auto& c : cases) {
    std::string error;
    EXPECT_FALSE(answer_from_json(c.j, &error).has_value()) << c.what;
    EXPECT_NE(error.find(c.error_part), std::string::npos) << c.what << ": " << error;
  }
}

TEST(Answer, EnumNamesRoundTrip) {
  for (auto p : {Provenance::pinned, Provenance::measured, Provenance::untuned, Provenance::no_device,
                 Provenance::daemon_unavailable})
    EXPECT_EQ(parse_provenance(to_string(p)), p);
  EXPECT_EQ(parse_backend("sparse"), Backend::sparse);
  EXPECT_EQ(parse_backend("sdpa"), Backend::sdpa);
  EXPECT_FALSE(parse_backend("SDPA").has_value());
}

}  // namespace
}  // namespace nsa::api
