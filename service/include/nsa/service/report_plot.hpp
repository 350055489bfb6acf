#pragma once
// `nsa-tunectl report --plot FILE.svg`: the report drawn as one chart per family group, so an
// operator sees at a glance from which selected length sparse selection pays off on which GPU.
//
// A family group is the families that differ only in n (same dtype, D_qk, D_v, h, block and
// phase): along n the selected length n * block grows, and that is the x axis (log2). The y axis
// is the speedup over packed SDPA (log scale), with parity (1.0x) and the decision margin drawn.
// Each device class (arch + GPU, stale and experimental ones dashed) is one coloured line through
// the geometric mean of its points' speedups at each selected length; every measured point is a
// marker of its own, filled where the verdict chose sparse and hollow where SDPA stayed. Each
// marker carries its data as attributes (data-arch, data-family, data-point, data-speedup, ...)
// and a <title> tooltip, so a test or a script can read the chart back.
//
// The SVG is written by hand: plain elements, no scripts, no external references, so it renders
// the same in a browser, an image viewer or an issue comment.

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

namespace nsa::service {

struct PlotOptions {
  double margin = 1.2;  // the dashed "sparse must win by" line
  std::string title = "nsa-tune: sparse selection speedup over packed SDPA";
  std::string subtitle;  // e.g. the store and when the report was generated
};

struct Plot {
  std::string svg;
  std::size_t groups = 0;  // charts drawn
  std::size_t series = 0;  // lines (device classes per group), summed over charts
  std::size_t points = 0;  // markers
};

/// Draws a model made by tuner::build_report (possibly from another build: missing or mistyped
/// fields make a point or a family be left out, never a throw). Points without a speedup
/// (no candidate produced a result) are not drawn. A report without any verdict gives a valid
/// SVG that says so. Throws std::invalid_argument only when `report` is not a report (not an
/// object, or no "archs" array).
Plot plot_report_svg(const nlohmann::json& report, const PlotOptions& options = {});

}  // namespace nsa::service
