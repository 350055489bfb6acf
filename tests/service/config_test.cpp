// nsa-tuned's configuration: flags > environment > config file > defaults, and every bad value
// refused with a message that names it.

#include <gtest/gtest.h>

#include <fstream>
#include <map>

#include "nsa/service/config.hpp"
#include "service_test_support.hpp"

namespace nsa::service {
namespace {

using testing::TempDir;

EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::expected<Config, CommandLineExit> load(std::vector<std::string> args,
                                            std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), "nsa-tuned");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return load_daemon_config(static_cast<int>(argv.size()), argv.data(), env_of(std::move(env)));
}

void write(const std::filesystem::path& p, const std::string& text) { std::ofstream(p) << text; }

TEST(Config, DefaultsApplyWhenNothingIsSet) {
  auto c = load({});
  ASSERT_TRUE(c) << c.error().text;
  EXPECT_EQ(c->state_dir, kDefaultStateDir);
  EXPECT_EQ(c->socket, kDefaultSocket);
  EXPECT_EQ(c->log_level, log::Level::info);
  EXPECT_FALSE(c->no_tune);
  EXPECT_EQ(c->max_connections, 1024);
  EXPECT_EQ(c->frame_timeout, std::chrono::milliseconds(10000));
  EXPECT_EQ(c->sources.at("socket"), "default");
  EXPECT_EQ(c->store_path(), std::filesystem::path(kDefaultStateDir) / "state.db");
}

TEST(Config, FlagBeatsEnvironmentBeatsFileBeatsDefault) {
  TempDir dir;
  write(dir / "c.json", R"({"socket":"/file/s.sock","state_dir":"/file/state","log_level":"warn",
                           "no_tune":true,"admin_group":"file-group","max_connections":7})");
  std::map<std::string, std::string> env{{"NSA_TUNE_CONFIG", (dir / "c.json").string()},
                                         {"NSA_TUNE_SOCKET", "/env/s.sock"},
                                         {"NSA_TUNE_LOG_LEVEL", "debug"}};
  auto c = load({"--socket", "/flag/s.sock"}, env);
  ASSERT_TRUE(c) << c.error().text;
  EXPECT_EQ(c->socket, "/flag/s.sock");
  EXPECT_EQ(c->sources.at("socket"), "flag");
  EXPECT_EQ(c->log_level, log::Level::debug);
  EXPECT_EQ(c->sources.at("log_level"), "env NSA_TUNE_LOG_LEVEL");
  EXPECT_EQ(c->state_dir, "/file/state");
  EXPECT_EQ(c->sources.at("state_dir"), "file " + (dir / "c.json").string());
  EXPECT_TRUE(c->no_tune);
  EXPECT_EQ(c->admin_group, "file-group");
  EXPECT_EQ(c->max_connections, 7);
  EXPECT_EQ(c->frame_timeout, std::chrono::milliseconds(10000));
  EXPECT_EQ(c->sources.at("frame_timeout_ms"), "default");

  auto without_flag = load({}, env);
  ASSERT_TRUE(without_flag);
  EXPECT_EQ(without_flag->socket, "/env/s.sock");
  env.erase("NSA_TUNE_SOCKET");
  auto without_env = load({}, env);
  ASSERT_TRUE(without_env);
  EXPECT_EQ(without_env->socket, "/file/s.sock");
}

TEST(Config, ConfigFlagBeatsTheConfigEnvironmentVariable) {
  TempDir dir;
  write(dir / "a.json", R"({"socket":"/a.sock"})");
  write(dir / "b.json", R"({"socket":"/b.sock"})");
  auto c = load({"--config", (dir / "b.json").string()}, {{"NSA_TUNE_CONFIG", (dir / "a.json").string()}});
  ASSERT_TRUE(c) << c.error().text;
  EXPECT_EQ(c->socket, "/b.sock");
  EXPECT_EQ(c->config_file, dir / "b.json");
}

TEST(Config, NoTuneFromEnvironmentAndFlag) {
  auto env_on = load({}, {{"NSA_TUNE_NO_TUNE", "yes"}});
  ASSERT_TRUE(env_on);
  EXPECT_TRUE(env_on->no_tune);
  auto env_off = load({}, {{"NSA_TUNE_NO_TUNE", "0"}});
  ASSERT_TRUE(env_off);
  EXPECT_FALSE(env_off->no_tune);
  auto flag = load({"--no-tune"}, {{"NSA_TUNE_NO_TUNE", "false"}});
  ASSERT_TRUE(flag);
  EXPECT_TRUE(flag->no_tune);
  EXPECT_EQ(flag->sources.at("no_tune"), "flag");
}

TEST(Config, RelativePathsInTheFileAreRelativeToTheFile) {
  TempDir dir;
  std::filesystem::create_directories(dir / "etc");
  write(dir / "etc" / "c.json", R"({"state_dir":"../var","socket":"run/s.sock"})");
  auto c = load({"--config", (dir / "etc" / "c.json").string()});
  ASSERT_TRUE(c) << c.error().text;
  EXPECT_EQ(c->state_dir, dir / "etc" / "../var");
  EXPECT_EQ(c->socket, dir / "etc" / "run/s.sock");
}

TEST(Config, UnknownKeyOrWrongTypeInTheFileIsAnErrorNamingIt) {
  TempDir dir;
  write(dir / "typo.json", R"({"sockett":"/x.sock"})");
  auto typo = load({"--config", (dir / "typo.json").string()});
  ASSERT_FALSE(typo);
  EXPECT_EQ(typo.error().code, daemon_exit::usage);
  EXPECT_NE(typo.error().text.find("\"sockett\" is not a known key"), std::string::npos) << typo.error().text;

  write(dir / "type.json", R"({"max_connections":"many"})");
  auto type = load({"--config", (dir / "type.json").string()});
  ASSERT_FALSE(type);
  EXPECT_NE(type.error().text.find("\"max_connections\" must be an integer"), std::string::npos);

  write(dir / "broken.json", "{\"socket\": ");
  auto broken = load({"--config", (dir / "broken.json").string()});
  ASSERT_FALSE(broken);
  EXPECT_NE(broken.error().text.find("not valid JSON"), std::string::npos);

  write(dir / "array.json", "[1,2]");
  auto array = load({"--config", (dir / "array.json").string()});
  ASSERT_FALSE(array);
  EXPECT_NE(array.error().text.find("one JSON object"), std::string::npos);
}

TEST(Config, TheFilesTuningObjectConfiguresTheTunerAndTheEnvironmentGoesOverIt) {
  TempDir dir;
  std::filesystem::create_directories(dir / "etc");
  write(dir / "etc" / "c.json", R"({"tuning": {"margin": 1.5, "decode_points": ["b2.hkv2.tq1.tkv4096"],
                                              "worker": "bin/nsa-tune-worker", "idle_poll_s": 2}})");
  auto c = load({"--config", (dir / "etc" / "c.json").string()});
  ASSERT_TRUE(c) << c.error().text;
  EXPECT_DOUBLE_EQ(c->tuning.policy.margin, 1.5);
  EXPECT_EQ(c->tuning.idle_poll, std::chrono::milliseconds(2000));
  ASSERT_EQ(c->tuning.plan.decode_points.size(), 1u);
  EXPECT_EQ(c->tuning.plan.decode_points[0].key(), "b2.hkv2.tq1.tkv4096");
  EXPECT_EQ(c->tuning.worker, dir / "etc" / "bin/nsa-tune-worker") << "relative to the file, like its other paths";
  EXPECT_EQ(c->sources.at("tuning"), "file " + (dir / "etc" / "c.json").string());

  auto env = load({"--config", (dir / "etc" / "c.json").string()},
                  {{"NSA_TUNE_WORKER", "/opt/nsa/nsa-tune-worker"}, {"NSA_TUNE_EXPERIMENTAL_PINNED", "on"}});
  ASSERT_TRUE(env) << env.error().text;
  EXPECT_EQ(env->tuning.worker, "/opt/nsa/nsa-tune-worker");
  EXPECT_TRUE(env->tuning.plan.experimental_pinned);

  auto defaults = load({});
  ASSERT_TRUE(defaults);
  EXPECT_DOUBLE_EQ(defaults->tuning.policy.margin, 1.2);
  EXPECT_EQ(defaults->sources.at("tuning"), "default");
  auto empty = load({}, {{"NSA_TUNE_WORKER", ""}});
  ASSERT_TRUE(empty) << "an empty variable counts as unset: " << empty.error().text;
  EXPECT_TRUE(empty->tuning.worker.empty());
}

TEST(Config, BadTuningSettingsAreUsageErrorsNamingTheKeyOrVariable) {
  TempDir dir;
  write(dir / "typo.json", R"({"tuning": {"margn": 1.2}})");
  auto typo = load({"--config", (dir / "typo.json").string()});
  ASSERT_FALSE(typo);
  EXPECT_EQ(typo.error().code, daemon_exit::usage);
  EXPECT_NE(typo.error().text.find("margn"), std::string::npos) << typo.error().text;
  EXPECT_NE(typo.error().text.find("typo.json"), std::string::npos) << typo.error().text;

  write(dir / "range.json", R"({"tuning": {"margin": 0.5}})");
  auto range = load({"--config", (dir / "range.json").string()});
  ASSERT_FALSE(range);
  EXPECT_NE(range.error().text.find("margin"), std::string::npos) << range.error().text;

  write(dir / "scalar.json", R"({"tuning": true})");
  auto scalar = load({"--config", (dir / "scalar.json").string()});
  ASSERT_FALSE(scalar);
  EXPECT_NE(scalar.error().text.find("\"tuning\" must be an object"), std::string::npos) << scalar.error().text;

  auto fault = load({}, {{"NSA_TUNE_TEST_FAULT", "meltdown"}});
  ASSERT_FALSE(fault);
  EXPECT_EQ(fault.error().code, daemon_exit::usage);
  EXPECT_NE(fault.error().text.find("NSA_TUNE_TEST_FAULT"), std::string::npos) << fault.error().text;
  auto pinned = load({}, {{"NSA_TUNE_EXPERIMENTAL_PINNED", "perhaps"}});
  ASSERT_FALSE(pinned);
  EXPECT_NE(pinned.error().text.find("NSA_TUNE_EXPERIMENTAL_PINNED"), std::string::npos);
}

TEST(Config, MissingConfigFileIsAnError) {
  TempDir dir;
  auto c = load({}, {{"NSA_TUNE_CONFIG", (dir / "nope.json").string()}});
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, daemon_exit::usage);
  EXPECT_NE(c.error().text.find("nope.json"), std::string::npos);
}

TEST(Config, BadEnvironmentValuesAreErrorsNamingTheVariable) {
  auto tune = load({}, {{"NSA_TUNE_NO_TUNE", "maybe"}});
  ASSERT_FALSE(tune);
  EXPECT_NE(tune.error().text.find("NSA_TUNE_NO_TUNE"), std::string::npos);
  auto level = load({}, {{"NSA_TUNE_LOG_LEVEL", "loud"}});
  ASSERT_FALSE(level);
  EXPECT_NE(level.error().text.find("NSA_TUNE_LOG_LEVEL"), std::string::npos);
  EXPECT_NE(level.error().text.find("error, warn, info, debug"), std::string::npos);
}

TEST(Config, EmptyEnvironmentVariablesCountAsUnset) {
  auto c = load({}, {{"NSA_TUNE_SOCKET", ""}, {"NSA_TUNE_STATE_DIR", ""}});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->socket, kDefaultSocket);
  EXPECT_EQ(c->sources.at("state_dir"), "default");
}

TEST(Config, OutOfRangeValuesAreRefused) {
  auto conns = load({"--max-connections", "0"});
  ASSERT_FALSE(conns);
  EXPECT_NE(conns.error().text.find("max_connections (flag) must be in [1, 65536]"), std::string::npos)
      << conns.error().text;
  auto timeout = load({"--frame-timeout-ms", "5"});
  ASSERT_FALSE(timeout);
  EXPECT_NE(timeout.error().text.find("frame_timeout_ms"), std::string::npos);
  auto level = load({"--log-level", "chatty"});
  ASSERT_FALSE(level);
  EXPECT_NE(level.error().text.find("--log-level"), std::string::npos);
}

TEST(Config, ASocketPathTooLongForSockaddrIsRefused) {
  auto c = load({"--socket", "/" + std::string(120, 's')});
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().text.find("107 bytes"), std::string::npos);
}

TEST(Config, HelpAndVersionExitZeroAndUnknownFlagsAreUsageErrors) {
  auto help = load({"--help"});
  ASSERT_FALSE(help);
  EXPECT_EQ(help.error().code, 0);
  EXPECT_NE(help.error().text.find("Precedence: flags > environment > config file > defaults"), std::string::npos);
  EXPECT_NE(help.error().text.find("NSA_TUNE_ADMIN_GROUP"), std::string::npos);
  auto version = load({"--version"});
  ASSERT_FALSE(version);
  EXPECT_EQ(version.error().code, 0);
  EXPECT_NE(version.error().text.find(kVersion), std::string::npos);
  auto unknown = load({"--frobnicate"});
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().code, daemon_exit::usage);
  EXPECT_NE(unknown.error().text.find("--help"), std::string::npos);
}

}  // namespace
}  // namespace nsa::service
