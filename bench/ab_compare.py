#!/usr/bin/env python3
"""A/B of two nsa-bench-kernels builds on this GPU, interleaved, on the same inputs.

Every design change of issue 5 was judged by timing the old and the new kernels in one device
call, round after round (old, new, new, old, ...), so that the card's drift between calls and
within one falls on both. This runs that comparison and prints one markdown table: per case,
pattern and variant, each build's median per round, and the ratio of the second build's median
(over its rounds) to the first's (below 1: the second is faster). Both builds get the same
arguments and the same --seed (1 unless given), so they time the same inputs and selections.

Usage (on the GPU host; the standard library only):
  python3 ab_compare.py --build head=OLD/nsa-bench-kernels --build new=dist/bin/nsa-bench-kernels \\
      --rounds 2 --out $OUT -- --shape b=1,tq=32768,tkv=32768,d=128,pattern=random \\
      --designs prefill_stream --variants tma1_warps12 --runs 10

Writes OUT/ab-compare.md (the table) and OUT/ab-raw.tar.gz (every run's JSON and log,
ab-<name>-<round>.json/.log; --keep-raw keeps them unpacked too): two files, as the device
tool returns only a few.
Exit status: 0; 1 if a run failed (the table shows what was measured); 2 for bad arguments or a
missing binary; 3 when the benchmark finds no GPU.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile


def parse_build(text):
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--build wants NAME=PATH (like head=old/nsa-bench-kernels), not '{text}'")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"build name '{name}' must be letters, digits, '-' or '_' (it names files)")
    return name, path


def run_order(names, rounds):
    """Round r runs the builds in order, reversed every other round (A B, B A, A B, ...)."""
    order = []
    for r in range(rounds):
        seq = names if r % 2 == 0 else list(reversed(names))
        order += [(name, r + 1) for name in seq]
    return order


def load_medians(path):
    """{(case, pattern, variant): (median_us or None, status)} and the device name."""
    with open(path) as f:
        data = json.load(f)
    out = {}
    for res in data.get("results", []):
        case = res.get("name", "?")
        pattern = res.get("pattern", "?")
        for v in res.get("variants", []):
            key = (case, pattern, v.get("variant", "?"))
            out[key] = (v.get("median_us"), v.get("status", "?"))
    return out, data.get("device", {}).get("name", "?")


def short_variant(key):
    """sel_fwd.<design>.<family>.<knobs>.<arch> as '<design> <knobs>'."""
    parts = key.split(".")
    return f"{parts[1]} {parts[3]}" if len(parts) == 5 else key


def render(names, rounds, measured, devices, bench_args, problems):
    lines = ["# nsa-bench-kernels A/B", ""]
    lines.append(f"- builds: {', '.join(names)} (ratio = {names[-1]} / {names[0]}, medians over rounds; below 1: "
                 f"{names[-1]} is faster)")
    lines.append(f"- device: {', '.join(sorted(devices)) or '?'}; {rounds} round(s), the order reversed every other round")
    lines.append(f"- arguments: `{' '.join(bench_args)}`")
    lines.append("")
    keys = sorted({k for per_run in measured.values() for k in per_run})
    header = ["case", "pattern", "variant"] + [f"{n} us (per round)" for n in names] + ["ratio"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join(["---"] * 3 + ["---:"] * (len(names) + 1)) + " |")
    for key in keys:
        cells = [key[0], key[1], short_variant(key[2])]
        per_build = {}
        for n in names:
            vals = []
            shown = []
            for r in range(1, rounds + 1):
                got = measured.get((n, r), {}).get(key)
                if got is None:
                    shown.append("—")
                elif got[0] is None or got[1] != "ok":
                    shown.append(got[1])
                else:
                    vals.append(got[0])
                    shown.append(f"{got[0]:.1f}")
            per_build[n] = vals
            cells.append(", ".join(shown))
        a, b = per_build[names[0]], per_build[names[-1]]
        cells.append(f"{statistics.median(b) / statistics.median(a):.3f}" if a and b else "—")
        lines.append("| " + " | ".join(cells) + " |")
    if problems:
        lines += ["", "Problems:"] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--build", action="append", type=parse_build, default=[], metavar="NAME=PATH",
                    help="an nsa-bench-kernels binary and its name (twice: the first is the baseline)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each build (default 2)")
    ap.add_argument("--out", default=os.environ.get("OUT", "ab-compare"), help="directory for JSONs, logs, the table")
    ap.add_argument("--timeout", type=float, default=600, help="seconds one run may take (default 600)")
    ap.add_argument("--keep-raw", action="store_true", help="keep each run's JSON and log beside their archive")
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the arguments for nsa-bench-kernels")
    args = ap.parse_args(argv)
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    if len(args.build) != 2:
        ap.error(f"give two --build NAME=PATH (got {len(args.build)})")
    names = [n for n, _ in args.build]
    if names[0] == names[1]:
        ap.error(f"the two builds need different names (both '{names[0]}')")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    for name, path in args.build:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            print(f"ab_compare.py: build '{name}': {path} is missing or not executable", file=sys.stderr)
            return 2
    if "--json" in bench_args:
        ap.error("--json is set per run by ab_compare.py; leave it out of the benchmark's arguments")
    if "--seed" not in bench_args:
        bench_args = bench_args + ["--seed", "1"]  # both builds must time the same inputs
    os.makedirs(args.out, exist_ok=True)
    paths = dict(args.build)
    measured, devices, problems, stems = {}, set(), [], []
    for name, r in run_order(names, args.rounds):
        stem = os.path.join(args.out, f"ab-{name}-{r}")
        stems.append(stem)
        cmd = [paths[name]] + bench_args + ["--json", stem + ".json"]
        print(f"ab_compare.py: {name}, round {r}", file=sys.stderr)
        with open(stem + ".log", "w") as log:
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout).returncode
            except subprocess.TimeoutExpired:
                rc = None
        if rc == 3 and not measured:
            with open(stem + ".log") as f:
                tail = f.read().strip().splitlines()[-1:] or ["(no output)"]
            print(f"ab_compare.py: no GPU: {tail[0]}", file=sys.stderr)
            return 3
        if rc != 0:
            problems.append(f"{name} round {r}: " + ("timed out" if rc is None else f"exit status {rc}") +
                            f" (see {os.path.basename(stem)}.log in ab-raw.tar.gz)")
        if os.path.isfile(stem + ".json"):
            measured[(name, r)], device = load_medians(stem + ".json")
            devices.add(device)
    raw = [stem + ext for stem in stems for ext in (".json", ".log") if os.path.isfile(stem + ext)]
    with tarfile.open(os.path.join(args.out, "ab-raw.tar.gz"), "w:gz") as tar:
        for f in raw:
            tar.add(f, arcname=os.path.basename(f))
    if not args.keep_raw:
        for f in raw:
            os.remove(f)
    table = render(names, args.rounds, measured, devices, bench_args, problems)
    with open(os.path.join(args.out, "ab-compare.md"), "w") as f:
        f.write(table)
    print(table, end="")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
