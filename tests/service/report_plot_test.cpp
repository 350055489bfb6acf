// service/report_plot.cpp: the SVG is well-formed XML (parsed by Python's xml.dom.minidom, an
// independent parser), draws one chart per family group and one marker per measured point with
// its data, and puts the markers where the axes say.

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>

#include "nsa/service/report_plot.hpp"
#include "service_test_support.hpp"

namespace nsa::service {
namespace {

using nlohmann::json;
using testing::ProcessResult;
using testing::TempDir;

json point(const std::string& key, const std::string& backend, json speedup) {
  return json{{"point", key},         {"backend", backend}, {"variant", "sel_fwd.x"}, {"baseline_us", 100.0},
              {"best_us", 50.0},      {"speedup", speedup}, {"rel_l2", 0.002},        {"baseline_rel_l2", 0.002},
              {"run_id", 1},          {"stale", false},     {"experimental", false},  {"reason", "r"},
              {"created_at", 1795608940}};
}

json family(const std::string& key, int device_class, bool stale, json points) {
  return json{{"family", key}, {"device_class", device_class}, {"stale", stale},  {"experimental", false},
              {"viable", true}, {"min_selected_length", 1024},  {"points", std::move(points)}};
}

/// Two archs, decode families at n = 8, 16, 32 (one group) plus a prefill family (a second
/// group); sm_80's class is stale; one point has no speedup (nothing measured) and one family
/// key does not parse (a report from another build): both are left out.
json sample_report() {
  json sm90{{"arch", "sm_90"},
            {"pin", nullptr},
            {"device_classes", json::array({json{{"gpu_name", "NVIDIA H100 <80GB> & co"}, {"current", true}}})},
            {"families", json::array({
                 family("bf16.dqk128.dv128.h16.blk64.n8.decode", 0, false,
                        json::array({point("b1.hkv4.tq1.tkv8192", "sdpa", 0.8), point("b64.hkv4.tq1.tkv32768", "sdpa", 1.1)})),
                 family("bf16.dqk128.dv128.h16.blk64.n16.decode", 0, false,
                        json::array({point("b1.hkv4.tq1.tkv8192", "sparse", 1.3), point("b64.hkv4.tq1.tkv32768", "sparse", 1.9),
                                     point("b8.hkv4.tq1.tkv8192", "sdpa", nullptr)})),
                 family("bf16.dqk128.dv128.h16.blk64.n32.decode", 0, false,
                        json::array({point("b1.hkv4.tq1.tkv8192", "sparse", 2.4), point("b64.hkv4.tq1.tkv32768", "sparse", 3.6)})),
                 family("bf16.dqk192.dv128.h16.blk64.n16.prefill", 0, false,
                        json::array({point("b1.hkv4.tq2048.tkv2048", "sparse", 1.5)})),
                 family("not-a-family", 0, false, json::array({point("b1.hkv4.tq1.tkv8192", "sparse", 9.0)})),
             })}};
  json sm80{{"arch", "sm_80"},
            {"pin", nullptr},
            {"device_classes", json::array({json{{"gpu_name", "NVIDIA A100"}, {"current", false}}})},
            {"families", json::array({family("bf16.dqk128.dv128.h16.blk64.n16.decode", 0, true,
                                             json::array({point("b1.hkv4.tq1.tkv8192", "sdpa", 1.05)}))})}};
  json sm89{{"arch", "sm_89"}, {"pin", json{{"backend", "sdpa"}}}, {"device_classes", json::array()}, {"families", json::array()}};
  return json{{"generated_at", "2026-11-25T12:00:00Z"},
              {"store", json{{"path", "/tmp/state.db"}}},
              {"archs", json::array({sm80, sm89, sm90})}};
}

/// Parses `svg` with Python's minidom and returns what it found, as JSON: the charts' group
/// labels, every marker's data attributes and position, and the margin/parity lines' y.
json parse_with_python(const std::string& svg) {
  TempDir dir;
  std::ofstream(dir / "plot.svg") << svg;
  const std::string script = R"PY(
import json, sys, xml.dom.minidom
doc = xml.dom.minidom.parse(sys.argv[1])
root = doc.documentElement
assert root.tagName == "svg", root.tagName
out = {"charts": [], "points": [], "lines": {}}
for g in doc.getElementsByTagName("g"):
    if g.getAttribute("class") == "chart":
        out["charts"].append(g.getAttribute("data-group"))
for c in doc.getElementsByTagName("circle"):
    if c.getAttribute("class") != "point":
        continue
    title = c.getElementsByTagName("title")
    p = {k: c.getAttribute(k) for k in
         ("data-arch", "data-family", "data-point", "data-n", "data-selected-length", "data-speedup",
          "data-backend", "cx", "cy", "fill")}
    p["title"] = title[0].firstChild.data if title else ""
    out["points"].append(p)
for l in doc.getElementsByTagName("line"):
    if l.getAttribute("class") in ("parity", "margin"):
        out["lines"].setdefault(l.getAttribute("class"), []).append(float(l.getAttribute("y1")))
out["title"] = doc.getElementsByTagName("title")[0].firstChild.data
print(json.dumps(out))
)PY";
  ProcessResult r = testing::run_process({"/usr/bin/env", "python3", "-c", script, (dir / "plot.svg").string()});
  if (r.code == 127) return json{{"skip", "python3 is not installed"}};
  EXPECT_EQ(r.code, 0) << "the SVG did not parse as XML:\n" << r.err << "\n" << svg.substr(0, 2000);
  return json::parse(r.out, nullptr, false);
}

TEST(ReportPlot, TheSvgParsesAsXmlWithAChartPerFamilyGroupAndAMarkerPerMeasuredPoint) {
  const Plot plot = plot_report_svg(sample_report());
  EXPECT_EQ(plot.groups, 2u);
  EXPECT_EQ(plot.series, 3u) << "decode: sm_80 (stale) and sm_90; prefill: sm_90";
  EXPECT_EQ(plot.points, 8u) << "the point without a speedup and the unparsable family are left out";
  const json parsed = parse_with_python(plot.svg);
  if (parsed.contains("skip")) GTEST_SKIP() << parsed["skip"];
  ASSERT_FALSE(parsed.is_discarded());
  ASSERT_EQ(parsed["charts"].size(), 2u) << parsed.dump(2);
  EXPECT_EQ(parsed["charts"][0], "bf16  D_qk=128  D_v=128  h=16  block=64  decode") << "decode first";
  EXPECT_EQ(parsed["charts"][1], "bf16  D_qk=192  D_v=128  h=16  block=64  prefill");
  ASSERT_EQ(parsed["points"].size(), 8u);

  std::map<std::string, json> by_key;  // "arch family point" -> marker
  for (const auto& p : parsed["points"])
    by_key[p["data-arch"].get<std::string>() + " " + p["data-family"].get<std::string>() + " " +
           p["data-point"].get<std::string>()] = p;
  const json& best = by_key.at("sm_90 bf16.dqk128.dv128.h16.blk64.n32.decode b64.hkv4.tq1.tkv32768");
  EXPECT_EQ(best["data-speedup"], "3.6");
  EXPECT_EQ(best["data-n"], "32");
  EXPECT_EQ(best["data-selected-length"], "2048");
  EXPECT_EQ(best["data-backend"], "sparse");
  EXPECT_NE(best["fill"], "white") << "sparse markers are filled";
  EXPECT_NE(best["title"].get<std::string>().find("3.60x (sparse chosen)"), std::string::npos) << best["title"];
  const json& lost = by_key.at("sm_90 bf16.dqk128.dv128.h16.blk64.n8.decode b1.hkv4.tq1.tkv8192");
  EXPECT_EQ(lost["fill"], "white") << "SDPA-kept markers are hollow";
  EXPECT_EQ(lost["data-selected-length"], "512");
  EXPECT_TRUE(by_key.count("sm_80 bf16.dqk128.dv128.h16.blk64.n16.decode b1.hkv4.tq1.tkv8192"));

  // Positions follow the axes: more speedup is higher up (smaller y), more selected length is
  // further right; the margin line lies between parity and the best point.
  auto cx = [](const json& p) { return std::stod(p["cx"].get<std::string>()); };
  auto cy = [](const json& p) { return std::stod(p["cy"].get<std::string>()); };
  EXPECT_LT(cy(best), cy(lost));
  EXPECT_GT(cx(best), cx(lost));
  const json& mid = by_key.at("sm_90 bf16.dqk128.dv128.h16.blk64.n16.decode b1.hkv4.tq1.tkv8192");
  EXPECT_GT(cx(mid), cx(lost));
  EXPECT_LT(cx(mid), cx(best));
  // Log scale: 0.8 -> 1.3 -> 2.4 -> 3.6 ... equal ratios are equal distances.
  const json& a = by_key.at("sm_90 bf16.dqk128.dv128.h16.blk64.n16.decode b64.hkv4.tq1.tkv32768");  // 1.9
  const json& b = by_key.at("sm_90 bf16.dqk128.dv128.h16.blk64.n32.decode b1.hkv4.tq1.tkv8192");    // 2.4
  const double per_log = (cy(lost) - cy(best)) / (std::log(3.6) - std::log(0.8));
  EXPECT_NEAR(cy(a) - cy(b), per_log * (std::log(2.4) - std::log(1.9)), 0.2);
  ASSERT_EQ(parsed["lines"]["parity"].size(), 2u) << "parity and margin in every chart";
  ASSERT_EQ(parsed["lines"]["margin"].size(), 2u);
  const double parity = parsed["lines"]["parity"][0].get<double>(), margin = parsed["lines"]["margin"][0].get<double>();
  EXPECT_LT(margin, parity);
  EXPECT_GT(margin, cy(best));
  EXPECT_NEAR(parity - margin, per_log * std::log(1.2), 0.2) << "the default margin is 1.2x";

  // Text is escaped: the GPU name with <, > and & survived the parse as itself.
  EXPECT_NE(plot.svg.find("NVIDIA H100 &lt;80GB&gt; &amp; co"), std::string::npos);
  EXPECT_NE(plot.svg.find("NVIDIA A100 (stale)"), std::string::npos) << "stale classes are labelled";
  EXPECT_NE(plot.svg.find("selected length n"), std::string::npos) << "x axis title";
  EXPECT_NE(plot.svg.find("speedup over packed SDPA"), std::string::npos) << "y axis title";
}

TEST(ReportPlot, TheMarginLineFollowsTheConfiguredMargin) {
  PlotOptions o;
  o.margin = 1.5;
  const Plot plot = plot_report_svg(sample_report(), o);
  EXPECT_NE(plot.svg.find("margin 1.5x"), std::string::npos);
  const json parsed = parse_with_python(plot.svg);
  if (parsed.contains("skip")) GTEST_SKIP() << parsed["skip"];
  const double parity = parsed["lines"]["parity"][0].get<double>(), margin = parsed["lines"]["margin"][0].get<double>();
  EXPECT_LT(margin, parity);
}

TEST(ReportPlot, AReportWithoutVerdictsIsAValidSvgThatSaysSo) {
  json empty{{"archs", json::array({json{{"arch", "sm_89"}, {"pin", json{{"backend", "sdpa"}}}}})}};
  const Plot plot = plot_report_svg(empty);
  EXPECT_EQ(plot.groups, 0u);
  EXPECT_EQ(plot.points, 0u);
  EXPECT_NE(plot.svg.find("nothing to plot"), std::string::npos);
  const json parsed = parse_with_python(plot.svg);
  if (parsed.contains("skip")) GTEST_SKIP() << parsed["skip"];
  EXPECT_TRUE(parsed["charts"].empty());
}

TEST(ReportPlot, SomethingThatIsNotAReportIsRefused) {
  EXPECT_THROW(plot_report_svg(json::array()), std::invalid_argument);
  EXPECT_THROW(plot_report_svg(json{{"archs", 3}}), std::invalid_argument);
  // Mistyped fields inside a report are skipped, never thrown.
  json odd{{"archs", json::array({json{{"arch", 7}, {"families", json::array({json{{"family", 3}}, 5})}}, "x"})}};
  EXPECT_NO_THROW(plot_report_svg(odd));
}

}  // namespace
}  // namespace nsa::service
