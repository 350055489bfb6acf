// Tests api/problem.cpp: parsing and validation of problems over every error kind, and the
// family/point keys the store uses as row keys.

#include "nsa/api/problem.hpp"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <vector>

namespace nsa::api {
namespace {

using nlohmann::json;

json decode_problem() {
  return json{{"dtype", "bf16"}, {"d_qk", 128}, {"d_v", 128}, {"h", 16},        {"h_kv", 4},
              {"block", 64},     {"n", 16},     {"t_q", 1},   {"t_kv", 32768}, {"batch", 64}};
}

Error parse_error(const json& j) {
  Problem p;
  auto e = parse_problem(j, p);
  EXPECT_TRUE(e.has_value()) << "expected an error for " << j.dump();
  return e.value_or(Error{"<none>", "<none>"});
}

TEST(ParseProblem, ValidDecodeProblemParsesEveryField) {
  json j = decode_problem();
  j["arch"] = "sm_90a";
  Problem p;
  ASSERT_FALSE(parse_problem(j, p).has_value());
  EXPECT_EQ(p.arch, "sm_90a");
  EXPECT_FALSE(p.device.has_value());
  EXPECT_EQ(p.dtype, DType::bf16);
  EXPECT_EQ(p.d_qk, 128);
  EXPECT_EQ(p.h, 16);
  EXPECT_EQ(p.h_kv, 4);
  EXPECT_EQ(p.block, 64);
  EXPECT_EQ(p.n, 16);
  EXPECT_EQ(p.t_q, 1);
  EXPECT_EQ(p.t_kv, 32768);
  EXPECT_EQ(p.batch, 64);
  EXPECT_EQ(p.phase(), Phase::decode);
  EXPECT_EQ(p.selected_length(), 1024);
}

TEST(ParseProblem, ToJsonRoundTripsForEveryTargetKind) {
  for (const char* target : {"", "device", "device_uuid", "arch"}) {
    json j = decode_problem();
    j["dtype"] = "fp16";
    j["t_q"] = 512;
    j["t_kv"] = 4096;
    if (std::string(target) == "device") j["device"] = 3;
    if (std::string(target) == "device_uuid") j["device_uuid"] = "GPU-8f1c2d3e-0000-1111-2222-333344445555";
    if (std::string(target) == "arch") j["arch"] = "sm_89";
    Problem p;
    ASSERT_FALSE(parse_problem(j, p).has_value()) << target;
    EXPECT_EQ(to_json(p), j) << target;
    Problem q;
    ASSERT_FALSE(parse_problem(to_json(p), q).has_value());
    EXPECT_EQ(p, q);
  }
}

TEST(ParseProblem, FloatIntegerIsBadTypeEvenWhenWhole) {
  json j = decode_problem();
  j["d_qk"] = 128.0;
  Error e = parse_error(j);
  EXPECT_EQ(e.code, "bad_type");
  EXPECT_NE(e.message.find("'d_qk'"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("float"), std::string::npos) << e.message;
}

TEST(ParseProblem, StringIntegerIsBadType) {
  json j = decode_problem();
  j["t_kv"] = "128";
  Error e = parse_error(j);
  EXPECT_EQ(e.code, "bad_type");
  EXPECT_NE(e.message.find("'t_kv'"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("string"), std::string::npos) << e.message;
}

TEST(ParseProblem, NonStringDtypeAndArchAreBadType) {
  json j = decode_problem();
  j["dtype"] = 16;
  EXPECT_EQ(parse_error(j).code, "bad_type");
  j = decode_problem();
  j["arch"] = 90;
  Error e = parse_error(j);
  EXPECT_EQ(e.code, "bad_type");
  EXPECT_NE(e.message.find("'arch'"), std::string::npos) << e.message;
}

TEST(ParseProblem, EachMissingFieldIsNamed) {
  for (const char* f : {"dtype", "d_qk", "d_v", "h", "h_kv", "block", "n", "t_q", "t_kv", "batch"}) {
    json j = decode_problem();
    j.erase(f);
    Error e = parse_error(j);
    EXPECT_EQ(e.code, "missing_field") << f;
    EXPECT_NE(e.message.find(std::string("'") + f + "'"), std::string::npos) << e.message;
  }
}

TEST(ParseProblem, UnknownFieldSuggestsTheClosestKnownOne) {
  json j = decode_problem();
  j.erase("d_qk");
  j["d_k"] = 128;
  Error e = parse_error(j);
  EXPECT_EQ(e.code, "bad_request");
  EXPECT_EQ(e.message, "unknown field 'd_k' (did you mean d_qk?)");
}

TEST(ParseProblem, UnknownFieldFarFromAnyKnownOneListsTheFields) {
  json j = decode_problem();
  j["sequence_length"] = 128;
  Error e = parse_error(j);
  EXPECT_EQ(e.code, "bad_request");
  EXPECT_NE(e.message.find("unknown field 'sequence_length'"), std::string::npos) << e.message;
  EXPECT_EQ(e.message.find("did you mean"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("t_kv"), std::string::npos) << e.message;
}

TEST(ParseProblem, NotAnObjectIsBadRequest) {
  EXPECT_EQ(parse_error(json::array({1, 2})).code, "bad_request");
  EXPECT_EQ(parse_error(json("bf16")).code, "bad_request");
}

TEST(ParseProblem, TwoTargetsAreBadRequest) {
  json j = decode_problem();
  j["device"] = 0;
  j["arch"] = "sm_90";
  Error e = parse_error(j);
  EXPECT_EQ(e.code, "bad_request");
  EXPECT_NE(e.message.find("at most one"), std::string::npos) << e.message;
}

TEST(ParseProblem, UnsupportedDtypeIsBadShapeNamingTheChoices) {
  json j = decode_problem();
  j["dtype"] = "fp32";
  Error e = parse_error(j);
  EXPECT_EQ(e.code, "bad_shape");
  EXPECT_NE(e.message.find("fp32"), std::string::npos);
  EXPECT_NE(e.message.find("bf16"), std::string::npos);
}

struct ShapeCase {
  const char* field;
  json value;
  const char* message_part;
};

TEST(ParseProblem, OutOfRangeValuesAreBadShapeWithTheRule) {
  const std::vector<ShapeCase> cases = {
      {"d_qk", 100, "D_qk=100 is not a multiple of 8"},
      {"d_qk", 264, "D_qk=264 is outside [8, 256]"},
      {"d_qk", 0, "D_qk=0 is outside [8, 256]"},
      {"d_v", 12, "D_v=12 is not a multiple of 8"},
      {"h", 0, "h=0"},
      {"h", 65, "h=65"},
      {"h_kv", 0, "H_kv=0"},
      {"block", 48, "block=48 must be a power of two in [16, 256]"},
      {"block", 8, "block=8"},
      {"block", 512, "block=512"},
      {"n", 0, "n=0"},
      {"n", 129, "n=129"},
      {"t_kv", 0, "T_kv=0"},
      {"t_kv", std::int64_t{1} << 31, "T_kv=2147483648 is outside [1, 2^31)"},
      {"t_q", 0, "T_q=0"},
      {"t_q", 40000, "T_q=40000 is outside [1, T_kv=32768]"},
      {"batch", 0, "batch=0"},
      {"batch", -3, "batch=-3"},
      {"device", -1, "device=-1"},
      {"arch", "sm90", "arch \"sm90\" is not an arch name"},
      {"arch", "sm_9", "arch \"sm_9\""},
      {"arch", "sm_90x", "arch \"sm_90x\""},
      {"arch", "", "arch is empty"},
      {"device_uuid", "", "device_uuid is empty"},
      {"device_uuid", "GPU 1", "device_uuid must be"},
      {"d_v", std::uint64_t{1} << 63, "d_v=9223372036854775808 is too large"},
      {"batch", std::int64_t{1} << 40, "batch=1099511627776 is outside"},
  };
  for (const auto& c : cases) {
    json j = decode_problem();
    j[c.field] = c.value;
    Error e = parse_error(j);
    EXPECT_EQ(e.code, "bad_shape") << c.field << "=" << c.value.dump();
    EXPECT_NE(e.message.find(c.message_part), std::string::npos)
        << c.field << ": '" << e.message << "' lacks '" << c.message_part << "'";
  }
}

TEST(ParseProblem, TooManyQueryRowsIsBadShape) {
  json j = decode_problem();
  j["batch"] = 1 << 20;
  j["h_kv"] = 1024;
  j["t_kv"] = 1 << 30;
  j["t_q"] = 1 << 30;
  Error e = parse_error(j);
  EXPECT_EQ(e.code, "bad_shape");
  EXPECT_NE(e.message.find("2^48"), std::string::npos) << e.message;
}

TEST(ParseProblem, BoundaryValuesAreAccepted) {
  json j = decode_problem();
  j["d_qk"] = 8;
  j["d_v"] = 256;
  j["h"] = 64;
  j["block"] = 256;
  j["n"] = 128;
  j["t_kv"] = (std::int64_t{1} << 31) - 1;
  j["t_q"] = (std::int64_t{1} << 31) - 1;
  j["device"] = kMaxDeviceOrdinal;
  Problem p;
  auto e = parse_problem(j, p);
  EXPECT_FALSE(e.has_value()) << e->message;
  EXPECT_EQ(p.phase(), Phase::prefill);
}

TEST(ParseProblem, FailedParseLeavesOutputUntouched) {
  Problem p;
  p.d_qk = 64;
  json j = decode_problem();
  j["d_qk"] = 100;
  ASSERT_TRUE(parse_problem(j, p).has_value());
  EXPECT_EQ(p.d_qk, 64);
}

TEST(Family, KeySpellsEveryCompileTimeConstantAndThePhase) {
  Problem p;
  ASSERT_FALSE(parse_problem(decode_problem(), p).has_value());
  EXPECT_EQ(family_of(p).key(), "bf16.dqk128.dv128.h16.blk64.n16.decode");
  p.t_q = 2;
  p.d_qk = 192;
  p.dtype = DType::fp16;
  EXPECT_EQ(family_of(p).key(), "fp16.dqk192.dv128.h16.blk64.n16.prefill");
}

TEST(Family, ParseRoundTripsKeys) {
  for (const char* key : {"bf16.dqk128.dv128.h16.blk64.n16.decode", "fp16.dqk192.dv64.h1.blk32.n8.prefill"}) {
    auto f = Family::parse(key);
    ASSERT_TRUE(f.has_value()) << key;
    EXPECT_EQ(f->key(), key);
  }
  Family f{DType::fp16, 256, 128, 32, 128, 32, Phase::prefill};
  EXPECT_EQ(Family::parse(f.key()), f);
}

TEST(Family, ParseRejectsAnythingKeyWouldNotProduce) {
  for (const char* bad : {"", "bf16", "bf16.dqk128.dv128.h16.blk64.n16", "bf16.dqk128.dv128.h16.blk64.n16.decode.x",
                          "fp32.dqk128.dv128.h16.blk64.n16.decode", "bf16.dqk0128.dv128.h16.blk64.n16.decode",
                          "bf16.dqk128.dv128.h16.blk64.n16.Decode", "bf16.dq128.dv128.h16.blk64.n16.decode",
                          "bf16.dqk-8.dv128.h16.blk64.n16.decode", "bf16.dqk128.dv128.h16.blk64.n0.decode",
                          "bf16.dqk128.dv128.h16.blk64.n16x.decode", "bf16.dqk.dv128.h16.blk64.n16.decode"}) {
    EXPECT_FALSE(Family::parse(bad).has_value()) << bad;
  }
}

TEST(Point, KeyAndParseRoundTrip) {
  Problem p;
  ASSERT_FALSE(parse_problem(decode_problem(), p).has_value());
  Point pt = point_of(p);
  EXPECT_EQ(pt.key(), "b64.hkv4.tq1.tkv32768");
  EXPECT_EQ(pt.rows(), 256);
  EXPECT_EQ(Point::parse(pt.key()), pt);
  Point big{7, 1024, 3000000000LL, 2147483647LL};
  EXPECT_EQ(Point::parse(big.key()), big);
  for (const char* bad : {"b64.hkv4.tq1", "b64.hkv4.tq1.tkv0", "b0.hkv4.tq1.tkv1", "b64.hk4.tq1.tkv1",
                          "b64.hkv4.tq1.tkv1.x", "b064.hkv4.tq1.tkv1"})
    EXPECT_FALSE(Point::parse(bad).has_value()) << bad;
}

TEST(Point, DistanceIsSumOfLogRatiosOfRowsAndTkv) {
  Point a{64, 4, 1, 32768};   // 256 rows
  Point b{16, 4, 1, 8192};    // 64 rows: 2 + 2
  EXPECT_DOUBLE_EQ(point_distance(a, a), 0.0);
  EXPECT_DOUBLE_EQ(point_distance(a, b), 4.0);
  EXPECT_DOUBLE_EQ(point_distance(b, a), 4.0);
  Point c{128, 4, 1, 32768};  // twice the rows
  EXPECT_DOUBLE_EQ(point_distance(a, c), 1.0);
  // Rows count batch * h_kv * t_q, so moving work between them is free.
  Point d{32, 8, 1, 32768};
  EXPECT_DOUBLE_EQ(point_distance(a, d), 0.0);
}

TEST(Point, NearestPointPicksSmallestDistanceAndBreaksTiesByOrderFreeRule) {
  Point q{64, 4, 1, 16384};
  std::vector<Point> measured = {{64, 4, 1, 4096}, {64, 4, 1, 65536}, {64, 4, 1, 8192}, {64, 4, 1, 32768}};
  // 8192 and 32768 are both one octave away: the larger t_kv wins, in either order.
  auto i = nearest_point(q, measured);
  ASSERT_TRUE(i.has_value());
  EXPECT_EQ(measured[*i].t_kv, 32768);
  std::swap(measured[2], measured[3]);
  i = nearest_point(q, measured);
  ASSERT_TRUE(i.has_value());
  EXPECT_EQ(measured[*i].t_kv, 32768);
  EXPECT_FALSE(nearest_point(q, {}).has_value());
  std::vector<Point> one = {{1, 1, 1, 1}};
  EXPECT_EQ(nearest_point(q, one), 0u);
}

}  // namespace
}  // namespace nsa::api
