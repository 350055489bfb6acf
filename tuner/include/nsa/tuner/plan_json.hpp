#pragma once
// A launch plan as JSON: the one spelling shared by the worker protocol (a job's variants) and
// the dispatch answer's `launch` (docs/protocol.md):
//   {"launches":[{"entry":name,"grid":[x,y,z],"block":[x,y,z],"shared_bytes":n
//                 [,"tensor_maps":[{"operand":"k"|"v","dim":D,"box_rows":r}, ...]]}, ...],
//    "workspace_bytes":n}
// `tensor_maps` appears only on launches that take tensor maps (the TMA variants), so every
// other plan reads exactly as before.

#include <nlohmann/json.hpp>

#include "nsa/jit/kernel_variant.hpp"

namespace nsa::tuner {

nlohmann::json plan_to_json(const jit::LaunchPlan& plan);

}  // namespace nsa::tuner
