"""bench/selection_report.py without a GPU: the table rendered from recorded (synthetic) JSON,
its runner against fake nsa-bench-kernels / torch_baselines.py / nvidia-smi, and the errors it
must give for a missing binary and a host without a GPU.

Run: cd bench/tests && python3 -m unittest -v test_selection_report
"""
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.environ.get("NSA_BENCH_DIR", os.path.dirname(HERE))
REPORT = os.path.join(BENCH, "selection_report.py")
FIXTURE = os.path.join(HERE, "fixtures", "synthetic")

FAKE_BENCH = textwrap.dedent('''\
    import json, os, sys
    argv = sys.argv[1:]
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(["bench"] + argv) + "\\n")
    if os.environ.get("FAKE_BENCH_MODE") == "nogpu":
        print("nsa-bench-kernels: no GPU to benchmark: libcuda.so.1 not found (no NVIDIA driver on this host)",
              file=sys.stderr)
        sys.exit(3)
    shapes = [argv[i + 1] for i, a in enumerate(argv) if a == "--shape"]
    out = argv[argv.index("--json") + 1]
    results = []
    for s in shapes:
        kv = dict(x.split("=") for x in s.split(","))
        b, tq = int(kv["b"]), int(kv["tq"])
        rows = b * 4 * tq
        kvb = rows * 1024 * (int(kv["dqk"]) + int(kv["dv"])) * 2.0
        fast = 10.0 + kvb / 2.4e9 * 1e6 / 1000  # arbitrary
        variants = [
            {"variant": "sel_fwd.query_outer.x.warps4_tile64_stages3_evict1.sm90", "design": "query_outer",
             "status": "ok", "median_us": fast},
            {"variant": "sel_fwd.sdpa_packed.x.warps4_tile64_stages3.sm90", "design": "sdpa_packed",
             "status": "ok", "median_us": 3 * fast,
             "baseline_parts": {"gather_us": 2 * fast, "attention_us": fast}},
        ]
        results.append({"name": s, "pattern": kv["pattern"], "useful_kv_bytes": kvb, "min_bytes": kvb * 1.01,
                        "variants": variants})
    with open(out, "w") as f:
        json.dump({"device": {"name": "Fake H100", "arch": "sm_90", "sm_count": 132, "l2_bytes": 52428800,
                              "memory_bytes": 85e9, "driver_version": 13000, "nvrtc_version": "13.0"},
                   "ceilings": {"copy_gbps": 3000.0, "copy_bytes": 1 << 30, "l2_read_gbps": 9000.0,
                                "l2_read_bytes": 1 << 24},
                   "results": results}, f)
    print("fake table")
    ''')

FAKE_TORCH = textwrap.dedent('''\
    import json, os, sys
    argv = sys.argv[1:]
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(["torch"] + argv) + "\\n")
    cases = json.load(open(argv[argv.index("--multi") + 1]))
    for a in cases:
        path = a[a.index("--json") + 1]
        if "--gemm-ceiling" in a:
            res = {"device": "Fake H100", "bf16_gemm_tflops": 650.0}
        else:
            res = {"device": "Fake H100", "torch_packed_sdpa_us": 1000.0, "torch_sdpa_on_packed_us": 50.0,
                   "torch_sdpa_on_packed_form": "fold/flash_attention"}
            if "--no-dense" not in a:
                res["torch_dense_flash_us"] = 2000.0
        json.dump(res, open(path, "w"))
    ''')

# Stands in for the interpreter: answers the torch probe, runs scripts with the real one.
FAKE_PYTHON = textwrap.dedent('''\
    import os, sys
    if sys.argv[1] == "-c":
        print("2.11.0+fake")
        sys.exit(0)
    os.execv(sys.executable, [sys.executable] + sys.argv[1:])
    ''')


def write_exe(path, body):
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\n" + body)
    os.chmod(path, 0o755)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def table_rows(text):
    lines = [l for l in text.splitlines() if l.startswith("| ")]
    return [[c.strip() for c in l.strip("|").split(" | ")] for l in lines[2:]]  # past header and rule


class RenderFromJson(unittest.TestCase):
    def run_report(self, *args, env=None):
        return subprocess.run([sys.executable, REPORT, *args], capture_output=True, text=True, env=env, timeout=60)

    def test_help_needs_no_torch(self):
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "torch"))
            with open(os.path.join(d, "torch", "__init__.py"), "w") as f:
                f.write("raise ImportError('torch must not be imported by selection_report.py')\n")
            env = dict(os.environ, PYTHONPATH=d)
            p = self.run_report("--help", env=env)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("--prefix", p.stdout)
            self.assertIn("--cases", p.stdout)
            self.assertIn("d128.decode.b128", p.stdout)

    def test_fixture_table(self):
        p = self.run_report("--from-json", FIXTURE)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout
        self.assertIn("card: **NVIDIA H100 80GB HBM3**", out)
        self.assertIn("driver: 580.159.04 (CUDA driver API 13.0)", out)
        self.assertIn("HBM device-to-device copy 3000 GB/s", out)
        self.assertIn("L2 read 10000 GB/s", out)
        self.assertIn("bf16 GEMM (cuBLAS 8192^3) measured at 700 TFLOP/s", out)
        rows = table_rows(out)
        self.assertEqual(len(rows), 7)  # the six D=128 cases and one paper case the fixture lists
        for r in rows:
            self.assertEqual(len(r), 12, r)
        by_case = {(r[0], r[1]): r for r in rows}

        b128 = by_case[("decode B=128 T_kv=32768, D_qk=D_v=128", "random")]
        self.assertEqual(b128[2], "query_outer warps4_tile64_stages3_evict1")
        self.assertEqual(b128[3], "105.0")
        self.assertEqual(b128[4], "300.0 (190.0 + 108.0)")  # the fastest baseline setting and its parts
        self.assertEqual(b128[5], "1549 (best form 900.0)")
        self.assertIn("100.0 [fold/flash_attention] vs ours 108.0: 1.08x", b128[6])
        self.assertEqual(b128[7], "2848")
        # floor: min_bytes / copy BW; fraction = floor / median
        doc = read_json(os.path.join(FIXTURE, "bench-d128-small.json"))
        min_bytes = doc["results"][0]["min_bytes"]
        floor_us = min_bytes / 3000e9 * 1e6
        self.assertIn(f"HBM {floor_us:.1f} us", b128[8])
        self.assertEqual(b128[9], f"{floor_us / 105.0:.0%}")
        self.assertIn(">= 85% of copy BW", b128[10])
        self.assertIn(">= 2x torch packed: 8.6x", b128[10])  # against the faster torch form (900 us)
        self.assertEqual(b128[11], "yes")

        self.assertNotIn("launch alone", b128[8])  # a row without launch_floor_us (an older binary)
        b16 = by_case[("decode B=16 T_kv=32768, D_qk=D_v=128", "random")]
        self.assertIn("; its launch alone 3.7 us", b16[8])  # the best variant's launch_floor_us

        b1 = by_case[("decode B=1 T_kv=32768, D_qk=D_v=128", "random")]
        self.assertEqual(b1[2], "split_kv split8_warps4_tile64_stages2")  # the faster numerics_failed row is not counted
        self.assertEqual(b1[11], "NO (dense part <= 1.25x torch)")
        b16 = by_case[("decode B=16 T_kv=32768, D_qk=D_v=128", "random")]
        self.assertEqual(b16[11], "NO (<= 15.0 us, >= 2x torch packed)")

        t8k = by_case[("prefill B=1 T=8192, D_qk=D_v=128", "random")]
        self.assertIn("-> L2", t8k[8])
        self.assertIn("faster than torch dense flash: 0.79x", t8k[10])
        self.assertTrue(t8k[11].startswith("NO"))

        t32 = by_case[("prefill B=1 T=32768, D_qk=D_v=128", "random")]
        self.assertEqual(t32[4], "skipped: workspace of 68.7 GB does not fit in the 60.0 GB of free device "
                                 "memory (cuMemGetInfo)")
        self.assertTrue(t32[5].startswith("skipped: packed tensors"))
        self.assertIn(">= 170 TFLOP/s useful: 69", t32[10])
        clus = by_case[("prefill B=1 T=32768, D_qk=D_v=128", "clustered")]
        self.assertIn(">= 2.0x random's TFLOP/s: 2.29x", clus[10])
        self.assertEqual(clus[7], "28882")  # the random case's dense time, same shape
        self.assertTrue(clus[11].startswith("yes so far"))

        paper = by_case[("decode B=1 T_kv=32768, D_qk=192 D_v=128 (NSA paper)", "random")]
        self.assertIn("no nsa-bench-kernels result", paper[2])
        self.assertIn("<= 17.6 us", paper[10])  # the paper config's target relaxed by 15%
        self.assertEqual(paper[11], "not measured")
        self.assertIn("bench paper small: not run: the time limit (570 s) is spent", out)

    def test_cases_filter(self):
        p = self.run_report("--from-json", FIXTURE, "--cases", "d128.decode.*")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(len(table_rows(p.stdout)), 3)
        p = self.run_report("--from-json", FIXTURE, "--cases", "nonsense")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("matches no case", p.stderr)


class Runner(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        d = self.tmp.name
        self.prefix = os.path.join(d, "dist")
        os.makedirs(os.path.join(self.prefix, "bin"))
        write_exe(os.path.join(self.prefix, "bin", "nsa-bench-kernels"), FAKE_BENCH)
        self.torch = os.path.join(d, "fake_torch_baselines.py")
        write_exe(self.torch, FAKE_TORCH)
        self.python = os.path.join(d, "fake_python")
        write_exe(self.python, FAKE_PYTHON)
        self.empty_path = os.path.join(d, "path")  # no nvidia-smi here unless a test puts one
        os.makedirs(self.empty_path)
        self.log = os.path.join(d, "calls.jsonl")
        self.out = os.path.join(d, "out")

    def tearDown(self):
        self.tmp.cleanup()

    def report(self, *args, mode="ok"):
        env = dict(os.environ, PATH=self.empty_path, FAKE_LOG=self.log, FAKE_BENCH_MODE=mode)
        env.pop("OUT", None)
        return subprocess.run([sys.executable, REPORT, "--prefix", self.prefix, "--out", self.out,
                               "--python", self.python, "--torch-baselines", self.torch, *args],
                              capture_output=True, text=True, env=env, timeout=120)

    def calls(self):
        with open(self.log) as f:
            return [json.loads(l) for l in f]

    def test_full_run_with_fakes(self):
        p = self.report("--cases", "d128.*", "--keep-raw")
        self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
        calls = self.calls()
        benches = [c for c in calls if c[0] == "bench"]
        self.assertEqual(len(benches), 2)
        decode, prefill = benches
        self.assertEqual(sum(a == "--shape" for a in decode), 3)
        self.assertIn("b=128,tq=1,tkv=32768,hq=64,hkv=4,dqk=128,dv=128,block=64,n=16,dtype=bf16,pattern=random", decode)
        self.assertNotIn("--defaults-only", decode)
        self.assertEqual(decode[decode.index("--exclude-designs") + 1], "prefill_stream,prefill_group")  # prefill designs
        self.assertEqual(decode[decode.index("--runs") + 1], "20")
        self.assertEqual(sum(a == "--shape" for a in prefill), 3)
        self.assertEqual(prefill[prefill.index("--exclude-designs") + 1], "split_kv,decode_stream")
        self.assertIn("--baseline-defaults-only", prefill)
        self.assertEqual(prefill[prefill.index("--runs") + 1], "10")
        self.assertIn("b=1,tq=8192,tkv=8192,hq=64,hkv=4,dqk=128,dv=128,block=64,n=16,dtype=bf16,pattern=random", prefill)
        self.assertIn("b=1,tq=32768,tkv=32768,hq=64,hkv=4,dqk=128,dv=128,block=64,n=16,dtype=bf16,pattern=clustered",
                      prefill)
        torch_calls = [c for c in calls if c[0] == "torch"]
        self.assertEqual(len(torch_calls), 1)  # one process for the family
        listed = read_json(torch_calls[0][torch_calls[0].index("--multi") + 1])
        self.assertIn("--gemm-ceiling", listed[0])
        self.assertEqual(len(listed), 7)
        clustered = [a for a in listed if "clustered" in a]
        self.assertEqual(len(clustered), 1)
        self.assertIn("--no-dense", clustered[0])
        for f in ("raw/bench-d128-decode.json", "raw/bench-d128-prefill.json", "raw/bench-d128-decode.log",
                  "raw/torch-gemm.json", "raw/torch-d128.decode.b1.json", "raw/meta.json", "selection-report.md",
                  "selection-report.json", "selection-report-raw.tar.gz"):
            self.assertTrue(os.path.exists(os.path.join(self.out, f)), f)
        rows = table_rows(p.stdout)
        self.assertEqual(len(rows), 6)
        self.assertTrue(all(r[2] == "query_outer warps4_tile64_stages3_evict1" for r in rows))
        self.assertIn("Fake H100", p.stdout)
        self.assertIn("650 TFLOP/s", p.stdout)
        self.assertIn("prefill cases: nsa-bench-kernels --exclude-designs split_kv,decode_stream --baseline-defaults-only", p.stdout)
        self.assertIn("decode cases: nsa-bench-kernels --exclude-designs prefill_stream,prefill_group", p.stdout)
        with open(os.path.join(self.out, "selection-report.md")) as f:
            self.assertEqual(f.read().strip(), p.stdout.strip())
        summary = read_json(os.path.join(self.out, "selection-report.json"))
        self.assertEqual(len(summary["rows"]), 6)
        # The recorded run renders the same table again, from the directory or from the archive.
        for recorded in (self.out, os.path.join(self.out, "selection-report-raw.tar.gz")):
            again = subprocess.run([sys.executable, REPORT, "--from-json", recorded], capture_output=True, text=True,
                                   timeout=60)
            self.assertEqual(again.returncode, 0, again.stderr)
            self.assertEqual(table_rows(again.stdout), rows)

    def test_quick_uses_defaults_only(self):
        p = self.report("--quick", "--cases", "paper.decode.b1", "--no-torch")
        self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
        (bench,) = [c for c in self.calls() if c[0] == "bench"]
        self.assertIn("--defaults-only", bench)
        self.assertIn("b=1,tq=1,tkv=32768,hq=64,hkv=4,dqk=192,dv=128,block=64,n=16,dtype=bf16,pattern=random", bench)
        self.assertIn("torch: --no-torch", p.stdout)
        # Three files come back: the table, its data and one archive of the raw JSONs and logs.
        self.assertEqual(sorted(os.listdir(self.out)),
                         ["selection-report-raw.tar.gz", "selection-report.json", "selection-report.md"])

    def test_bench_args_are_passed_and_stated(self):
        # A --variants filter narrows what is timed; the table must say so, not claim the catalog.
        p = self.report("--cases", "d128.prefill.t8192", "--no-torch", "--bench-arg=--variants",
                        "--bench-arg=tma1_warps12")
        self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
        (bench,) = [c for c in self.calls() if c[0] == "bench"]
        self.assertEqual(bench[bench.index("--variants") + 1], "tma1_warps12")
        self.assertIn("only what `--variants tma1_warps12` (--bench-arg) selects is timed", p.stdout)
        self.assertNotIn("every other catalog variant is timed", p.stdout)
        again = subprocess.run([sys.executable, REPORT, "--from-json", self.out], capture_output=True, text=True,
                               timeout=60)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("only what `--variants tma1_warps12` (--bench-arg) selects is timed", again.stdout)

    def test_missing_binary(self):
        os.remove(os.path.join(self.prefix, "bin", "nsa-bench-kernels"))
        p = self.report()
        self.assertEqual(p.returncode, 2)
        self.assertIn("nsa-bench-kernels is missing", p.stderr)

    def test_no_gpu_from_the_benchmark(self):
        p = self.report("--no-torch", mode="nogpu")
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertIn("no GPU", p.stderr)
        self.assertIn("libcuda.so.1 not found", p.stderr)

    def test_no_gpu_from_nvidia_smi(self):
        write_exe(os.path.join(self.empty_path, "nvidia-smi"),
                  "import sys\nprint('NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.')\n"
                  "sys.exit(9)\n")
        p = self.report()
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertIn("no GPU: nvidia-smi: NVIDIA-SMI has failed", p.stderr)

    def test_time_limit_spent(self):
        p = self.report("--time-limit", "1", "--cases", "d128.decode.b1")
        self.assertEqual(p.returncode, 1)
        self.assertIn("not run: the time limit (1 s) is spent", p.stdout)
        self.assertIn("nothing was measured", p.stderr)


if __name__ == "__main__":
    unittest.main()
