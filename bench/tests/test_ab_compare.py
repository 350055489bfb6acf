"""bench/ab_compare.py without a GPU: two fake nsa-bench-kernels builds, run interleaved, and the
table of their medians and ratios; the errors for a missing binary, a host without a GPU and a
failed run.

Run: cd bench/tests && python3 -m unittest -v test_ab_compare
"""
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.environ.get("NSA_BENCH_DIR", os.path.dirname(HERE))
AB = os.path.join(BENCH, "ab_compare.py")

# A fake benchmark: logs its argv, then writes the JSON nsa-bench-kernels would, with every median
# scaled by FAKE_SCALE_<its file name> (the "new" build's kernels are faster).
FAKE_BENCH = textwrap.dedent('''\
    import json, os, sys
    argv = sys.argv[1:]
    me = os.path.basename(sys.argv[0])
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps([me] + argv) + "\\n")
    mode = os.environ.get("FAKE_MODE_" + me, "")
    if mode == "nogpu":
        print("nsa-bench-kernels: no GPU to benchmark: libcuda.so.1 not found", file=sys.stderr)
        sys.exit(3)
    if mode == "fail":
        print("nsa-bench-kernels: CUDA_ERROR_LAUNCH_FAILED", file=sys.stderr)
        sys.exit(4)
    scale = float(os.environ.get("FAKE_SCALE_" + me, "1"))
    variants = [
        {"variant": "sel_fwd.prefill_stream.fam.tma1_warps12_producers1_stages5_persist0.sm90",
         "design": "prefill_stream", "status": "ok", "median_us": 100.0 * scale, "rel_l2": 2.3e-3},
        {"variant": "sel_fwd.prefill_group.fam.warps5_stages2_persist1.sm90", "design": "prefill_group",
         "status": "wrong_result" if me == "new" else "ok", "median_us": 50.0, "rel_l2": 0.5},
    ]
    if me == "new":
        variants.append({"variant": "sel_fwd.prefill_stream.fam.tma1_warps12_producers1_stages5_persist1.sm90",
                         "design": "prefill_stream", "status": "ok", "median_us": 90.0, "rel_l2": 2.3e-3})
    out = argv[argv.index("--json") + 1]
    json.dump({"device": {"name": "Fake H100"},
               "results": [{"name": "b=1,tq=64", "pattern": "random", "variants": variants}]}, open(out, "w"))
    ''')


class AbCompare(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.log = os.path.join(self.tmp.name, "calls.log")
        self.out = os.path.join(self.tmp.name, "out")
        self.bins = {}
        for name in ("head", "new"):
            path = os.path.join(self.tmp.name, name)
            with open(path, "w") as f:
                f.write(f"#!{sys.executable}\n" + FAKE_BENCH)
            os.chmod(path, 0o755)
            self.bins[name] = path

    def run_ab(self, *extra, env_extra=None, builds=("head", "new")):
        env = dict(os.environ, FAKE_LOG=self.log, FAKE_SCALE_new="0.9", **(env_extra or {}))
        cmd = [sys.executable, AB, "--out", self.out]
        for b in builds:
            cmd += ["--build", f"{b}={self.bins.get(b, os.path.join(self.tmp.name, b))}"]
        return subprocess.run(cmd + list(extra), capture_output=True, text=True, env=env, timeout=60)

    def calls(self):
        with open(self.log) as f:
            return [json.loads(l) for l in f]

    def test_interleaved_rounds_same_seed_and_the_table(self):
        p = self.run_ab("--rounds", "3", "--keep-raw", "--", "--shape", "b=1,tq=64", "--runs", "10")
        self.assertEqual(p.returncode, 0, p.stderr + p.stdout)
        calls = self.calls()
        self.assertEqual([c[0] for c in calls], ["head", "new", "new", "head", "head", "new"])
        for c in calls:
            self.assertEqual(c[c.index("--seed") + 1], "1")  # added: both builds time the same inputs
            self.assertEqual(c[c.index("--shape") + 1], "b=1,tq=64")
        rows = {l.split(" | ")[2]: l for l in p.stdout.splitlines() if l.startswith("| b=1")}
        self.assertIn("100.0, 100.0, 100.0 | 90.0, 90.0, 90.0 | 0.900 |", rows["prefill_stream tma1_warps12_producers1_stages5_persist0"])
        # A variant only the new build offers, and one whose result the new build got wrong.
        self.assertIn("| —, —, — | 90.0, 90.0, 90.0 | — |", rows["prefill_stream tma1_warps12_producers1_stages5_persist1"])
        self.assertIn("wrong_result", rows["prefill_group warps5_stages2_persist1"])
        self.assertIn("Fake H100", p.stdout)
        with open(os.path.join(self.out, "ab-compare.md")) as f:
            self.assertEqual(f.read(), p.stdout)
        for f in ("ab-head-1.json", "ab-new-3.json", "ab-head-2.log", "ab-raw.tar.gz"):
            self.assertTrue(os.path.exists(os.path.join(self.out, f)), f)
        with tarfile.open(os.path.join(self.out, "ab-raw.tar.gz")) as tar:
            self.assertEqual(len(tar.getnames()), 12)  # 2 builds x 3 rounds x (JSON, log)

    def test_a_given_seed_is_kept(self):
        p = self.run_ab("--rounds", "1", "--", "--seed", "7")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(all(c[c.index("--seed") + 1] == "7" and c.count("--seed") == 1 for c in self.calls()))

    def test_missing_binary(self):
        p = self.run_ab(builds=("head", "absent"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("build 'absent'", p.stderr)
        self.assertIn("missing or not executable", p.stderr)

    def test_one_build_is_not_an_ab(self):
        p = self.run_ab(builds=("head",))
        self.assertEqual(p.returncode, 2)
        self.assertIn("give two --build", p.stderr)

    def test_no_gpu(self):
        p = self.run_ab(env_extra={"FAKE_MODE_head": "nogpu"})
        self.assertEqual(p.returncode, 3)
        self.assertIn("no GPU", p.stderr)

    def test_a_failed_run_is_reported_and_the_rest_shown(self):
        p = self.run_ab("--rounds", "1", env_extra={"FAKE_MODE_new": "fail"})
        self.assertEqual(p.returncode, 1)
        self.assertIn("new round 1: exit status 4 (see ab-new-1.log in ab-raw.tar.gz)", p.stdout)
        self.assertIn("| 100.0 | — | — |", p.stdout)
        # Without --keep-raw two files come back: the table and the archive.
        self.assertEqual(sorted(os.listdir(self.out)), ["ab-compare.md", "ab-raw.tar.gz"])


if __name__ == "__main__":
    unittest.main()
