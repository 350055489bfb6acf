// Tests api/protocol.cpp: FrameReader over the ways bytes arrive, request envelopes, replies.

#include "nsa/api/protocol.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace nsa::api {
namespace {

using nlohmann::json;

std::vector<FrameReader::Item> drain(FrameReader& r) {
  std::vector<FrameReader::Item> items;
  while (auto it = r.next()) items.push_back(std::move(*it));
  return items;
}

TEST(FrameReader, FrameSplitAcrossFeedsIsReassembled) {
  FrameReader r;
  r.feed(R"({"op":"pi)");
  EXPECT_FALSE(r.next().has_value());
  EXPECT_EQ(r.pending(), 9u);
  r.feed(R"(ng","id":1})");
  EXPECT_FALSE(r.next().has_value());
  r.feed("\n");
  auto items = drain(r);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].kind, FrameReader::Kind::frame);
  EXPECT_EQ(items[0].frame, R"({"op":"ping","id":1})");
  EXPECT_EQ(r.pending(), 0u);
}

TEST(FrameReader, ManyFramesInOneFeedComeOutInOrder) {
  FrameReader r;
  std::string bytes;
  for (int i = 0; i < 1000; ++i) bytes += encode_frame(json{{"op", "ping"}, {"id", i}});
  bytes += R"({"op":"ping","id":"tail")";  // and a partial one
  r.feed(bytes);
  auto items = drain(r);
  ASSERT_EQ(items.size(), 1000u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(json::parse(items[i].frame)["id"], i);
  EXPECT_GT(r.pending(), 0u);
  r.feed("}\n");
  items = drain(r);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(json::parse(items[0].frame)["id"], "tail");
}

TEST(FrameReader, ByteAtATimeFeedGivesTheSameFrames) {
  FrameReader r;
  std::string bytes = encode_frame(json{{"op", "hello"}, {"id", 1}}) + encode_frame(json{{"op", "ping"}});
  std::vector<std::string> frames;
  for (char c : bytes) {
    r.feed(std::string_view(&c, 1));
    while (auto it = r.next()) frames.push_back(it->frame);
  }
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(json::parse(frames[1])["op"], "ping");
}

TEST(FrameReader, OversizedFrameIsReportedOnceThenAGoodFrameIsRead) {
  FrameReader r(16);
  r.feed("0123456789");
  r.feed("0123456789");  // passes the limit without a newline
  auto items = drain(r);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].kind, FrameReader::Kind::oversized);
  EXPECT_GT(r.pending(), 0u) << "still inside the oversized frame";
  r.feed(std::string(100000, 'x'));  // more of it: no second report, nothing buffered
  EXPECT_TRUE(drain(r).empty());
  r.feed("xyz\n{\"op\":\"ping\"}\n");
  items = drain(r);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].kind, FrameReader::Kind::frame);
  EXPECT_EQ(items[0].frame, R"({"op":"ping"})");
  EXPECT_EQ(r.pending(), 0u);
}

TEST(FrameReader, OversizedCompleteLineInOneFeedIsReportedBetweenGoodFrames) {
  FrameReader r(16);
  r.feed("{\"a\":1}\n" + std::string(17, 'y') + "\n{\"b\":2}\n");
  auto items = drain(r);
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[0].frame, R"({"a":1})");
  EXPECT_EQ(items[1].kind, FrameReader::Kind::oversized);
  EXPECT_EQ(items[2].frame, R"({"b":2})");
}

TEST(FrameReader, FrameOfExactlyTheLimitIsAcceptedAndOneMoreIsNot) {
  FrameReader r(16);
  r.feed(std::string(16, 'a') + "\n" + std::string(16, 'b') + "\r\n" + std::string(17, 'c') + "\n");
  auto items = drain(r);
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[0].frame, std::string(16, 'a'));
  EXPECT_EQ(items[1].frame, std::string(16, 'b')) << "the '\\r' of a CRLF is not part of the frame";
  EXPECT_EQ(items[2].kind, FrameReader::Kind::oversized);
}

TEST(FrameReader, CrlfAndEmptyLinesAreToleratedForPeopleTyping) {
  FrameReader r;
  r.feed("\n\r\n{\"op\":\"ping\"}\r");
  EXPECT_TRUE(drain(r).empty());
  r.feed("\n\n");
  auto items = drain(r);
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].frame, R"({"op":"ping"})");
}

TEST(FrameReader, PendingIsZeroOnlyBetweenFrames) {
  FrameReader r;
  EXPECT_EQ(r.pending(), 0u);
  r.feed("{");
  EXPECT_EQ(r.pending(), 1u);
  r.feed("}\n");
  EXPECT_EQ(r.pending(), 0u) << "pending counts held-back bytes, not untaken frames";
  ASSERT_TRUE(r.next().has_value());
}

TEST(ParseRequest, ReadsIdOpAndBody) {
  Request req;
  auto e = parse_request(R"({"op":"dispatch","id":"abc","problems":[]})", req);
  ASSERT_FALSE(e.has_value()) << e->message;
  EXPECT_EQ(req.op, Op::dispatch);
  EXPECT_EQ(req.id, "abc");
  EXPECT_TRUE(req.body["problems"].is_array());
  ASSERT_FALSE(parse_request(R"({"op":"ping"})", req).has_value());
  EXPECT_TRUE(req.id.is_null());
}

TEST(ParseRequest, EveryEnvelopeErrorHasItsCodeAndKeepsTheId) {
  struct Case {
    const char* frame;
    std::string_view code;
    json id;
  };
  std::vector<Case> cases = {
      {"{nope", errc::not_json, nullptr},
      {"\"\xff\xfe\"", errc::not_json, nullptr},
      {"[1,2]", errc::bad_request, nullptr},
      {R"({"op":"ping","id":[1]})", errc::bad_request, nullptr},
      {R"({"id":7})", errc::missing_field, 7},
      {R"({"id":8,"op":3})", errc::bad_type, 8},
      {R"({"id":9,"op":"launch_missiles"})", errc::unknown_op, 9},
  };
  for (const auto& c : cases) {
    Request req;
    auto e = parse_request(c.frame, req);
    ASSERT_TRUE(e.has_value()) << c.frame;
    EXPECT_EQ(e->code, c.code) << c.frame;
    EXPECT_FALSE(e->message.empty());
    EXPECT_EQ(req.id, c.id) << c.frame;
  }
}

TEST(Op, NamesRoundTripAndOnlyMutationsAreAdmin) {
  for (auto op : {Op::hello, Op::ping, Op::dispatch, Op::status, Op::report, Op::pins, Op::retune, Op::pin,
                  Op::unpin, Op::subscribe}) {
    EXPECT_EQ(parse_op(to_string(op)), op);
    EXPECT_EQ(is_admin(op), op == Op::retune || op == Op::pin || op == Op::unpin) << to_string(op);
  }
  EXPECT_FALSE(parse_op("Hello").has_value());
}

TEST(Replies, ErrorReplyHasTheDocumentedShapeAndEncodesAsOneLine) {
  json r = error_reply(5, errc::bad_shape, "D_qk=100 is not a multiple of 8");
  EXPECT_EQ(r, json::parse(R"({"ok":false,"id":5,"error":{"code":"bad_shape","message":"D_qk=100 is not a multiple of 8"}})"));
  EXPECT_EQ(ok_reply("x"), json::parse(R"({"ok":true,"id":"x"})"));
  std::string f = encode_frame(error_reply(nullptr, Error{"internal", "line1\nline2 \xff"}));
  EXPECT_EQ(f.find('\n'), f.size() - 1) << "newlines inside strings are escaped";
  json parsed;
  EXPECT_NO_THROW(parsed = json::parse(f)) << "invalid UTF-8 is replaced, so the frame stays valid JSON";
  EXPECT_EQ(parsed["error"]["code"], "internal");
}

}  // namespace
}  // namespace nsa::api
