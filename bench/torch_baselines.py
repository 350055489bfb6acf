#!/usr/bin/env python3
"""What a user would otherwise run, timed on the same GPU: PyTorch's packed SDPA (gather with
precomputed indices + F.scaled_dot_product_attention) and PyTorch's dense causal flash attention.

Prints one table row per case and writes JSON with --json. Selection patterns are the same as
nsa-bench-kernels': `random` (block 0, the two most recent blocks, the rest drawn from earlier
blocks) and `clustered` (the queries of one block share a random set of earlier blocks, each
query swapping up to two of them).

    python3 bench/torch_baselines.py --case decode --batch 64 --t-kv 32768
"""
import argparse
import json
import math
import sys

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


def time_ms(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
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


def main():
    ap = argparse.ArgumentParser()
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
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    t_q = a.t_q or (1 if a.case == "decode" else a.t_kv)
    h = a.h_q // a.h_kv
    gen = torch.Generator().manual_seed(torch.seed() % (2**31))
    dt = torch.bfloat16
    q = torch.randn(a.batch, t_q, a.h_q, a.d_qk, device=dev, dtype=dt)
    k = torch.randn(a.batch, a.t_kv, a.h_kv, a.d_qk, device=dev, dtype=dt)
    v = torch.randn(a.batch, a.t_kv, a.h_kv, a.d_v, device=dev, dtype=dt)
    if a.dense_only:
        qq, kk, vv = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        us = time_ms(lambda: F.scaled_dot_product_attention(qq, kk, vv, is_causal=(t_q == a.t_kv), enable_gqa=True)) * 1e3
        print(json.dumps({"case": a.case, "batch": a.batch, "t_q": t_q, "t_kv": a.t_kv,
                          "device": torch.cuda.get_device_name(), "torch_dense_flash_us": us}))
        return 0
    idx = selection(a.pattern, a.batch, a.h_kv, t_q, a.t_kv, a.block, a.n, gen, dev)

    # Precomputed gather indices: for each (b, g, t) row, the flat key positions of its visible
    # selected keys, padded with a masked dummy so rows are rectangular (L = n * block).
    L = a.n * a.block
    offs = torch.arange(a.block, device=dev)
    keys = (idx.clamp(min=0).unsqueeze(-1) * a.block + offs).reshape(a.batch, a.h_kv, t_q, L)
    p = (a.t_kv - t_q + torch.arange(t_q, device=dev)).view(1, 1, t_q, 1)
    valid = (idx.unsqueeze(-1) >= 0).expand(-1, -1, -1, -1, a.block).reshape_as(keys) & (keys <= p) & (keys < a.t_kv)
    keys = torch.where(valid, keys, torch.zeros_like(keys))
    bidx = torch.arange(a.batch, device=dev).view(-1, 1, 1, 1)
    gidx = torch.arange(a.h_kv, device=dev).view(1, -1, 1, 1)
    mask = valid.reshape(-1, 1, 1, L)  # [rows, 1, 1, L]

    def packed_sdpa():
        kp = k[bidx, keys, gidx]  # [B, H_kv, T_q, L, D]
        vp = v[bidx, keys, gidx]
        rows = a.batch * a.h_kv * t_q
        qq = q.view(a.batch, t_q, a.h_kv, h, a.d_qk).permute(0, 2, 1, 3, 4).reshape(rows, h, 1, a.d_qk)
        return F.scaled_dot_product_attention(qq, kp.reshape(rows, 1, L, a.d_qk).expand(-1, h, -1, -1),
                                              vp.reshape(rows, 1, L, a.d_v).expand(-1, h, -1, -1),
                                              attn_mask=mask)

    def dense_flash():
        qq = q.transpose(1, 2)
        kk = k.transpose(1, 2)
        vv = v.transpose(1, 2)
        return F.scaled_dot_product_attention(qq, kk, vv, is_causal=(t_q == a.t_kv), enable_gqa=True)

    res = {"case": a.case, "pattern": a.pattern, "batch": a.batch, "t_q": t_q, "t_kv": a.t_kv,
           "device": torch.cuda.get_device_name()}
    res["torch_packed_sdpa_us"] = time_ms(packed_sdpa) * 1e3
    if a.case == "prefill" or a.batch <= 128:
        res["torch_dense_flash_us"] = time_ms(dense_flash) * 1e3
    print(json.dumps(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)


if __name__ == "__main__":
    sys.exit(main())
