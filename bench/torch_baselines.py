#!/usr/bin/env python3
"""What a user would otherwise run, timed on the same GPU: PyTorch's packed SDPA (gather with
precomputed indices + F.scaled_dot_product_attention) and PyTorch's dense causal flash attention.

Prints one JSON line per case and writes it to --json too. Selection patterns are the same as
nsa-bench-kernels': `random` (block 0, the two most recent blocks, the rest drawn from earlier
blocks) and `clustered` (the queries of one block share a random set of earlier blocks, each
query swapping up to two of them).

Keys of the JSON:
  torch_packed_sdpa_us       gather with precomputed indices + SDPA with the heads expanded and a
                             key mask (what a straightforward port runs)
  torch_packed_sdpa_best_us  the same gather + the fastest correct SDPA form below
  torch_sdpa_on_packed_us    SDPA alone on the already gathered K_p [rows, L, D_qk], V_p
                             [rows, L, D_v] and Q [rows, h, D] (rows = B*H_kv*T_q): the strongest
                             of several forms (the h heads folded into the query length, GQA,
                             expanded heads) x backends (flash, efficient, cuDNN, default), each
                             checked against an fp32 attention of the first rows; a mask only when
                             some row has fewer than L = n*block visible keys (the form and
                             backend in torch_sdpa_on_packed_form, every try in
                             torch_sdpa_on_packed_tries)
  torch_dense_flash_us       SDPA over the whole T_kv with GQA (causal when T_q = T_kv), the fastest
                             fused backend (flash, efficient, cuDNN; in torch_dense_flash_backend,
                             every try in torch_dense_tries)
  packed_skipped             why the packed measurements were not made (the packed tensors would
                             not fit in free GPU memory), when they were not; *_error keys say
                             why one measurement failed (a backend refusing the shape)

    python3 bench/torch_baselines.py --case decode --batch 64 --t-kv 32768
    python3 bench/torch_baselines.py --gemm-ceiling      # bf16 GEMM TFLOP/s (cuBLAS), a compute ceiling
"""
import argparse
import json
import math
import sys
import time
import warnings

import torch
import torch.nn.functional as F


def selection(pattern, batch, h_kv, t_q, t_kv, block, n, gen, device):
    """block_idx [B, H_kv, T_q, n] (int64), every row valid per the spec (distinct, -1 for none)."""
    nblocks = (t_kv + block - 1) // block
    out = torch.full((batch, h_kv, t_q, n), -1, dtype=torch.int64)
    for b in range(batch):
        for g in range(h_kv):
            shared = None
            for t in range(t_q):
                p = t_kv - t_q + t
                cur = p // block
                if pattern == "clustered" and (shared is None or t % block == 0):
                    pool = torch.randperm(max(cur, 1), generator=gen)[:n].tolist()
                    shared = pool
                must = [0, cur, cur - 1]
                must = [c for c in dict.fromkeys(must) if 0 <= c <= cur]
                if pattern == "clustered":
                    rest = [c for c in shared if c <= cur and c not in must]
                    for _ in range(int(torch.randint(0, 3, (1,), generator=gen))):
                        if rest:
                            rest[int(torch.randint(0, len(rest), (1,), generator=gen))] = int(
                                torch.randint(0, max(cur, 1), (1,), generator=gen))
                else:
                    rest = torch.randperm(max(cur, 1), generator=gen)[: n + 3].tolist()
                chosen = list(dict.fromkeys(must + [c for c in rest if c not in must]))[:n]
                out[b, g, t, : len(chosen)] = torch.tensor(chosen)
    return out.to(device)


def time_ms(fn, reps=50, budget_s=3.0):
    """Median of `reps` event-timed calls after 5 warm-up calls; fewer reps (at least 5) when
    they would take longer than `budget_s`."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    one = time.perf_counter() - t0
    reps = max(5, min(reps, int(budget_s / max(one, 1e-6))))
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


# SDPA on packed rows: q [rows, h, D_qk], kp [rows, L, D_qk], vp [rows, L, D_v], m None or a
# [rows, 1, 1, L] key mask. Each returns something that reshapes to [rows, h, D_v].
FORMS = {
    # the h query heads of a row as h query positions over one KV head: no broadcast at all
    "fold": lambda q, kp, vp, m: F.scaled_dot_product_attention(
        q.unsqueeze(1), kp.unsqueeze(1), vp.unsqueeze(1), attn_mask=m),
    "gqa": lambda q, kp, vp, m: F.scaled_dot_product_attention(
        q.unsqueeze(2), kp.unsqueeze(1), vp.unsqueeze(1), attn_mask=m, enable_gqa=True),
    "expand": lambda q, kp, vp, m: F.scaled_dot_product_attention(
        q.unsqueeze(2), kp.unsqueeze(1).expand(-1, q.shape[1], -1, -1),
        vp.unsqueeze(1).expand(-1, q.shape[1], -1, -1), attn_mask=m),
}


def backends():
    """(name, context factory) for each fused backend this torch has (the default dispatch
    picks one of them); just the default dispatch when torch cannot pin a backend."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return [("default", None)]
    return [(name.lower(), lambda b=getattr(SDPBackend, name): sdpa_kernel(b))
            for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION") if hasattr(SDPBackend, name)]


def first_line(e):
    text = str(e).strip()
    return f"{type(e).__name__}: " + (text.splitlines()[0][:200] if text else "")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def reference_rows(q, kp, vp, valid, count):
    """fp32 attention of the first `count` rows: [count, h, D_v]."""
    qf, kf, vf = q[:count].float(), kp[:count].float(), vp[:count].float()
    s = torch.einsum("rhd,rld->rhl", qf, kf) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~valid[:count].unsqueeze(1), float("-inf"))
    return torch.einsum("rhl,rld->rhd", torch.softmax(s, dim=-1), vf)


def strongest_sdpa(q, kp, vp, valid, reps):
    """Times every form x backend of SDPA on the packed tensors; returns (best_us, best name,
    {name: us or error}, the best (form, backend context factory))."""
    rows, h, _ = q.shape
    mask = None if bool(valid.all()) else valid.view(rows, 1, 1, -1)
    ref = reference_rows(q, kp, vp, valid, min(rows, 64))
    tries, best = {}, None
    warnings.filterwarnings("ignore", category=UserWarning)  # "kernel not used because ...", per try
    for form, fn in FORMS.items():
        for bname, ctx in backends():
            name = f"{form}/{bname}" + ("" if mask is None else "/mask")
            try:
                with (ctx() if ctx else _Null()):
                    out = fn(q, kp, vp, mask)
                    got = out.reshape(rows, h, -1)[: ref.shape[0]].float()
                    err = (got - ref).abs().max().item()
                    if not math.isfinite(err) or err > 3e-2:
                        tries[name] = f"wrong result (max abs error {err:.3g} against fp32)"
                        continue
                    del out, got
                    us = time_ms(lambda: fn(q, kp, vp, mask), reps, budget_s=1.0) * 1e3
            except Exception as e:  # a backend that does not take this form, or out of memory
                tries[name] = "unavailable: " + first_line(e)
                torch.cuda.empty_cache()
                continue
            tries[name] = us
            if best is None or us < best[0]:
                best = (us, name, (fn, ctx, mask))
    if best is None:
        return None, None, tries, None
    return best[0], best[1], tries, best[2]


def strongest_dense(fn, reps):
    """Times `fn` under each fused SDPA backend; returns (best_us, backend, {backend: us or error})."""
    tries, best = {}, None
    warnings.filterwarnings("ignore", category=UserWarning)
    for bname, ctx in backends():
        try:
            with (ctx() if ctx else _Null()):
                us = time_ms(fn, reps) * 1e3
        except Exception as e:  # a backend that does not take the shape (or fails on it)
            tries[bname] = "unavailable: " + first_line(e)
            torch.cuda.empty_cache()
            continue
        tries[bname] = us
        if best is None or us < best[0]:
            best = (us, bname)
    return (best[0], best[1], tries) if best else (None, None, tries)


def measure_dense(res, fn, reps):
    us, backend, tries = strongest_dense(fn, reps)
    res["torch_dense_tries"] = tries
    if us is None:
        res["torch_dense_flash_error"] = "no SDPA backend ran the dense attention"
    else:
        res["torch_dense_flash_us"] = us
        res["torch_dense_flash_backend"] = backend


def gemm_ceiling(dev):
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ b, 30)
    return {"device": torch.cuda.get_device_name(), "torch_version": torch.__version__, "gemm_n": n,
            "bf16_gemm_tflops": 2 * n**3 / (ms * 1e-3) / 1e12}


def write(res, path):
    print(json.dumps(res))
    if path:
        with open(path, "w") as f:
            json.dump(res, f)


def parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["decode", "prefill"], default="decode")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--t-kv", type=int, default=32768)
    ap.add_argument("--t-q", type=int, default=None)
    ap.add_argument("--h-q", type=int, default=64)
    ap.add_argument("--h-kv", type=int, default=4)
    ap.add_argument("--d-qk", type=int, default=128)
    ap.add_argument("--d-v", type=int, default=128)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--pattern", choices=["random", "clustered"], default="random")
    ap.add_argument("--dense-only", action="store_true",
                    help="time only the dense causal flash attention (no selection to build)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense flash attention")
    ap.add_argument("--gemm-ceiling", action="store_true",
                    help="time only a bf16 8192^3 GEMM (cuBLAS) and report its TFLOP/s")
    ap.add_argument("--reps", type=int, default=50, help="timed calls per measurement (fewer when slow)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--multi", default=None, metavar="FILE",
                    help="run several cases in this one process: FILE holds a JSON list of argument lists "
                         "(each as this script takes them, with its own --json); the other options are ignored")
    return ap


def main():
    a = parser().parse_args()
    if not torch.cuda.is_available():
        print("torch_baselines.py: no CUDA device visible to torch", file=sys.stderr)
        return 3
    if not a.multi:
        return run_case(a)
    with open(a.multi) as f:
        cases = json.load(f)
    worst = 0
    for argv in cases:
        one = parser().parse_args(argv)
        try:
            rc = run_case(one)
        except Exception as e:  # one case failing must not cost the others
            rc = 1
            print(f"torch_baselines.py: {' '.join(argv)}: {type(e).__name__}: {e}", file=sys.stderr)
            if one.json:
                with open(one.json, "w") as f:
                    json.dump({"error": f"{type(e).__name__}: {str(e)[:300]}"}, f)
        worst = max(worst, rc)
        torch.cuda.empty_cache()
    return worst


def run_case(a):
    dev = torch.device("cuda")
    if a.gemm_ceiling:
        write(gemm_ceiling(dev), a.json)
        return 0
    t_q = a.t_q or (1 if a.case == "decode" else a.t_kv)
    h = a.h_q // a.h_kv
    gen = torch.Generator().manual_seed(torch.seed() % (2**31))
    dt = torch.bfloat16
    q = torch.randn(a.batch, t_q, a.h_q, a.d_qk, device=dev, dtype=dt)
    k = torch.randn(a.batch, a.t_kv, a.h_kv, a.d_qk, device=dev, dtype=dt)
    v = torch.randn(a.batch, a.t_kv, a.h_kv, a.d_v, device=dev, dtype=dt)

    def dense_flash():
        qq = q.transpose(1, 2)
        kk = k.transpose(1, 2)
        vv = v.transpose(1, 2)
        return F.scaled_dot_product_attention(qq, kk, vv, is_causal=(t_q == a.t_kv), enable_gqa=True)

    if a.dense_only:
        res = {"case": a.case, "batch": a.batch, "t_q": t_q, "t_kv": a.t_kv, "device": torch.cuda.get_device_name()}
        measure_dense(res, dense_flash, a.reps)
        write(res, a.json)
        return 0

    res = {"case": a.case, "pattern": a.pattern, "batch": a.batch, "t_q": t_q, "t_kv": a.t_kv,
           "h_q": a.h_q, "h_kv": a.h_kv, "d_qk": a.d_qk, "d_v": a.d_v, "block": a.block, "n": a.n,
           "device": torch.cuda.get_device_name(), "torch_version": torch.__version__}

    # The packed tensors (and the gather's index tensors) must fit: K_p and V_p once, the int64
    # key positions and their temporaries, and Q / O in the row layout.
    L = a.n * a.block
    rows = a.batch * a.h_kv * t_q
    packed_bytes = rows * L * (a.d_qk + a.d_v) * 2
    need = packed_bytes + rows * L * 26 + 2 * rows * h * (a.d_qk + a.d_v) * 2
    free, _ = torch.cuda.mem_get_info()
    if need > 0.9 * free:
        res["packed_skipped"] = (f"packed tensors: K_p + V_p {packed_bytes / 1e9:.1f} GB (+ gather indices) need "
                                 f"{need / 1e9:.1f} GB; {free / 1e9:.1f} GB of GPU memory free")
    else:
        try:
            measure_packed(a, res, q, k, v, t_q, h, L, rows, gen, dev)
        except torch.cuda.OutOfMemoryError as e:
            res["packed_skipped"] = "out of GPU memory: " + first_line(e)
        except Exception as e:  # keep the dense measurement
            res["packed_error"] = first_line(e)
        torch.cuda.empty_cache()
    if not a.no_dense and (a.case == "prefill" or a.batch <= 128):
        measure_dense(res, dense_flash, a.reps)
    write(res, a.json)
    return 0


def measure_packed(a, res, q, k, v, t_q, h, L, rows, gen, dev):
    idx = selection(a.pattern, a.batch, a.h_kv, t_q, a.t_kv, a.block, a.n, gen, dev)

    # Precomputed gather indices: for each (b, g, t) row, the flat key positions of its visible
    # selected keys, padded with a masked dummy so rows are rectangular (L = n * block).
    offs = torch.arange(a.block, device=dev)
    keys = (idx.clamp(min=0).unsqueeze(-1) * a.block + offs).reshape(a.batch, a.h_kv, t_q, L)
    p = (a.t_kv - t_q + torch.arange(t_q, device=dev)).view(1, 1, t_q, 1)
    valid = (idx.unsqueeze(-1) >= 0).expand(-1, -1, -1, -1, a.block).reshape_as(keys) & (keys <= p) & (keys < a.t_kv)
    keys = torch.where(valid, keys, torch.zeros_like(keys))
    bidx = torch.arange(a.batch, device=dev).view(-1, 1, 1, 1)
    gidx = torch.arange(a.h_kv, device=dev).view(1, -1, 1, 1)
    mask = valid.reshape(-1, 1, 1, L)  # [rows, 1, 1, L]

    def q_rows():
        return q.view(a.batch, t_q, a.h_kv, h, a.d_qk).permute(0, 2, 1, 3, 4).reshape(rows, h, a.d_qk)

    def packed_sdpa():
        kp = k[bidx, keys, gidx]  # [B, H_kv, T_q, L, D]
        vp = v[bidx, keys, gidx]
        qq = q_rows().unsqueeze(2)
        return F.scaled_dot_product_attention(qq, kp.reshape(rows, 1, L, a.d_qk).expand(-1, h, -1, -1),
                                              vp.reshape(rows, 1, L, a.d_v).expand(-1, h, -1, -1),
                                              attn_mask=mask)

    try:
        res["torch_packed_sdpa_us"] = time_ms(packed_sdpa, a.reps) * 1e3
    except Exception as e:  # out of memory, or a backend failing on this many rows
        res["torch_packed_sdpa_error"] = first_line(e)
    torch.cuda.empty_cache()

    # SDPA alone on the packed tensors, in its strongest form.
    qr = q_rows().contiguous()
    kp = k[bidx, keys, gidx].reshape(rows, L, a.d_qk)
    vp = v[bidx, keys, gidx].reshape(rows, L, a.d_v)
    vrows = valid.reshape(rows, L)
    us, name, tries, best = strongest_sdpa(qr, kp, vp, vrows, a.reps)
    res["torch_sdpa_on_packed_tries"] = tries
    if us is None:
        res["torch_sdpa_on_packed_error"] = "no SDPA form ran correctly on the packed tensors"
        return
    res["torch_sdpa_on_packed_us"] = us
    res["torch_sdpa_on_packed_form"] = name
    del kp, vp
    torch.cuda.empty_cache()

    # The same gather followed by that form: what a user who tuned the torch path would run.
    fn, ctx, m = best

    def packed_best():
        kp = k[bidx, keys, gidx].reshape(rows, L, a.d_qk)
        vp = v[bidx, keys, gidx].reshape(rows, L, a.d_v)
        return fn(q_rows(), kp, vp, m)

    try:
        with (ctx() if ctx else _Null()):
            res["torch_packed_sdpa_best_us"] = time_ms(packed_best, a.reps) * 1e3
    except Exception as e:
        res["torch_packed_sdpa_best_error"] = first_line(e)


if __name__ == "__main__":
    sys.exit(main())
