// The host reference and the numeric helpers of every correctness check. See host_reference.hpp.

#include "nsa/jit/host_reference.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>

namespace nsa::jit {

// Conversions --------------------------------------------------------------------------------------

float bf16_to_float(std::uint16_t bits) { return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }

std::uint16_t float_to_bf16(float value) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x0040u);  // quiet NaN
  // Round to nearest even: add 0x7fff plus the lowest kept bit; a carry into the exponent is
  // the correct rounding, and rounding past the largest finite value yields inf.
  const std::uint32_t rounded = x + 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>(rounded >> 16);
}

float fp16_to_float(std::uint16_t bits) {
  const std::uint32_t sign = (bits & 0x8000u) << 16;
  const std::uint32_t exp = (bits >> 10) & 0x1fu;
  const std::uint32_t man = bits & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    const float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));  // inf / NaN
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (man << 13));
}

std::uint16_t float_to_fp16(float value) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(value);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u);     // NaN
  if (ax >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);    // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                                     // below 2^-14: subnormal
    if (ax < 0x33000000u) return static_cast<std::uint16_t>(sign);            // below 2^-25: zero
    const std::uint32_t e = ax >> 23;
    const std::uint32_t m = (ax & 0x7fffffu) | 0x800000u;  // value = m * 2^(e-150)
    const std::uint32_t shift = 126 - e;                   // result = m * 2^(e-126), shift in [14, 24]
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;      // may carry into the smallest normal: correct
    return static_cast<std::uint16_t>(sign | r);
  }
  std::uint32_t h = (((ax >> 23) - 112) << 10) | ((ax & 0x7fffffu) >> 13);
  const std::uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // carry into the exponent is correct
  return static_cast<std::uint16_t>(sign | h);
}

float to_float(ElemType t, std::uint16_t bits) { return t == ElemType::bf16 ? bf16_to_float(bits) : fp16_to_float(bits); }
std::uint16_t from_float(ElemType t, float v) { return t == ElemType::bf16 ? float_to_bf16(v) : float_to_fp16(v); }
std::uint16_t nan_bits(ElemType t) { return t == ElemType::bf16 ? 0x7fc0 : 0x7e00; }

std::vector<std::uint16_t> encode(ElemType t, std::span<const float> values) {
  std::vector<std::uint16_t> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) out[i] = from_float(t, values[i]);
  return out;
}

std::vector<float> decode(ElemType t, std::span<const std::uint16_t> bits) {
  std::vector<float> out(bits.size());
  for (std::size_t i = 0; i < bits.size(); ++i) out[i] = to_float(t, bits[i]);
  return out;
}

// Shapes ---------------------------------------------------------------------------------------------

SelectionShape SelectionShape::from(const FamilySpec& f, const RuntimeShape& r) {
  SelectionShape s;
  s.batch = r.batch;
  s.t_q = r.t_q;
  s.t_kv = r.t_kv;
  s.h_kv = r.h_kv;
  s.h = f.h;
  s.d_qk = f.d_qk;
  s.d_v = f.d_v;
  s.block = f.block;
  s.n = f.n;
  return s;
}

float SelectionShape::effective_scale() const {
  return scale != 0 ? scale : 1.0f / std::sqrt(static_cast<float>(d_qk));
}

std::string SelectionShape::describe() const {
  std::ostringstream s;
  s << "B=" << batch << " Tq=" << t_q << " Tkv=" << t_kv << " Hkv=" << h_kv << " h=" << h << " dqk=" << d_qk
    << " dv=" << d_v << " blk=" << block << " n=" << n;
  return s.str();
}

std::optional<std::string> SelectionShape::validate() const {
  auto bad = [&](const std::string& what) { return std::optional<std::string>(what + " in shape " + describe()); };
  if (batch < 1 || t_q < 1 || t_kv < 1 || h_kv < 1) return bad("batch, T_q, T_kv and H_kv must be >= 1");
  if (t_q > t_kv) return bad("T_q must not exceed T_kv (query rows sit at the last T_q key positions)");
  if (h < 1 || d_qk < 1 || d_v < 1 || block < 1 || n < 1) return bad("h, D_qk, D_v, block and n must be >= 1");
  if (!std::isfinite(scale)) return bad("the softmax scale must be finite");
  return std::nullopt;
}

// The reference --------------------------------------------------------------------------------------

namespace {

template <class Acc>
std::expected<ReferenceOutput, std::string> reference_impl(const SelectionShape& s, std::span<const float> q,
                                                           std::span<const float> k, std::span<const float> v,
                                                           std::span<const std::int32_t> idx) {
  ReferenceOutput out;
  out.o.assign(static_cast<std::size_t>(s.o_elems()), 0.0);
  out.lse.assign(static_cast<std::size_t>(s.lse_elems()), -std::numeric_limits<double>::infinity());
  const Acc scale = static_cast<Acc>(s.effective_scale());
  const std::int64_t hq = s.h_q();
  std::vector<std::int64_t> keys;
  std::vector<Acc> scores, acc(static_cast<std::size_t>(s.d_v));

  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t g = 0; g < s.h_kv; ++g)
      for (std::int64_t t = 0; t < s.t_q; ++t) {
        const std::int64_t p = s.position(t);
        const std::int32_t* row = idx.data() + ((b * s.h_kv + g) * s.t_q + t) * s.n;
        // The visible keys of this row: every selected block, cut at T_kv and at p(t).
        keys.clear();
        for (int slot = 0; slot < s.n; ++slot) {
          const std::int32_t c = row[slot];
          if (c == -1) continue;
          if (c < -1)
            return std::unexpected("block_idx[" + std::to_string(b) + "," + std::to_string(g) + "," +
                                   std::to_string(t) + "," + std::to_string(slot) + "] = " + std::to_string(c) +
                                   ": only -1 marks an empty slot");
          for (int other = 0; other < slot; ++other)
            if (row[other] == c)
              return std::unexpected("block_idx row (b=" + std::to_string(b) + ", g=" + std::to_string(g) +
                                     ", t=" + std::to_string(t) + ") selects block " + std::to_string(c) +
                                     " twice: valid entries must be distinct");
          const std::int64_t start = std::int64_t{c} * s.block;
          const std::int64_t end = std::min<std::int64_t>({start + s.block, s.t_kv, p + 1});
          for (std::int64_t j = start; j < end; ++j) keys.push_back(j);
        }
        if (keys.empty()) continue;  // O stays 0, LSE stays -inf
        for (std::int64_t hi = 0; hi < s.h; ++hi) {
          const std::int64_t i = g * s.h + hi;
          const float* qv = q.data() + ((b * s.t_q + t) * hq + i) * s.d_qk;
          scores.resize(keys.size());
          Acc m = -std::numeric_limits<Acc>::infinity();
          for (std::size_t kk = 0; kk < keys.size(); ++kk) {
            const float* kv = k.data() + ((b * s.t_kv + keys[kk]) * s.h_kv + g) * s.d_qk;
            Acc dot = 0;
            for (int d = 0; d < s.d_qk; ++d) dot += static_cast<Acc>(qv[d]) * static_cast<Acc>(kv[d]);
            scores[kk] = dot * scale;
            m = std::max(m, scores[kk]);
          }
          Acc sum = 0;
          std::fill(acc.begin(), acc.end(), Acc{0});
          for (std::size_t kk = 0; kk < keys.size(); ++kk) {
            const Acc w = std::exp(scores[kk] - m);
            sum += w;
            const float* vv = v.data() + ((b * s.t_kv + keys[kk]) * s.h_kv + g) * s.d_v;
            for (int d = 0; d < s.d_v; ++d) acc[static_cast<std::size_t>(d)] += w * static_cast<Acc>(vv[d]);
          }
          double* o = out.o.data() + ((b * s.t_q + t) * hq + i) * s.d_v;
          for (int d = 0; d < s.d_v; ++d) o[d] = static_cast<double>(acc[static_cast<std::size_t>(d)] / sum);
          out.lse[static_cast<std::size_t>((b * hq + i) * s.t_q + t)] = static_cast<double>(m + std::log(sum));
        }
      }
  return out;
}

}  // namespace

std::expected<ReferenceOutput, std::string> selection_reference(const SelectionShape& shape, std::span<const float> q,
                                                                std::span<const float> k, std::span<const float> v,
                                                                std::span<const std::int32_t> block_idx,
                                                                Accumulate accumulate) {
  if (auto bad = shape.validate()) return std::unexpected(*bad);
  auto size_check = [&](const char* name, std::size_t got, std::int64_t want) -> std::optional<std::string> {
    if (static_cast<std::int64_t>(got) == want) return std::nullopt;
    return std::string(name) + " has " + std::to_string(got) + " elements but shape " + shape.describe() + " needs " +
           std::to_string(want);
  };
  for (auto err : {size_check("Q", q.size(), shape.q_elems()), size_check("K", k.size(), shape.k_elems()),
                   size_check("V", v.size(), shape.v_elems()), size_check("block_idx", block_idx.size(), shape.idx_elems())})
    if (err) return std::unexpected(*err);
  return accumulate == Accumulate::fp64 ? reference_impl<double>(shape, q, k, v, block_idx)
                                        : reference_impl<float>(shape, q, k, v, block_idx);
}

// Error metrics --------------------------------------------------------------------------------------

std::string ErrorStats::describe() const {
  char s[200];
  std::snprintf(s, sizeof s, "rel_l2=%.3e mean_abs=%.3e max_abs=%.3e at %lld, %lld NaN of %lld", rel_l2, mean_abs,
                max_abs, static_cast<long long>(max_abs_index), static_cast<long long>(nan_count),
                static_cast<long long>(count));
  return s;
}

ErrorStats compare(std::span<const float> got, std::span<const double> ref) {
  ErrorStats st;
  if (got.size() != ref.size()) {
    st.count = static_cast<std::int64_t>(std::max(got.size(), ref.size()));
    st.nan_count = st.count;
    st.rel_l2 = st.max_abs = st.mean_abs = std::numeric_limits<double>::infinity();
    return st;
  }
  double diff2 = 0, ref2 = 0, abs_sum = 0;
  std::int64_t finite_pairs = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    ++st.count;
    const double r = ref[i], x = got[i];
    if (!std::isfinite(r)) {
      if (!(x == r)) ++st.nan_count;  // a non-finite reference must be matched exactly
      continue;
    }
    if (!std::isfinite(x)) {
      ++st.nan_count;
      continue;
    }
    const double d = x - r;
    diff2 += d * d;
    ref2 += r * r;
    abs_sum += std::abs(d);
    ++finite_pairs;
    if (std::abs(d) > st.max_abs) {
      st.max_abs = std::abs(d);
      st.max_abs_index = static_cast<std::int64_t>(i);
    }
  }
  st.mean_abs = finite_pairs ? abs_sum / static_cast<double>(finite_pairs) : 0;
  if (ref2 > 0) st.rel_l2 = std::sqrt(diff2) / std::sqrt(ref2);
  else st.rel_l2 = diff2 == 0 ? 0 : std::numeric_limits<double>::infinity();
  return st;
}

LseStats compare_lse(std::span<const float> got, std::span<const double> ref) {
  LseStats st;
  if (got.size() != ref.size()) {
    st.count = static_cast<std::int64_t>(std::max(got.size(), ref.size()));
    st.inf_mismatches = st.count;
    return st;
  }
  for (std::size_t i = 0; i < got.size(); ++i) {
    ++st.count;
    const double r = ref[i], x = got[i];
    if (std::isinf(r) && r < 0) {
      if (!(std::isinf(x) && x < 0)) ++st.inf_mismatches;
    } else if (!std::isfinite(x)) {
      ++st.inf_mismatches;
    } else {
      st.max_abs = std::max(st.max_abs, std::abs(x - r));
    }
  }
  return st;
}

std::int64_t empty_row_violations(const SelectionShape& s, std::span<const float> got_o,
                                  std::span<const double> ref_lse) {
  if (static_cast<std::int64_t>(got_o.size()) != s.o_elems() || static_cast<std::int64_t>(ref_lse.size()) != s.lse_elems())
    return std::max<std::int64_t>(1, s.o_elems());
  std::int64_t bad = 0;
  const std::int64_t hq = s.h_q();
  for (std::int64_t b = 0; b < s.batch; ++b)
    for (std::int64_t i = 0; i < hq; ++i)
      for (std::int64_t t = 0; t < s.t_q; ++t) {
        const double l = ref_lse[static_cast<std::size_t>((b * hq + i) * s.t_q + t)];
        if (!(std::isinf(l) && l < 0)) continue;
        const float* o = got_o.data() + ((b * s.t_q + t) * hq + i) * s.d_v;
        for (int d = 0; d < s.d_v; ++d)
          if (o[d] != 0.0f) ++bad;  // NaN != 0 too
      }
  return bad;
}

}  // namespace nsa::jit
