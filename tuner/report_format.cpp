// Rendering the report model (report.cpp builds it; it may also arrive over the socket from a
// daemon of another build, so every field is read defensively: a missing or mistyped field
// prints as "-" instead of throwing). Only a model that is not a report at all (not an object,
// no "archs" array) is an error.
//
// text:     aligned tables per arch, the pin and its reason first, then device classes,
//           families (one table of points each), demand; then demand without a verdict.
// markdown: the same sections as headings and pipe tables.
// csv:      one row per point with the arch and family on every row (RFC 4180 quoting).
// json:     the model itself, pretty-printed.

#include <cmath>
#include <cstdio>
#include <ctime>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "nsa/tuner/report.hpp"

namespace nsa::tuner {

namespace {

using nlohmann::json;

// Defensive field access --------------------------------------------------------------------------

const json& field(const json& obj, const char* name) {
  static const json null_value;
  if (!obj.is_object()) return null_value;
  auto it = obj.find(name);
  return it == obj.end() ? null_value : *it;
}

std::string str(const json& obj, const char* name, const std::string& missing = "-") {
  const json& v = field(obj, name);
  return v.is_string() ? v.get<std::string>() : missing;
}

bool flag(const json& obj, const char* name) {
  const json& v = field(obj, name);
  return v.is_boolean() && v.get<bool>();
}

std::string fmt(const char* format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}

/// A number field formatted with `format`, or "-" when absent or null (NaN in the model).
std::string num(const json& obj, const char* name, const char* format) {
  const json& v = field(obj, name);
  if (!v.is_number()) return "-";
  return fmt(format, v.get<double>());
}

std::string integer(const json& obj, const char* name, const std::string& missing = "-") {
  const json& v = field(obj, name);
  if (!v.is_number_integer() && !v.is_number_unsigned()) return missing;
  return std::to_string(v.get<std::int64_t>());
}

std::string date(const json& obj, const char* name) {
  const json& v = field(obj, name);
  if (!v.is_number_integer() || v.get<std::int64_t>() <= 0) return "-";
  return format_utc(v.get<std::int64_t>(), "%Y-%m-%d %H:%M");
}

const json& array(const json& obj, const char* name) {
  static const json empty = json::array();
  const json& v = field(obj, name);
  return v.is_array() ? v : empty;
}

std::string short_hash(const std::string& hash) { return hash.size() > 8 ? hash.substr(0, 8) : hash; }

std::string class_status(const json& cls) {
  const json& current = field(cls, "current");
  if (current.is_boolean()) return current.get<bool>() ? "current" : "stale";
  return "unknown (host not probed)";
}

std::string min_length(const json& family) {
  const json& v = field(family, "min_selected_length");
  return v.is_number() ? std::to_string(v.get<std::int64_t>()) : std::string("never");
}

void check_model(const json& report) {
  if (!report.is_object())
    throw std::invalid_argument(std::string("the report model must be a JSON object, got ") +
                                report.type_name() + ": pass what build_report returned");
  if (!field(report, "archs").is_array())
    throw std::invalid_argument(
        "the report model has no \"archs\" array: it is not a report (or from an incompatible "
        "daemon); pass what build_report returned");
}

// Tables -------------------------------------------------------------------------------------------

struct Table {
  std::vector<std::string> headers;
  std::vector<bool> right;  // right-align (numbers)
  std::vector<std::vector<std::string>> rows;
};

/// Columns padded to their widest cell, two spaces apart, prefixed by `indent`.
std::string render_text_table(const Table& t, const std::string& indent) {
  std::vector<std::size_t> width(t.headers.size());
  for (std::size_t c = 0; c < t.headers.size(); ++c) width[c] = t.headers[c].size();
  for (const auto& row : t.rows)
    for (std::size_t c = 0; c < row.size() && c < width.size(); ++c) width[c] = std::max(width[c], row[c].size());
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out = indent;
    for (std::size_t c = 0; c < width.size(); ++c) {
      const std::string& cell = c < cells.size() ? cells[c] : std::string();
      std::string pad(width[c] - std::min(width[c], cell.size()), ' ');
      bool last = c + 1 == width.size();
      out += (t.right[c] ? pad + cell : (last ? cell : cell + pad));
      if (!last) out += "  ";
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::string out = line(t.headers);
  for (const auto& row : t.rows) out += line(row);
  return out;
}

std::string md_cell(const std::string& s) {
  std::string out;
  for (char ch : s) {
    if (ch == '|') out += "\\|";
    else if (ch == '\n') out += ' ';
    else out += ch;
  }
  return out;
}

std::string render_md_table(const Table& t) {
  std::string out = "|";
  for (const auto& h : t.headers) out += " " + md_cell(h) + " |";
  out += "\n|";
  for (std::size_t c = 0; c < t.headers.size(); ++c) out += t.right[c] ? " ---: |" : " --- |";
  out += "\n";
  for (const auto& row : t.rows) {
    out += "|";
    for (const auto& cell : row) out += " " + md_cell(cell) + " |";
    out += "\n";
  }
  return out;
}

/// Greedy word wrap at `width` columns, each line prefixed by `indent`.
std::string wrap(const std::string& text, std::size_t width, const std::string& indent) {
  std::istringstream words(text);
  std::string word, line, out;
  while (words >> word) {
    if (!line.empty() && indent.size() + line.size() + 1 + word.size() > width) {
      out += indent + line + "\n";
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
  }
  if (!line.empty()) out += indent + line + "\n";
  return out;
}

Table points_table(const json& family) {
  Table t{{"point", "backend", "speedup", "baseline_us", "best_us", "rel_l2", "baseline_rel_l2", "run",
           "variant", "flags"},
          {false, false, true, true, true, true, true, true, false, false},
          {}};
  for (const json& p : array(family, "points")) {
    std::string flags;
    if (flag(p, "stale")) flags += "stale";
    if (flag(p, "experimental")) flags += std::string(flags.empty() ? "" : ",") + "experimental";
    std::string speedup = num(p, "speedup", "%.2fx");
    t.rows.push_back({str(p, "point"), str(p, "backend"), speedup, num(p, "baseline_us", "%.1f"),
                      num(p, "best_us", "%.1f"), num(p, "rel_l2", "%.1e"), num(p, "baseline_rel_l2", "%.1e"),
                      integer(p, "run_id"), str(p, "variant", "-").empty() ? "-" : str(p, "variant"),
                      flags.empty() ? "-" : flags});
  }
  return t;
}

Table demand_table(const json& rows, bool with_arch) {
  Table t;
  if (with_arch) {
    t.headers.push_back("arch");
    t.right.push_back(false);
  }
  for (const char* h : {"family", "point", "count", "first asked", "last asked"}) t.headers.push_back(h);
  for (bool r : {false, false, true, false, false}) t.right.push_back(r);
  if (!with_arch) {
    t.headers.push_back("verdict");
    t.right.push_back(false);
  }
  for (const json& d : rows) {
    std::vector<std::string> row;
    if (with_arch) row.push_back(str(d, "arch"));
    for (auto cell : {str(d, "family"), str(d, "point"), integer(d, "count"), date(d, "first_at"),
                      date(d, "last_at")})
      row.push_back(cell);
    if (!with_arch) row.push_back(flag(d, "has_verdict") ? "yes" : "no");
    t.rows.push_back(std::move(row));
  }
  return t;
}

/// The reasons of the points that stayed sdpa: the question an operator asks of a table is
/// "why not sparse here?", and the verdict's reason answers it (margin, gate, failures).
std::vector<std::pair<std::string, std::string>> sdpa_reasons(const json& family) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const json& p : array(family, "points"))
    if (str(p, "backend") == "sdpa" && !str(p, "reason", "").empty()) out.emplace_back(str(p, "point"), str(p, "reason"));
  return out;
}

std::string family_heading(const json& family) {
  std::string out = str(family, "family") + "  class #" + integer(family, "device_class");
  if (flag(family, "stale")) out += "  STALE";
  if (flag(family, "experimental")) out += "  EXPERIMENTAL";
  out += flag(family, "viable") ? "  viable" : "  not viable";
  out += "  min selected length " + min_length(family);
  return out;
}

std::string pin_summary(const json& pin) {
  return "pinned to " + str(pin, "backend") + (flag(pin, "seeded") ? " (seeded policy" : " (operator pin") +
         ", by " + str(pin, "created_by") + ", " + date(pin, "created_at") + ")";
}

// Formats ------------------------------------------------------------------------------------------

std::string render_text(const json& r) {
  const json& store = field(r, "store");
  std::string out = "nsa-tune report, generated " + str(r, "generated_at") + "\n";
  out += "store " + str(store, "path") + " (schema " + integer(store, "schema_version") + ", verdict epoch " +
         integer(store, "epoch") + ")\n";
  if (!flag(r, "host_classes_known"))
    out += "host GPUs not probed: staleness unknown, no verdict is marked stale\n";

  for (const json& a : array(r, "archs")) {
    const std::string arch = str(a, "arch");
    out += "\n== " + arch + " ==\n";
    const json& pin = field(a, "pin");
    if (pin.is_object()) {
      out += "PIN: " + pin_summary(pin) + "\n";
      out += wrap(str(pin, "reason"), 100, "  ");
    } else {
      out += "pin: none\n";
    }
    const json& classes = array(a, "device_classes");
    if (!classes.empty()) {
      out += "device classes:\n";
      Table t{{"#", "gpu", "driver", "nvrtc", "sources", "status"},
              {true, false, true, false, false, false},
              {}};
      std::size_t i = 0;
      for (const json& c : classes)
        t.rows.push_back({std::to_string(i++), str(c, "gpu_name"), integer(c, "driver_version"),
                          str(c, "nvrtc_version"), short_hash(str(c, "source_hash")), class_status(c)});
      out += render_text_table(t, "  ");
    }
    const json& families = array(a, "families");
    if (families.empty())
      out += pin.is_object() ? "no verdicts (the pin decides every answer)\n" : "no verdicts yet\n";
    for (const json& f : families) {
      out += "family " + family_heading(f) + "\n";
      out += render_text_table(points_table(f), "  ");
      for (const auto& [point, reason] : sdpa_reasons(f)) out += "  why sdpa at " + point + ": " + reason + "\n";
    }
    const json& demand = array(a, "demand");
    if (!demand.empty()) {
      out += "demand (requests that found no verdict):\n";
      out += render_text_table(demand_table(demand, false), "  ");
    }
  }
  const json& unserved = array(r, "demand_without_verdict");
  out += "\n== demand without a verdict ==\n";
  if (unserved.empty())
    out += "none\n";
  else
    out += render_text_table(demand_table(unserved, true), "  ");
  return out;
}

std::string render_markdown(const json& r) {
  const json& store = field(r, "store");
  std::string out = "# nsa-tune report\n\nGenerated " + str(r, "generated_at") + " from `" + str(store, "path") +
                    "` (schema " + integer(store, "schema_version") + ", verdict epoch " + integer(store, "epoch") +
                    ").\n";
  if (!flag(r, "host_classes_known"))
    out += "Host GPUs were not probed: staleness is unknown and no verdict is marked stale.\n";
  for (const json& a : array(r, "archs")) {
    out += "\n## " + str(a, "arch") + "\n\n";
    const json& pin = field(a, "pin");
    if (pin.is_object())
      out += "**" + pin_summary(pin) + ".**\n\n> " + md_cell(str(pin, "reason")) + "\n\n";
    else
      out += "No pin.\n\n";
    const json& classes = array(a, "device_classes");
    if (!classes.empty()) {
      Table t{{"#", "GPU", "driver", "NVRTC", "sources", "status"}, {true, false, true, false, false, false}, {}};
      std::size_t i = 0;
      for (const json& c : classes)
        t.rows.push_back({std::to_string(i++), str(c, "gpu_name"), integer(c, "driver_version"),
                          str(c, "nvrtc_version"), "`" + short_hash(str(c, "source_hash")) + "`", class_status(c)});
      out += "Device classes:\n\n" + render_md_table(t) + "\n";
    }
    const json& families = array(a, "families");
    if (families.empty())
      out += pin.is_object() ? "No verdicts (the pin decides every answer).\n" : "No verdicts yet.\n";
    for (const json& f : families) {
      out += "### `" + str(f, "family") + "`\n\nClass #" + integer(f, "device_class");
      if (flag(f, "stale")) out += ", **stale**";
      if (flag(f, "experimental")) out += ", **experimental**";
      out += std::string(flag(f, "viable") ? ", viable" : ", not viable") + ", min selected length " +
             min_length(f) + ".\n\n";
      out += render_md_table(points_table(f)) + "\n";
      auto reasons = sdpa_reasons(f);
      for (const auto& [point, reason] : reasons) out += "- why sdpa at `" + point + "`: " + md_cell(reason) + "\n";
      if (!reasons.empty()) out += "\n";
    }
    const json& demand = array(a, "demand");
    if (!demand.empty()) out += "Demand (requests that found no verdict):\n\n" + render_md_table(demand_table(demand, false));
  }
  const json& unserved = array(r, "demand_without_verdict");
  out += "\n## Demand without a verdict\n\n";
  out += unserved.empty() ? std::string("None.\n") : render_md_table(demand_table(unserved, true));
  return out;
}

std::string csv_cell(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char ch : s) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return out + "\"";
}

/// Numbers in full precision for analysis; empty for null.
std::string csv_num(const json& obj, const char* name) {
  const json& v = field(obj, name);
  if (v.is_number_integer()) return std::to_string(v.get<std::int64_t>());
  if (v.is_number()) return fmt("%.9g", v.get<double>());
  return "";
}

std::string render_csv(const json& r) {
  std::string out =
      "arch,pin,family,device_class,gpu_name,driver_version,nvrtc_version,source_hash,class_current,"
      "point,backend,variant,baseline_us,best_us,speedup,rel_l2,baseline_rel_l2,run_id,stale,experimental,"
      "viable,min_selected_length,reason\n";
  auto boolean = [](bool b) { return std::string(b ? "true" : "false"); };
  for (const json& a : array(r, "archs")) {
    const json& pin = field(a, "pin");
    const json& classes = array(a, "device_classes");
    for (const json& f : array(a, "families")) {
      const json& idx = field(f, "device_class");
      json cls = idx.is_number_unsigned() || idx.is_number_integer()
                     ? (idx.get<std::size_t>() < classes.size() ? classes[idx.get<std::size_t>()] : json::object())
                     : json::object();
      const json& current = field(cls, "current");
      for (const json& p : array(f, "points")) {
        std::vector<std::string> cells{
            str(a, "arch", ""),
            pin.is_object() ? str(pin, "backend", "") : "",
            str(f, "family", ""),
            csv_num(f, "device_class"),
            str(cls, "gpu_name", ""),
            csv_num(cls, "driver_version"),
            str(cls, "nvrtc_version", ""),
            str(cls, "source_hash", ""),
            current.is_boolean() ? boolean(current.get<bool>()) : "",
            str(p, "point", ""),
            str(p, "backend", ""),
            str(p, "variant", ""),
            csv_num(p, "baseline_us"),
            csv_num(p, "best_us"),
            csv_num(p, "speedup"),
            csv_num(p, "rel_l2"),
            csv_num(p, "baseline_rel_l2"),
            csv_num(p, "run_id"),
            boolean(flag(p, "stale")),
            boolean(flag(p, "experimental")),
            boolean(flag(f, "viable")),
            csv_num(f, "min_selected_length"),
            str(p, "reason", "")};
        for (std::size_t i = 0; i < cells.size(); ++i) out += (i ? "," : "") + csv_cell(cells[i]);
        out += "\n";
      }
    }
  }
  return out;
}

}  // namespace

std::string render_report(const json& report, ReportFormat format) {
  check_model(report);
  switch (format) {
    case ReportFormat::text: return render_text(report);
    case ReportFormat::markdown: return render_markdown(report);
    case ReportFormat::csv: return render_csv(report);
    case ReportFormat::json: return report.dump(2) + "\n";
  }
  return render_text(report);
}

std::string format_utc(std::int64_t unix_seconds, const char* format) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  if (std::strftime(buf, sizeof buf, format, &tm) == 0) return "-";
  return buf;
}

}  // namespace nsa::tuner
