// The union of the selections of QTILE consecutive queries of one (b, g), shared by the designs
// that load a K/V block once for several queries (prefill_shared, prefill_stream).
//
// Built in shared memory (nsa_layout::union_bytes(QTILE, n)) for the tile's QTILE * n slots:
//   1. each slot holds its block c if c >= 0 and its query may see any key of it (the block
//      starts before the query's visible limit lim_q = min(p(t0+q)+1, T_kv)), else kNone;
//   2. a bitonic sort (E = QTILE*n rounded up to a power of two) and a warp-ballot compaction of
//      the distinct values give the union list ulist[0 .. nu) in ascending block order;
//   3. each valid slot finds its block in the list by binary search and sets its query's bit in
//      umask[u] (atomicOr), so umask[u] says which queries selected union block u.
// NSA_UNION_BUILD chooses how steps 1-3 are done. 0 (the default): in shared memory as above,
// one element a thread, a CTA (or warp) barrier a sort step. 1: for E <= 256 (every n = 16 tile)
// one warp sorts in registers, E / 32 keys a lane, the cross-lane steps as shuffles, no barrier
// but the warp's. 2: a bitmap of the blocks the tile's queries may see replaces the sort, where
// it fits the sort's buffer (E words: 32 * E blocks): the slots set their blocks' bits, one warp
// turns the words into the ascending list, four barriers in all; larger contexts sort. 1 was
// measured on the H100 (docs/performance.md, v18): 2-3% slower for the 12-warp prefill_stream
// tile, 5% faster for prefill_group's non-persistent clustered tiles, 7% slower for its
// persistent ones at D_qk = 192: not a default. 2 is compiled, in CI, but has not run on a GPU
// (v18 says what to run). Both stay until that run has compared them.
// Queries of one tile are consecutive, so query q's limit is lim0 + q (never above T_kv), and
// the blocks ulist[0, nlow) end at or below lim0: every query that selected one sees all of it
// (ascending order makes them a prefix).
//
// Example: QTILE = 2, n = 3, block 64, prefill T = 1000, t0 = 700 (p = 700, 701): query 0 selects
// {0, 10, 4}, query 1 selects {10, 7, 0}: union {0, 4, 7, 10}, masks {0b11, 0b01, 0b10, 0b11},
// nlow = 3; block 10 (keys 640..703) is cut at 700 for query 0 and at 701 for query 1.
#pragma once

#include "common.cuh"

#ifndef NSA_UNION_BUILD
#define NSA_UNION_BUILD 0
#endif

/// Work item `item` of the query-tile designs: items are numbered (b, g, tile) with the tile
/// fastest, so neighbouring CTAs take neighbouring queries of one (b, g), which share blocks in L2.
struct QueryTile {
  long long b, g;
  long long t0;     // the tile's first query
  int nq;           // its queries: QTILE, fewer in the last tile of a row
  long long lim0;   // query t0's visible limit; query t0 + q's is lim0 + q (never above T_kv)
  const int* sel;   // block_idx row of query t0 (the rows of t0 + 1, ... follow it)
};
template <int QTILE>
__device__ __forceinline__ QueryTile query_tile(long long item, long long qtiles, const SelectionParams& p) {
  QueryTile q;
  const long long qt = item % qtiles;
  const long long bg = item / qtiles;
  q.g = bg % p.h_kv;
  q.b = bg / p.h_kv;
  q.t0 = qt * QTILE;
  q.nq = p.t_q - q.t0 < QTILE ? (int)(p.t_q - q.t0) : QTILE;
  q.lim0 = visible_limit(q.t0, p);
  q.sel = reinterpret_cast<const int*>(p.block_idx) + ((q.b * p.h_kv + q.g) * p.t_q + q.t0) * NSEL;
  return q;
}

template <int QTILE, int THREADS>
struct QueryTileUnion {
  static constexpr int SLOTS = QTILE * NSEL;
  static constexpr int SORT_N = nsa_layout::union_sort_size(QTILE, NSEL);
  static constexpr int kNone = 0x7fffffff;
  // The register build (NSA_UNION_BUILD 1): PER keys a lane (key e = lane * PER + r), for sorts
  // of up to 256 keys. The bitmap build (2): where the tile's visible blocks fit SORT_N words.
  static constexpr bool IN_REGISTERS = NSA_UNION_BUILD == 1 && SORT_N <= 256;
  static constexpr bool BY_BITMAP = NSA_UNION_BUILD == 2;
  static constexpr int PER = SORT_N >= 32 ? SORT_N / 32 : 1;
  static_assert(QTILE >= 1 && QTILE <= 32, "qtile must be in [1, 32] (one mask bit per query)");

  int* sort_s;
  int* ulist;       // union blocks, ascending
  unsigned* umask;  // bit q: query q selected ulist[u]
  int* scalars;
  int nu;    // union blocks
  int nlow;  // ulist[0, nlow) are wholly visible to every query that selected them

  /// Carves the union's shared memory (union_bytes(QTILE, n) bytes at `smem`).
  __device__ __forceinline__ void carve(unsigned char* smem) {
    sort_s = reinterpret_cast<int*>(smem);
    ulist = sort_s + SORT_N;
    umask = reinterpret_cast<unsigned*>(ulist + SLOTS);
    scalars = reinterpret_cast<int*>(umask + SLOTS);
  }

  /// The block of slot e (query e / n, slot e % n) if that query may see any of it, else kNone.
  /// `sel_tile` is block_idx's row of query t0 (the rows of t0, t0+1, ... are consecutive).
  __device__ __forceinline__ static int slot_block(const int* sel_tile, int e, int nq, long long lim0) {
    const int q = e / NSEL;
    if (q >= nq) return kNone;
    const int c = sel_tile[e];
    return visible_in_block(c, lim0 + q) > 0 ? c : kNone;
  }

  /// Builds the union of the first `nq` queries of the tile. Every thread of the CTA calls it
  /// (THREADS of them) and gets the same nu and nlow; it synchronises the CTA, and the caller must
  /// synchronise before building the next tile's union over this one.
  __device__ __forceinline__ void build(const int* sel_tile, int nq, long long lim0) {
    if constexpr (IN_REGISTERS) {
      if (threadIdx.x < 32) build_in_registers(sel_tile, nq, lim0, (int)threadIdx.x);
      __syncthreads();
      read_counts();
    } else {
      build_in_shared<THREADS, false>(sel_tile, nq, lim0, (int)threadIdx.x);
    }
  }

  /// build() by one warp alone (prefill_stream's producer warp builds the next tile's union into
  /// a second buffer while the consumers work on this one): the same steps with warp barriers.
  /// Every lane of the calling warp calls it; other warps read the result only after a barrier
  /// that orders them after it (then read_counts()).
  __device__ __forceinline__ void build_warp(const int* sel_tile, int nq, long long lim0) {
    if constexpr (IN_REGISTERS) {
      build_in_registers(sel_tile, nq, lim0, (int)(threadIdx.x & 31));
    } else {
      build_in_shared<32, true>(sel_tile, nq, lim0, (int)(threadIdx.x & 31));
    }
  }

  /// nu and nlow from the union's shared memory, for a thread that did not build it.
  __device__ __forceinline__ void read_counts() {
    nu = scalars[0];
    nlow = scalars[1];
  }

  /// Reorders the built union for two groups of four queries (mask bits 0-3 and 4-7; prefill_group
  /// with two warpgroups): the blocks only the first group selected, then those both did, then
  /// those only the second did, each class in ascending order. Each group's blocks are then
  /// consecutive, so that it computes them as one overlapped run. nlow no longer holds (only
  /// prefill_shared reads it). Run by every lane of one warp after the union is built and before
  /// any other thread reads it (the caller's barrier, or the ready arrival, orders them).
  __device__ __forceinline__ void order_for_two_groups() {
    static_assert(QTILE == 8, "two groups of four queries");
    constexpr int PER = (SLOTS + 31) / 32;
    const int lane = (int)(threadIdx.x & 31);
    const unsigned below = (1u << lane) - 1u;
    int v[PER], cls[PER];
    unsigned m[PER];
    int count[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int u = i * 32 + lane;
      const bool valid = u < nu;
      v[i] = valid ? ulist[u] : 0;
      m[i] = valid ? umask[u] : 0u;
      cls[i] = !valid ? 3 : (m[i] & 0xfu) != 0u ? ((m[i] & 0xf0u) != 0u ? 1 : 0) : 2;
      count[0] += __popc(__ballot_sync(0xffffffffu, cls[i] == 0));
      count[1] += __popc(__ballot_sync(0xffffffffu, cls[i] == 1));
    }
    __syncwarp();
    int base[3] = {0, count[0], count[0] + count[1]};
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const unsigned b0 = __ballot_sync(0xffffffffu, cls[i] == 0);
      const unsigned b1 = __ballot_sync(0xffffffffu, cls[i] == 1);
      const unsigned b2 = __ballot_sync(0xffffffffu, cls[i] == 2);
      if (cls[i] < 3) {
        const unsigned mine = cls[i] == 0 ? b0 : cls[i] == 1 ? b1 : b2;
        const int at = base[cls[i]] + __popc(mine & below);
        ulist[at] = v[i];
        umask[at] = m[i];
      }
      base[0] += __popc(b0);
      base[1] += __popc(b1);
      base[2] += __popc(b2);
    }
    __syncwarp();
  }

 private:
  /// The position of block c in ulist[0, n), which holds it (binary search of the ascending list).
  __device__ __forceinline__ int position_of(int c, int n) const {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (ulist[mid] < c) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /// Puts the smaller of keys (a, b) in a when `ascending`, else the larger.
  __device__ __forceinline__ static void order_pair(int& a, int& b, bool ascending) {
    const int lo = min(a, b), hi = max(a, b);
    a = ascending ? lo : hi;
    b = ascending ? hi : lo;
  }

  /// The union built by one warp (every lane calls it) in registers: the slots' blocks are keys
  /// lane * PER + r of a bitonic sort over 32 * PER keys (steps within a lane compare registers,
  /// steps across lanes exchange them by shuffle), whose distinct valid keys are compacted into
  /// ulist by ballots (lane-major order: every key of a lower lane precedes this lane's); each
  /// slot's block, kept from the load, is then found in ulist by binary search (the PER searches
  /// of a lane independent) and its query's bit set in umask. Leaves nu and nlow in every lane;
  /// lane 0 also stores them in scalars for read_counts(). Only __syncwarp orders the steps.
  __device__ __forceinline__ void build_in_registers(const int* sel_tile, int nq, long long lim0, int lane) {
    int key[PER], slot[PER];
#pragma unroll
    for (int r = 0; r < PER; ++r) {
      const int e = lane * PER + r;
      slot[r] = e < SLOTS ? slot_block(sel_tile, e, nq, lim0) : kNone;
      key[r] = slot[r];
    }
#pragma unroll
    for (int k = 2; k <= 32 * PER; k <<= 1) {
#pragma unroll
      for (int j = k >> 1; j > 0; j >>= 1) {
        if (j < PER) {  // both keys in this lane: registers r and r + j
#pragma unroll
          for (int r = 0; r < PER; ++r)
            if ((r & j) == 0) order_pair(key[r], key[r + j], ((lane * PER + r) & k) == 0);
        } else {  // key e and e ^ j are register r of this lane and of lane ^ (j / PER)
          const int other = j / PER;
          const bool upper = (lane & other) != 0;
#pragma unroll
          for (int r = 0; r < PER; ++r) {
            const int theirs = __shfl_xor_sync(0xffffffffu, key[r], other);
            const bool ascending = ((lane * PER + r) & k) == 0;
            // The lower key of the pair keeps the smaller when ascending, the upper the larger.
            const bool keep_small = ascending != upper;
            key[r] = keep_small ? min(key[r], theirs) : max(key[r], theirs);
          }
        }
      }
    }
    // Distinct valid keys: key e differs from key e - 1 (the previous lane's last for r = 0).
    const int before = __shfl_up_sync(0xffffffffu, key[PER - 1], 1);
    const unsigned below = (1u << lane) - 1u;
    int at = 0, n_union = 0, n_low = 0;
    bool keep[PER];
#pragma unroll
    for (int r = 0; r < PER; ++r) {
      const int prev = r > 0 ? key[r - 1] : (lane > 0 ? before : -1);
      keep[r] = key[r] != kNone && key[r] != prev;
      const unsigned kb = __ballot_sync(0xffffffffu, keep[r]);
      at += __popc(kb & below);
      n_union += __popc(kb);
      n_low += __popc(__ballot_sync(0xffffffffu, keep[r] && ((long long)key[r] + 1) * BLK <= lim0));
    }
#pragma unroll
    for (int r = 0; r < PER; ++r) {
      if (keep[r]) {
        ulist[at] = key[r];
        umask[at] = 0u;
      }
      at += keep[r] ? 1 : 0;
    }
    __syncwarp();  // ulist and the cleared masks are written before any lane searches or sets bits
#pragma unroll
    for (int r = 0; r < PER; ++r) {
      const int c = slot[r];
      if (c == kNone) continue;
      atomicOr(&umask[position_of(c, n_union)], 1u << ((lane * PER + r) / NSEL));
    }
    if (lane == 0) {
      scalars[0] = n_union;
      scalars[1] = n_low;
    }
    __syncwarp();
    nu = n_union;
    nlow = n_low;
  }

  template <int NT, bool WARP_ONLY>
  __device__ __forceinline__ static void sync_group() {
    if constexpr (WARP_ONLY) {
      __syncwarp();
    } else {
      __syncthreads();
    }
  }

  /// The union built by NT threads in shared memory: as a bitmap where NSA_UNION_BUILD 2 asks for
  /// it and the tile's visible blocks fit, else sorted.
  template <int NT, bool WARP_ONLY>
  __device__ __forceinline__ void build_in_shared(const int* sel_tile, int nq, long long lim0, int tid) {
    if constexpr (BY_BITMAP) {
      if (const int words = bitmap_words(nq, lim0); words <= SORT_N)
        return build_by_bitmap<NT, WARP_ONLY>(sel_tile, nq, lim0, tid, words);
    }
    build_by<NT, WARP_ONLY>(sel_tile, nq, lim0, tid);
  }

  /// The last step of build_by and build_by_bitmap, once ulist and its cleared masks are written
  /// and scalars holds the counts: every thread reads the counts, and each valid slot sets its
  /// query's bit in its block's mask (found in ulist by binary search).
  template <int NT, bool WARP_ONLY>
  __device__ __forceinline__ void set_masks(const int* sel_tile, int nq, long long lim0, int tid) {
    sync_group<NT, WARP_ONLY>();
    nu = scalars[0];
    nlow = scalars[1];
    for (int e = tid; e < SLOTS; e += NT) {
      const int c = slot_block(sel_tile, e, nq, lim0);
      if (c == kNone) continue;
      atomicOr(&umask[position_of(c, nu)], 1u << (e / NSEL));
    }
    sync_group<NT, WARP_ONLY>();
  }

  /// Words of a bitmap with a bit for every block some query of the tile may see: blocks c with
  /// c * BLK below the last query's limit lim0 + nq - 1 (0 when no query sees a key).
  __device__ __forceinline__ static int bitmap_words(int nq, long long lim0) {
    const long long lim = lim0 + nq - 1;
    return lim <= 0 ? 0 : (int)(((lim + BLK - 1) / BLK + 31) / 32);
  }

  /// The union built by NT threads (tid in [0, NT)) as a bitmap of the visible blocks in sort_s
  /// (`words` <= SORT_N of them: bit c % 32 of word c / 32 is block c), synchronised by
  /// sync_group: the slots set their blocks' bits (duplicates fall together), one warp turns the
  /// words into ulist in ascending order (a scan of their popcounts gives each word's first
  /// position), and each slot finds its block in ulist by binary search. Four barriers instead of
  /// the sort's log2(SORT_N) * (log2(SORT_N) + 1) / 2.
  template <int NT, bool WARP_ONLY>
  __device__ __forceinline__ void build_by_bitmap(const int* sel_tile, int nq, long long lim0, int tid, int words) {
    unsigned* bits = reinterpret_cast<unsigned*>(sort_s);
    for (int w = tid; w < words; w += NT) bits[w] = 0u;
    sync_group<NT, WARP_ONLY>();
    for (int e = tid; e < SLOTS; e += NT) {
      const int c = slot_block(sel_tile, e, nq, lim0);
      if (c != kNone) atomicOr(&bits[c >> 5], 1u << (c & 31));
    }
    sync_group<NT, WARP_ONLY>();
    if (tid < 32) {
      // Blocks below low_end end at or below lim0: every query that selected one sees all of it.
      const long long low_end = lim0 > 0 ? lim0 / BLK : 0;
      int n_union = 0, n_low = 0;
      for (int w0 = 0; w0 < words; w0 += 32) {
        const int w = w0 + tid;
        unsigned word = w < words ? bits[w] : 0u;
        const int count = __popc(word);
        int upto = count;  // inclusive scan of the counts over the lanes
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const int t = __shfl_up_sync(0xffffffffu, upto, o);
          if (tid >= o) upto += t;
        }
        const long long first = (long long)w * 32;
        const unsigned low_bits =
            low_end >= first + 32 ? 0xffffffffu : low_end <= first ? 0u : (1u << (int)(low_end - first)) - 1u;
        int low = __popc(word & low_bits);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) low += __shfl_xor_sync(0xffffffffu, low, o);
        int at = n_union + upto - count;
        n_union += __shfl_sync(0xffffffffu, upto, 31);
        n_low += low;
        for (; word != 0u; word &= word - 1u, ++at) {
          ulist[at] = w * 32 + __ffs(word) - 1;
          umask[at] = 0u;
        }
      }
      if (tid == 0) {
        scalars[0] = n_union;
        scalars[1] = n_low;
      }
    }
    set_masks<NT, WARP_ONLY>(sel_tile, nq, lim0, tid);
  }

  /// The union built by NT threads (tid in [0, NT)), synchronised by sync_group.
  template <int NT, bool WARP_ONLY>
  __device__ __forceinline__ void build_by(const int* sel_tile, int nq, long long lim0, int tid) {
    for (int e = tid; e < SORT_N; e += NT) sort_s[e] = e < SLOTS ? slot_block(sel_tile, e, nq, lim0) : kNone;
    sync_group<NT, WARP_ONLY>();
    for (int k = 2; k <= SORT_N; k <<= 1)
      for (int j = k >> 1; j > 0; j >>= 1) {
        for (int i = tid; i < SORT_N; i += NT) {
          const int ixj = i ^ j;
          if (ixj > i) {
            const int a = sort_s[i], c = sort_s[ixj];
            const bool ascending = (i & k) == 0;
            if ((a > c) == ascending) {
              sort_s[i] = c;
              sort_s[ixj] = a;
            }
          }
        }
        sync_group<NT, WARP_ONLY>();
      }
    if (tid < 32) {
      int n_union = 0, n_low = 0;
      for (int i0 = 0; i0 < SORT_N; i0 += 32) {
        const int i = i0 + tid;
        const int v = i < SORT_N ? sort_s[i] : kNone;
        const int prev = (i > 0 && i < SORT_N) ? sort_s[i - 1] : -1;
        const bool keep = v != kNone && v != prev;
        const unsigned kb = __ballot_sync(0xffffffffu, keep);
        if (keep) {
          const int u = n_union + __popc(kb & ((1u << tid) - 1u));
          ulist[u] = v;
          umask[u] = 0u;
        }
        n_union += __popc(kb);
        n_low += __popc(__ballot_sync(0xffffffffu, keep && ((long long)v + 1) * BLK <= lim0));
      }
      if (tid == 0) {
        scalars[0] = n_union;
        scalars[1] = n_low;
      }
    }
    set_masks<NT, WARP_ONLY>(sel_tile, nq, lim0, tid);
  }
};
