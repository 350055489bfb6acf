// nsa-kernel-inspect: compiles catalog variants with the project's own NVRTC path (the same
// prelude, sources and options the tuner uses) and prints what ptxas reported for each, one line
// per variant: registers, spill bytes, stack frame, static shared memory, the launch plan's
// dynamic shared memory and threads. With --out DIR it also writes each cubin as DIR/<key>.cubin
// for `cuobjdump --dump-sass`. No GPU needed: this is how a design is read before device time is
// spent on it (docs/kernels.md, "Reading a design before running it").
//
//   nsa-kernel-inspect --arch sm_90 --design prefill_stream [--shape dqk=192,dv=128]
//   nsa-kernel-inspect sel_fwd.prefill_stream.dqk128_dv128_h16_blk64_n16_bf16.tma1_warps12_producers1_stages5.sm90

#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "nsa/jit/catalog.hpp"
#include "nsa/jit/nvrtc.hpp"

using namespace nsa;

int main(int argc, char** argv) {
  std::vector<std::string> keys, shapes, designs;
  std::string arch = "sm_90", out_dir;
  bool log = false;
  CLI::App app{"Compiles kernel variants with NVRTC and prints ptxas's resources for each (no GPU needed)."};
  app.add_option("keys", keys, "variant keys (sel_fwd.<design>.<family>.<knobs>.<arch>)");
  app.add_option("--arch", arch, "target arch for --design (default sm_90)");
  app.add_option("--shape", shapes,
                 "families as nsa-bench-kernels shapes: key=value over d, dqk, dv, h, block, n, dtype (default: the "
                 "D=128, h=16, block 64, n=16 bf16 family)");
  app.add_option("--design", designs, "every catalog setting of this design (repeatable)");
  app.add_option("--out", out_dir, "write each cubin to DIR/<key>.cubin");
  app.add_flag("--log", log, "print the whole NVRTC log of each variant");
  CLI11_PARSE(app, argc, argv);

  std::vector<jit::KernelVariant> variants;
  for (const auto& k : keys) {
    auto v = jit::KernelVariant::parse(k);
    if (!v) {
      std::fprintf(stderr, "nsa-kernel-inspect: '%s' is not a variant key\n", k.c_str());
      return 2;
    }
    variants.push_back(*v);
  }
  if (shapes.empty()) shapes = {"decode"};
  for (const auto& d : designs) {
    const jit::Design* design = nullptr;
    for (const auto& known : jit::all_designs())
      if (jit::to_string(known) == d) design = &known;
    if (!design) {
      std::fprintf(stderr, "nsa-kernel-inspect: unknown design '%s'\n", d.c_str());
      return 2;
    }
    for (const auto& text : shapes) {
      auto spec = bench::parse_shape(text);
      if (!spec) {
        std::fprintf(stderr, "nsa-kernel-inspect: --shape %s: %s\n", text.c_str(), spec.error().c_str());
        return 2;
      }
      for (auto& v : jit::variants_for(spec->family(), arch, *design)) variants.push_back(std::move(v));
    }
  }
  if (variants.empty()) {
    std::fprintf(stderr, "nsa-kernel-inspect: nothing to compile (give keys or --design)\n");
    return 2;
  }
  int failed = 0;
  std::printf("%-100s %5s %6s %6s %7s %7s\n", "variant", "regs", "spill", "stack", "dyn_smem", "threads");
  for (const auto& v : variants) {
    auto cubin = jit::compile_to_cubin(v);
    if (!cubin) {
      ++failed;
      std::printf("%-100s compile failed: %s\n", v.key().c_str(), cubin.error().message().c_str());
      if (log) std::printf("%s\n", cubin.error().log.c_str());
      continue;
    }
    int stack = 0;
    for (const auto& k : cubin->kernels) stack = std::max(stack, k.stack_bytes);
    unsigned threads = 0;
    try {
      threads = jit::plan_for(v, jit::RuntimeShape{1, 1, 64, 1}).launches.back().block[0];
    } catch (const std::exception&) {
    }
    std::printf("%-100s %5d %6d %6d %7u %7u\n", v.key().c_str(), cubin->registers, cubin->spill_bytes, stack,
                jit::shared_bytes_for(v), threads);
    if (log) std::printf("%s\n", cubin->log.c_str());
    if (!out_dir.empty()) {
      std::ofstream f(out_dir + "/" + v.key() + ".cubin", std::ios::binary);
      f.write(reinterpret_cast<const char*>(cubin->image.data()), static_cast<std::streamsize>(cubin->image.size()));
      if (!f) {
        std::fprintf(stderr, "nsa-kernel-inspect: could not write %s/%s.cubin\n", out_dir.c_str(), v.key().c_str());
        return 1;
      }
    }
  }
  return failed ? 1 : 0;
}
