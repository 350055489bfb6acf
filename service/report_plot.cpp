// The report as SVG charts: see report_plot.hpp for what is drawn and why.
//
// Geometry of one chart (all numbers in SVG user units):
//
//   +--------------------------------------------------------------+
//   | group title                                                   |   kTitleH
//   |      +-----------------------------------+   legend           |
//   |  2x  |            o                      |   -- sm_90 H100     |
//   |      |  ------o----------@               |   -- sm_80 A100     |
//   | 1.2x |- - - - - - - - - - - - - - - - - -|   (stale dashed)    |
//   |  1x  |-----------------------------------|   @ sparse o sdpa   |
//   |      +-----------------------------------+                     |
//   |         512        1024        2048                           |
//   |            selected length n x block                          |   kAxisH
//   +--------------------------------------------------------------+
//
// Both axes are logarithmic: selected lengths are powers of two in practice, and speedups are
// ratios, so 0.5x and 2x sit symmetrically around parity.

#include "nsa/service/report_plot.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "nsa/api/problem.hpp"

namespace nsa::service {
namespace {

using nlohmann::json;

constexpr double kWidth = 900;
constexpr double kPlotLeft = 80, kPlotWidth = 520;
constexpr double kLegendLeft = kPlotLeft + kPlotWidth + 30;
constexpr double kTitleH = 40, kPlotHeight = 260, kAxisH = 60, kChartGap = 20;
constexpr double kChartHeight = kTitleH + kPlotHeight + kAxisH;
constexpr double kHeaderH = 70;

// Tableau 10: distinguishable, and readable on white.
constexpr const char* kPalette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};

std::string num(double v, const char* fmt = "%.1f") {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string xml(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        // Control characters are not allowed in XML 1.0 text.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n') out += ' ';
        else out += c;
    }
  }
  return out;
}

std::string text_of(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

/// A family group: the family key without n, "bf16.dqk128.dv128.h16.blk64.decode".
struct GroupKey {
  api::DType dtype;
  int d_qk, d_v, h, block;
  api::Phase phase;
  auto tie() const { return std::tuple(static_cast<int>(phase), static_cast<int>(dtype), d_qk, d_v, h, block); }
  bool operator<(const GroupKey& o) const { return tie() < o.tie(); }
  std::string label() const {
    return std::string(api::to_string(dtype)) + "  D_qk=" + std::to_string(d_qk) + "  D_v=" + std::to_string(d_v) +
           "  h=" + std::to_string(h) + "  block=" + std::to_string(block) + "  " + std::string(api::to_string(phase));
  }
};

struct Marker {
  double x = 0, y = 0;  // selected length, speedup
  int n = 0;
  bool sparse = false;
  std::string family, point;
};

struct Series {
  std::string arch, gpu;
  bool stale = false, experimental = false;
  std::vector<Marker> markers;
  std::string label() const {
    std::string l = arch + "  " + (gpu.empty() ? std::string("unknown GPU") : gpu);
    if (stale) l += " (stale)";
    if (experimental) l += " (experimental)";
    return l;
  }
};

struct SeriesKey {
  std::string arch;
  long long device_class;
  bool stale, experimental;
  bool operator<(const SeriesKey& o) const {
    return std::tie(arch, device_class, stale, experimental) < std::tie(o.arch, o.device_class, o.stale, o.experimental);
  }
};

/// Log axis from `lo` to `hi` onto [a, b] (b < a for the y axis, which grows upwards).
struct LogAxis {
  double lo, hi, a, b;
  double operator()(double v) const { return a + (std::log(v) - std::log(lo)) / (std::log(hi) - std::log(lo)) * (b - a); }
};

std::vector<double> speedup_ticks(double lo, double hi) {
  std::vector<double> ticks;
  for (double t = 1.0 / 64; t <= 256; t *= 2)
    if (t >= lo && t <= hi) ticks.push_back(t);
  if (ticks.size() < 3)  // a narrow range: the 1.5x steps in between too
    for (double t = 0.75 / 64; t <= 256; t *= 2)
      if (t >= lo && t <= hi) ticks.push_back(t);
  std::sort(ticks.begin(), ticks.end());
  return ticks;
}

std::string speedup_label(double v) {
  if (v >= 10 || std::abs(v - std::round(v)) < 1e-9) return num(v, "%.0fx");
  if (v >= 1) return num(v, "%.1fx");
  return num(v, "%.3gx");
}

}  // namespace

Plot plot_report_svg(const json& report, const PlotOptions& options) {
  if (!report.is_object() || !report.contains("archs") || !report["archs"].is_array())
    throw std::invalid_argument("not a report model: expected an object with an \"archs\" array");

  // Gather: group -> series -> markers.
  std::map<GroupKey, std::map<SeriesKey, Series>> groups;
  for (const auto& arch : report["archs"]) {
    if (!arch.is_object()) continue;
    const std::string arch_name = text_of(arch, "arch");
    const json classes = arch.value("device_classes", json::array());
    for (const auto& fam : arch.value("families", json::array())) {
      if (!fam.is_object()) continue;
      const std::string family_key = text_of(fam, "family");
      auto family = api::Family::parse(family_key);
      if (!family) continue;
      const GroupKey gk{family->dtype, family->d_qk, family->d_v, family->h, family->block, family->phase};
      const long long cls = fam.value("device_class", json()).is_number_integer() ? fam["device_class"].get<long long>() : -1;
      const bool stale = fam.value("stale", json(false)).is_boolean() && fam["stale"].get<bool>();
      const bool experimental = fam.value("experimental", json(false)).is_boolean() && fam["experimental"].get<bool>();
      Series& s = groups[gk][SeriesKey{arch_name, cls, stale, experimental}];
      s.arch = arch_name;
      s.stale = stale;
      s.experimental = experimental;
      if (classes.is_array() && cls >= 0 && static_cast<std::size_t>(cls) < classes.size() && classes[cls].is_object())
        s.gpu = text_of(classes[cls], "gpu_name");
      for (const auto& p : fam.value("points", json::array())) {
        if (!p.is_object()) continue;
        const json speedup = p.value("speedup", json());
        if (!speedup.is_number()) continue;
        const double y = speedup.get<double>();
        if (!(y > 0) || !std::isfinite(y)) continue;
        Marker m;
        m.n = family->n;
        m.x = static_cast<double>(family->n) * family->block;
        m.y = y;
        m.sparse = text_of(p, "backend") == "sparse";
        m.family = family_key;
        m.point = text_of(p, "point");
        s.markers.push_back(std::move(m));
      }
    }
  }
  // Series without a single drawable point are left out, and so are groups left empty.
  for (auto g = groups.begin(); g != groups.end();) {
    for (auto s = g->second.begin(); s != g->second.end();)
      s = s->second.markers.empty() ? g->second.erase(s) : std::next(s);
    g = g->second.empty() ? groups.erase(g) : std::next(g);
  }

  Plot plot;
  const std::size_t charts = groups.size();
  const double height = kHeaderH + std::max<std::size_t>(charts, 1) * (kChartHeight + kChartGap);
  std::string o;
  o += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  o += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(kWidth, "%.0f") + "\" height=\"" +
       num(height, "%.0f") + "\" viewBox=\"0 0 " + num(kWidth, "%.0f") + " " + num(height, "%.0f") +
       "\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n";
  o += "<title>" + xml(options.title) + "</title>\n";
  o += "<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o += "<text x=\"20\" y=\"28\" font-size=\"18\" font-weight=\"bold\">" + xml(options.title) + "</text>\n";
  std::string sub = options.subtitle;
  if (!sub.empty()) sub += "  |  ";
  sub += "line: geometric mean over the measured points; filled marker: sparse chosen, hollow: SDPA kept";
  o += "<text x=\"20\" y=\"50\" font-size=\"11\" fill=\"#555\">" + xml(sub) + "</text>\n";
  if (charts == 0) {
    o += "<text x=\"20\" y=\"" + num(kHeaderH + 40) +
         "\" font-size=\"14\">no verdicts with a measured speedup yet: nothing to plot (run the tuner, then "
         "nsa-tunectl report)</text>\n";
  }

  double top = kHeaderH;
  for (const auto& [gk, series_map] : groups) {
    ++plot.groups;
    // Domains from every marker of the chart, with parity and the margin always in view.
    double xmin = 1e300, xmax = 0, ymin = std::min(1.0, options.margin), ymax = std::max(1.0, options.margin);
    std::set<double> xs;
    for (const auto& [sk, s] : series_map)
      for (const auto& m : s.markers) {
        xmin = std::min(xmin, m.x);
        xmax = std::max(xmax, m.x);
        ymin = std::min(ymin, m.y);
        ymax = std::max(ymax, m.y);
        xs.insert(m.x);
      }
    const LogAxis X{xmin / 1.6, xmax * 1.6, kPlotLeft, kPlotLeft + kPlotWidth};
    const double plot_top = top + kTitleH, plot_bottom = plot_top + kPlotHeight;
    const LogAxis Y{ymin / 1.25, ymax * 1.25, plot_bottom, plot_top};

    o += "<g class=\"chart\" data-group=\"" + xml(gk.label()) + "\">\n";
    o += "<text x=\"" + num(kPlotLeft) + "\" y=\"" + num(top + 25) + "\" font-size=\"14\" font-weight=\"bold\">" +
         xml(gk.label()) + "</text>\n";
    o += "<rect x=\"" + num(kPlotLeft) + "\" y=\"" + num(plot_top) + "\" width=\"" + num(kPlotWidth) + "\" height=\"" +
         num(kPlotHeight) + "\" fill=\"#fafafa\" stroke=\"#999\"/>\n";
    // y grid and labels
    for (double t : speedup_ticks(Y.lo, Y.hi)) {
      const double y = Y(t);
      o += "<line x1=\"" + num(kPlotLeft) + "\" y1=\"" + num(y) + "\" x2=\"" + num(kPlotLeft + kPlotWidth) + "\" y2=\"" +
           num(y) + "\" stroke=\"#e4e4e4\"/>\n";
      o += "<text x=\"" + num(kPlotLeft - 8) + "\" y=\"" + num(y + 4) + "\" text-anchor=\"end\">" + speedup_label(t) +
           "</text>\n";
    }
    // x grid and labels: one per measured selected length
    for (double v : xs) {
      const double x = X(v);
      o += "<line x1=\"" + num(x) + "\" y1=\"" + num(plot_top) + "\" x2=\"" + num(x) + "\" y2=\"" + num(plot_bottom) +
           "\" stroke=\"#e4e4e4\"/>\n";
      o += "<text x=\"" + num(x) + "\" y=\"" + num(plot_bottom + 18) + "\" text-anchor=\"middle\">" +
           num(v, "%.0f") + "</text>\n";
    }
    // parity and margin
    o += "<line class=\"parity\" x1=\"" + num(kPlotLeft) + "\" y1=\"" + num(Y(1.0)) + "\" x2=\"" +
         num(kPlotLeft + kPlotWidth) + "\" y2=\"" + num(Y(1.0)) + "\" stroke=\"#333\" stroke-width=\"1.2\"/>\n";
    o += "<text x=\"" + num(kPlotLeft + kPlotWidth - 4) + "\" y=\"" + num(Y(1.0) + 14) +
         "\" text-anchor=\"end\" font-size=\"10\" fill=\"#333\">parity: SDPA as fast</text>\n";
    o += "<line class=\"margin\" x1=\"" + num(kPlotLeft) + "\" y1=\"" + num(Y(options.margin)) + "\" x2=\"" +
         num(kPlotLeft + kPlotWidth) + "\" y2=\"" + num(Y(options.margin)) +
         "\" stroke=\"#c0392b\" stroke-width=\"1.2\" stroke-dasharray=\"6 4\"/>\n";
    o += "<text x=\"" + num(kPlotLeft + 4) + "\" y=\"" + num(Y(options.margin) - 5) +
         "\" font-size=\"10\" fill=\"#c0392b\">margin " + num(options.margin, "%.2gx") +
         ": sparse is chosen above this line</text>\n";
    // axis titles
    o += "<text x=\"" + num(kPlotLeft + kPlotWidth / 2) + "\" y=\"" + num(plot_bottom + 42) +
         "\" text-anchor=\"middle\">selected length n \xc3\x97 block (keys per query row, log scale)</text>\n";
    o += "<text transform=\"translate(" + num(kPlotLeft - 55) + " " + num(plot_top + kPlotHeight / 2) +
         ") rotate(-90)\" text-anchor=\"middle\">speedup over packed SDPA (log)</text>\n";

    // series: mean line, then markers, then the legend entry
    std::size_t index = 0;
    double legend_y = plot_top + 10;
    for (const auto& [sk, s] : series_map) {
      const char* colour = kPalette[index % (sizeof kPalette / sizeof kPalette[0])];
      const std::string dash = s.stale || s.experimental ? " stroke-dasharray=\"5 3\"" : "";
      std::map<double, std::pair<double, int>> by_x;  // x -> (sum of log speedups, count)
      for (const auto& m : s.markers) {
        by_x[m.x].first += std::log(m.y);
        ++by_x[m.x].second;
      }
      std::string points;
      for (const auto& [x, acc] : by_x) {
        if (!points.empty()) points += ' ';
        points += num(X(x)) + "," + num(Y(std::exp(acc.first / acc.second)));
      }
      o += "<g class=\"series\" data-arch=\"" + xml(s.arch) + "\" data-gpu=\"" + xml(s.gpu) + "\" data-stale=\"" +
           (s.stale ? "true" : "false") + "\" data-experimental=\"" + (s.experimental ? "true" : "false") + "\">\n";
      if (by_x.size() > 1)
        o += "<polyline points=\"" + points + "\" fill=\"none\" stroke=\"" + colour + "\" stroke-width=\"2\"" + dash +
             "/>\n";
      for (const auto& m : s.markers) {
        ++plot.points;
        o += "<circle class=\"point\" cx=\"" + num(X(m.x)) + "\" cy=\"" + num(Y(m.y)) + "\" r=\"4\" fill=\"" +
             (m.sparse ? std::string(colour) : std::string("white")) + "\" stroke=\"" + colour +
             "\" stroke-width=\"1.5\" data-arch=\"" + xml(s.arch) + "\" data-family=\"" + xml(m.family) +
             "\" data-point=\"" + xml(m.point) + "\" data-n=\"" + std::to_string(m.n) + "\" data-selected-length=\"" +
             num(m.x, "%.0f") + "\" data-speedup=\"" + num(m.y, "%.6g") + "\" data-backend=\"" +
             (m.sparse ? "sparse" : "sdpa") + "\"><title>" +
             xml(s.arch + " " + m.family + " at " + m.point + ": " + num(m.y, "%.2fx") +
                 (m.sparse ? " (sparse chosen)" : " (SDPA kept)")) +
             "</title></circle>\n";
      }
      o += "</g>\n";
      // legend
      o += "<line x1=\"" + num(kLegendLeft) + "\" y1=\"" + num(legend_y) + "\" x2=\"" + num(kLegendLeft + 24) +
           "\" y2=\"" + num(legend_y) + "\" stroke=\"" + colour + "\" stroke-width=\"2\"" + dash + "/>\n";
      o += "<circle cx=\"" + num(kLegendLeft + 12) + "\" cy=\"" + num(legend_y) + "\" r=\"3.5\" fill=\"" + colour +
           "\"/>\n";
      o += "<text x=\"" + num(kLegendLeft + 32) + "\" y=\"" + num(legend_y + 4) + "\" font-size=\"11\">" +
           xml(s.label()) + "</text>\n";
      legend_y += 18;
      ++index;
      ++plot.series;
    }
    legend_y += 8;
    o += "<circle cx=\"" + num(kLegendLeft + 12) + "\" cy=\"" + num(legend_y) +
         "\" r=\"4\" fill=\"#555\" stroke=\"#555\"/>\n";
    o += "<text x=\"" + num(kLegendLeft + 32) + "\" y=\"" + num(legend_y + 4) +
         "\" font-size=\"11\">sparse chosen at this point</text>\n";
    legend_y += 18;
    o += "<circle cx=\"" + num(kLegendLeft + 12) + "\" cy=\"" + num(legend_y) +
         "\" r=\"4\" fill=\"white\" stroke=\"#555\" stroke-width=\"1.5\"/>\n";
    o += "<text x=\"" + num(kLegendLeft + 32) + "\" y=\"" + num(legend_y + 4) +
         "\" font-size=\"11\">SDPA kept (slower, or failed the gate)</text>\n";
    o += "</g>\n";
    top += kChartHeight + kChartGap;
  }
  o += "</svg>\n";
  plot.svg = std::move(o);
  return plot;
}

}  // namespace nsa::service
