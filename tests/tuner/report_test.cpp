// The report on real stores: an empty store (the SM 8.9 pin and its reason), a store filled
// from recorded measurement tables through the verdict policy, and each format's substance.

#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "../cache/store_test_support.hpp"
#include "nsa/tuner/report.hpp"
#include "nsa/tuner/verdict_policy.hpp"

namespace nsa::tuner {
namespace {

using cache::Measurement;
using cache::MeasurementStatus;
using nlohmann::json;

const std::string kDecode16 = "bf16.dqk128.dv128.h16.blk64.n16.decode";
const std::string kDecode32 = "bf16.dqk128.dv128.h16.blk64.n32.decode";
const std::string kPrefill = "bf16.dqk192.dv128.h16.blk64.n16.prefill";

/// One recorded point: baseline and candidates as (variant, us, rel_l2).
struct RecordedPoint {
  std::string family;
  std::string point;
  double baseline_us;
  double baseline_rel_l2;
  std::vector<std::tuple<std::string, double, double>> candidates;
};

// A recorded table shaped like an H100 run (synthetic numbers): decode n=16 wins at large
// batch only, n=32 wins everywhere, prefill has a fast variant rejected by the gate.
const std::vector<RecordedPoint> kH100Table{
    {kDecode16, "b1.hkv4.tq1.tkv8192", 21.0, 2.1e-3, {{"qo.w4", 19.5, 2.2e-3}, {"sk.s2", 20.5, 2.0e-3}}},
    {kDecode16, "b64.hkv4.tq1.tkv32768", 410.0, 2.0e-3, {{"qo.w4", 300.0, 2.3e-3}, {"sk.s2", 260.0, 2.4e-3}}},
    {kDecode32, "b1.hkv4.tq1.tkv8192", 40.0, 2.0e-3, {{"qo.w4", 30.0, 2.1e-3}}},
    {kDecode32, "b64.hkv4.tq1.tkv32768", 800.0, 2.0e-3, {{"qo.w4", 500.0, 2.2e-3}}},
    {kPrefill, "b1.hkv4.tq4096.tkv4096", 900.0, 1.8e-3, {{"ps.fast_wrong", 300.0, 1.8e-2}, {"ps.ok", 850.0, 1.9e-3}}},
};

class Report : public cache::testing::StoreTest {
 protected:
  cache::DeviceClass h100 = cache::testing::h100_class();

  /// Records `table` as one tuning run of `cls` and stores the policy's verdicts.
  void tune(cache::VerdictStore& store, const cache::DeviceClass& cls, const std::vector<RecordedPoint>& table,
            bool experimental = false) {
    cache::TuningRun run;
    run.device_class = cls;
    run.trigger = "startup";
    run.experimental = experimental;
    auto run_id = store.begin_run(run);
    ASSERT_TRUE(run_id) << run_id.error().message;
    for (const auto& p : table) {
      std::vector<Measurement> rows;
      Measurement base;
      base.run_id = *run_id;
      base.family = p.family;
      base.point = p.point;
      base.backend = "sdpa";
      base.median_us = p.baseline_us;
      base.rel_l2 = p.baseline_rel_l2;
      rows.push_back(base);
      for (const auto& [variant, us, err] : p.candidates) {
        Measurement m = base;
        m.backend = "sparse";
        m.variant = variant;
        m.median_us = us;
        m.rel_l2 = err;
        rows.push_back(m);
      }
      for (const auto& m : rows) ASSERT_TRUE(store.add_measurement(m));
      auto decision = decide_point(rows, cls, experimental);
      ASSERT_TRUE(decision) << decision.error().message;
      ASSERT_TRUE(store.put_verdict(decision->verdict));
    }
    ASSERT_TRUE(store.finish_run(*run_id, cache::RunStatus::finished, ""));
  }

  static const json& arch(const json& report, const std::string& name) {
    for (const auto& a : report["archs"])
      if (a["arch"] == name) return a;
    throw std::runtime_error("no arch " + name + " in the report");
  }

  static const json& family(const json& a, const std::string& key, bool stale = false) {
    for (const auto& f : a["families"])
      if (f["family"] == key && f["stale"] == stale && f["experimental"] == false) return f;
    throw std::runtime_error("no family " + key);
  }
};

TEST_F(Report, EmptyStoreShowsTheSm89PinAndItsReasonInEveryFormat) {
  auto store = open_store();
  json model = build_report(store, {});
  ASSERT_EQ(model["archs"].size(), 1u);
  const json& a = model["archs"][0];
  EXPECT_EQ(a["arch"], "sm_89");
  ASSERT_TRUE(a["pin"].is_object());
  EXPECT_EQ(a["pin"]["backend"], "sdpa");
  EXPECT_EQ(a["pin"]["seeded"], true);
  EXPECT_EQ(a["pin"]["reason"], cache::kSm89PinReason);
  EXPECT_TRUE(a["families"].empty());
  EXPECT_TRUE(a["device_classes"].empty());
  EXPECT_EQ(model["host_classes_known"], false);
  EXPECT_EQ(model["store"]["path"], db_path.string());
  EXPECT_EQ(model["store"]["schema_version"], cache::VerdictStore::current_schema_version());
  EXPECT_EQ(model["store"]["epoch"], store.epoch());
  EXPECT_TRUE(model["demand_without_verdict"].empty());

  std::string text = render_report(model, ReportFormat::text);
  EXPECT_NE(text.find("== sm_89 =="), std::string::npos) << text;
  EXPECT_NE(text.find("PIN: pinned to sdpa (seeded policy"), std::string::npos) << text;
  EXPECT_NE(text.find("RTX 4090"), std::string::npos);
  EXPECT_NE(text.find("4-25x slower"), std::string::npos);
  EXPECT_NE(text.find("no verdicts (the pin decides every answer)"), std::string::npos);

  std::string md = render_report(model, ReportFormat::markdown);
  EXPECT_NE(md.find("## sm_89"), std::string::npos);
  EXPECT_NE(md.find("> Sparse selection is permanently non-viable on SM 8.9"), std::string::npos);

  std::string csv = render_report(model, ReportFormat::csv);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1) << "header only: no points";
}

TEST_F(Report, ModelCarriesEveryDocumentedFieldFromRecordedTables) {
  auto store = open_store();
  tune(store, h100, kH100Table);
  json model = build_report(store, {h100});
  EXPECT_EQ(model["host_classes_known"], true);
  const json& a = arch(model, "sm_90");
  EXPECT_TRUE(a["pin"].is_null());
  ASSERT_EQ(a["device_classes"].size(), 1u);
  EXPECT_EQ(a["device_classes"][0]["gpu_name"], h100.gpu_name);
  EXPECT_EQ(a["device_classes"][0]["driver_version"], h100.driver_version);
  EXPECT_EQ(a["device_classes"][0]["nvrtc_version"], h100.nvrtc_version);
  EXPECT_EQ(a["device_classes"][0]["source_hash"], h100.source_hash);
  EXPECT_EQ(a["device_classes"][0]["current"], true);
  ASSERT_EQ(a["families"].size(), 3u);

  const json& d16 = family(a, kDecode16);
  EXPECT_EQ(d16["device_class"], 0);
  EXPECT_EQ(d16["viable"], true);
  ASSERT_EQ(d16["points"].size(), 2u);
  const json& small = d16["points"][0];
  EXPECT_EQ(small["point"], "b1.hkv4.tq1.tkv8192") << "points in numeric order";
  EXPECT_EQ(small["backend"], "sdpa") << "1.08x is below the margin";
  const json& large = d16["points"][1];
  EXPECT_EQ(large["backend"], "sparse");
  EXPECT_EQ(large["variant"], "sk.s2");
  EXPECT_DOUBLE_EQ(large["baseline_us"].get<double>(), 410.0);
  EXPECT_DOUBLE_EQ(large["best_us"].get<double>(), 260.0);
  EXPECT_DOUBLE_EQ(large["speedup"].get<double>(), 410.0 / 260.0);
  EXPECT_DOUBLE_EQ(large["rel_l2"].get<double>(), 2.4e-3);
  EXPECT_DOUBLE_EQ(large["baseline_rel_l2"].get<double>(), 2.0e-3);
  EXPECT_GT(large["run_id"].get<std::int64_t>(), 0);
  EXPECT_EQ(large["stale"], false);
  EXPECT_EQ(large["experimental"], false);
  EXPECT_FALSE(large["reason"].get<std::string>().empty());

  // n=16 loses at one point, n=32 wins at all: threshold 32 * 64 for both families.
  EXPECT_EQ(d16["min_selected_length"], 2048);
  EXPECT_EQ(family(a, kDecode32)["min_selected_length"], 2048);

  const json& prefill = family(a, kPrefill);
  EXPECT_EQ(prefill["viable"], false);
  EXPECT_TRUE(prefill["min_selected_length"].is_null());
  EXPECT_EQ(prefill["points"][0]["variant"], "ps.ok") << "the gate-passing loser is named";
  EXPECT_NE(prefill["points"][0]["reason"].get<std::string>().find("below the 1.20x margin"), std::string::npos);

  // The text answers "why not sparse here?" under each table.
  std::string text = render_report(model, ReportFormat::text);
  EXPECT_NE(text.find("  why sdpa at b1.hkv4.tq1.tkv8192: best sparse candidate is 1.08x, below the 1.20x margin"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("why sdpa at b64.hkv4.tq1.tkv32768"), std::string::npos) << "sparse points need no excuse";
}

TEST_F(Report, VerdictsOfAnotherClassAreStaleAndKeptApart) {
  auto store = open_store();
  cache::DeviceClass old = h100;
  old.driver_version = 12080;
  tune(store, old, {kH100Table[0], kH100Table[1]});
  tune(store, h100, {kH100Table[0]});

  json model = build_report(store, {h100});
  const json& a = arch(model, "sm_90");
  ASSERT_EQ(a["device_classes"].size(), 2u);
  EXPECT_EQ(a["device_classes"][0]["driver_version"], 13000) << "current classes first";
  EXPECT_EQ(a["device_classes"][0]["current"], true);
  EXPECT_EQ(a["device_classes"][1]["driver_version"], 12080);
  EXPECT_EQ(a["device_classes"][1]["current"], false);

  const json& fresh = family(a, kDecode16, false);
  const json& stale = family(a, kDecode16, true);
  EXPECT_EQ(fresh["device_class"], 0);
  EXPECT_EQ(fresh["points"].size(), 1u);
  EXPECT_EQ(fresh["viable"], false);
  EXPECT_EQ(stale["device_class"], 1);
  EXPECT_EQ(stale["points"].size(), 2u);
  EXPECT_EQ(stale["points"][0]["stale"], true);
  EXPECT_EQ(stale["viable"], true);

  std::string text = render_report(model, ReportFormat::text);
  EXPECT_NE(text.find("class #1  STALE"), std::string::npos) << text;

  // Without current classes nothing is known: nothing stale, `current` null.
  json unknown = build_report(store, {});
  for (const auto& f : arch(unknown, "sm_90")["families"]) EXPECT_EQ(f["stale"], false);
  EXPECT_TRUE(arch(unknown, "sm_90")["device_classes"][0]["current"].is_null());
  EXPECT_NE(render_report(unknown, ReportFormat::text).find("host GPUs not probed"), std::string::npos);
}

TEST_F(Report, ExperimentsOnThePinnedArchAreShownApartAndFlagged) {
  auto store = open_store();
  cache::DeviceClass ada = cache::testing::ada_class();
  tune(store, ada, {kH100Table[3]}, /*experimental=*/true);
  json model = build_report(store, {ada});
  const json& a = arch(model, "sm_89");
  ASSERT_TRUE(a["pin"].is_object());
  ASSERT_EQ(a["families"].size(), 1u);
  EXPECT_EQ(a["families"][0]["experimental"], true);
  EXPECT_EQ(a["families"][0]["points"][0]["experimental"], true);
  std::string text = render_report(model, ReportFormat::text);
  EXPECT_LT(text.find("PIN:"), text.find("EXPERIMENTAL")) << "the pin comes first";
}

TEST_F(Report, DemandWithoutVerdictSkipsPinnedArchsAndServedFamilies) {
  auto store = open_store();
  tune(store, h100, {kH100Table[0]});
  ASSERT_TRUE(store.record_demand({{"sm_90", kDecode16, "b2.hkv4.tq1.tkv4096", 9, 100, 200},
                                   {"sm_90", kPrefill, "b1.hkv8.tq2048.tkv2048", 4, 100, 300},
                                   {"sm_89", kPrefill, "b1.hkv8.tq2048.tkv2048", 50, 100, 300},
                                   {"sm_80", kDecode32, "b1.hkv4.tq1.tkv8192", 7, 100, 150}}));
  json model = build_report(store, {h100});
  const json& unserved = model["demand_without_verdict"];
  ASSERT_EQ(unserved.size(), 2u);
  EXPECT_EQ(unserved[0]["arch"], "sm_80");
  EXPECT_EQ(unserved[0]["count"], 7);
  EXPECT_EQ(unserved[1]["arch"], "sm_90");
  EXPECT_EQ(unserved[1]["family"], kPrefill);

  const json& sm90 = arch(model, "sm_90");
  ASSERT_EQ(sm90["demand"].size(), 2u);
  EXPECT_EQ(sm90["demand"][0]["has_verdict"], true);
  EXPECT_EQ(sm90["demand"][1]["has_verdict"], false);
  EXPECT_EQ(arch(model, "sm_89")["demand"].size(), 1u);
  EXPECT_TRUE(arch(model, "sm_80")["pin"].is_null()) << "an arch with only demand is listed";
}

TEST_F(Report, DevicesSeenWithoutVerdictsAreListed) {
  auto store = open_store();
  cache::DeviceRecord d;
  d.uuid = "GPU-1";
  d.arch = "sm_100";
  d.name = "NVIDIA B200";
  ASSERT_TRUE(store.upsert_device(d));
  json model = build_report(store, {});
  EXPECT_TRUE(arch(model, "sm_100")["families"].empty());
  EXPECT_NE(render_report(model, ReportFormat::text).find("== sm_100 ==\npin: none\nno verdicts yet"), std::string::npos);
}

TEST_F(Report, TextTablesAreAligned) {
  auto store = open_store();
  tune(store, h100, kH100Table);
  std::string text = render_report(build_report(store, {h100}), ReportFormat::text);
  std::istringstream lines(text);
  std::string line, header;
  int checked = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("  point", 0) == 0) {
      header = line;
      continue;
    }
    if (!header.empty() && line.rfind("  b", 0) == 0) {
      // Left-aligned columns start where their header starts; right-aligned ones end where it ends.
      auto backend = header.find("backend");
      EXPECT_TRUE(line.compare(backend, 4, "sdpa") == 0 || line.compare(backend, 6, "sparse") == 0) << line;
      auto speedup_end = header.find("speedup") + std::string("speedup").size();
      EXPECT_EQ(line[speedup_end - 1], 'x') << line;
      EXPECT_EQ(line[speedup_end], ' ') << line;
      ++checked;
    } else {
      header.clear();
    }
  }
  EXPECT_EQ(checked, 5);
}

std::vector<std::string> split_csv_line(const std::string& line) {
  std::vector<std::string> cells(1);
  bool quoted = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') cells.back() += '"', ++i;
      else if (c == '"') quoted = false;
      else cells.back() += c;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      cells.emplace_back();
    } else {
      cells.back() += c;
    }
  }
  return cells;
}

TEST_F(Report, CsvHasAHeaderAndOneRowPerPointWithArchAndFamily) {
  auto store = open_store();
  tune(store, h100, kH100Table);
  std::string csv = render_report(build_report(store, {h100}), ReportFormat::csv);
  std::istringstream lines(csv);
  std::string line;
  std::getline(lines, line);
  auto header = split_csv_line(line);
  ASSERT_EQ(header[0], "arch");
  auto col = [&](const std::string& name) {
    return static_cast<std::size_t>(std::find(header.begin(), header.end(), name) - header.begin());
  };
  ASSERT_LT(col("family"), header.size());
  ASSERT_LT(col("speedup"), header.size());
  ASSERT_LT(col("reason"), header.size());
  int rows = 0;
  while (std::getline(lines, line)) {
    auto cells = split_csv_line(line);
    ASSERT_EQ(cells.size(), header.size()) << line;
    EXPECT_EQ(cells[col("arch")], "sm_90");
    EXPECT_EQ(cells[col("gpu_name")], h100.gpu_name);
    if (cells[col("family")] == kDecode16 && cells[col("point")] == "b64.hkv4.tq1.tkv32768") {
      EXPECT_EQ(cells[col("backend")], "sparse");
      EXPECT_NEAR(std::stod(cells[col("speedup")]), 410.0 / 260.0, 1e-6);
      EXPECT_EQ(cells[col("min_selected_length")], "2048");
      EXPECT_NE(cells[col("reason")].find(','), std::string::npos) << "the reason has commas and survives quoting";
    }
    ++rows;
  }
  EXPECT_EQ(rows, 5);
}

TEST_F(Report, MarkdownHasAPipeTablePerFamily) {
  auto store = open_store();
  tune(store, h100, kH100Table);
  std::string md = render_report(build_report(store, {h100}), ReportFormat::markdown);
  EXPECT_NE(md.find("# nsa-tune report"), std::string::npos);
  EXPECT_NE(md.find("## sm_90"), std::string::npos);
  EXPECT_NE(md.find("### `" + kDecode16 + "`"), std::string::npos);
  EXPECT_NE(md.find("min selected length 2048"), std::string::npos);
  EXPECT_NE(md.find("| point | backend | speedup |"), std::string::npos);
  EXPECT_NE(md.find("| --- | --- | ---: |"), std::string::npos);
  EXPECT_NE(md.find("| b64.hkv4.tq1.tkv32768 | sparse | 1.58x |"), std::string::npos) << md;
}

TEST_F(Report, JsonIsTheModelItself) {
  auto store = open_store();
  tune(store, h100, kH100Table);
  json model = build_report(store, {h100});
  std::string text = render_report(model, ReportFormat::json);
  EXPECT_EQ(json::parse(text), model);
  EXPECT_NE(text.find("\n  \"archs\""), std::string::npos) << "pretty-printed";
}

TEST(ReportRender, ToleratesMissingFieldsFromAnotherBuild) {
  json sparse_model = json::parse(R"({"archs":[{"arch":"sm_90","families":[{"points":[{}]}],
                                     "pin":{"reason":"r"}}, 7]})");
  for (auto format : {ReportFormat::text, ReportFormat::json, ReportFormat::csv, ReportFormat::markdown})
    EXPECT_NO_THROW(render_report(sparse_model, format));
  std::string text = render_report(sparse_model, ReportFormat::text);
  EXPECT_NE(text.find("== sm_90 =="), std::string::npos);
}

TEST(ReportRender, RejectsSomethingThatIsNotAReport) {
  EXPECT_THROW(render_report(json::array(), ReportFormat::text), std::invalid_argument);
  try {
    render_report(json{{"ok", true}}, ReportFormat::text);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("archs"), std::string::npos);
  }
}

TEST(ReportRender, FormatNamesParse) {
  EXPECT_EQ(parse_report_format("text"), ReportFormat::text);
  EXPECT_EQ(parse_report_format("json"), ReportFormat::json);
  EXPECT_EQ(parse_report_format("csv"), ReportFormat::csv);
  EXPECT_EQ(parse_report_format("markdown"), ReportFormat::markdown);
  EXPECT_EQ(parse_report_format("md"), ReportFormat::markdown);
  EXPECT_FALSE(parse_report_format("html"));
  EXPECT_FALSE(parse_report_format(""));
}

}  // namespace
}  // namespace nsa::tuner
