// A launch plan as JSON (plan_json.hpp): the worker protocol's and the dispatch answer's spelling.

#include "nsa/tuner/plan_json.hpp"

namespace nsa::tuner {

using nlohmann::json;

json plan_to_json(const jit::LaunchPlan& plan) {
  json launches = json::array();
  for (const auto& l : plan.launches) {
    json launch = {{"entry", l.entry},
                   {"grid", {l.grid[0], l.grid[1], l.grid[2]}},
                   {"block", {l.block[0], l.block[1], l.block[2]}},
                   {"shared_bytes", l.shared_bytes}};
    if (!l.tensor_maps.empty()) {
      json maps = json::array();
      for (const auto& m : l.tensor_maps)
        maps.push_back({{"operand", std::string(jit::to_string(m.operand))}, {"dim", m.dim}, {"box_rows", m.box_rows}});
      launch["tensor_maps"] = std::move(maps);
    }
    launches.push_back(std::move(launch));
  }
  return {{"launches", std::move(launches)}, {"workspace_bytes", plan.workspace_bytes}};
}

}  // namespace nsa::tuner
