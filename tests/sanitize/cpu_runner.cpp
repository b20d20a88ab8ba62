// The CPU kernels (csrc/cpu, every ISA build) run under ASan + UBSan on exact-size
// buffers, against a naive double-precision reference computed here. Which build runs:
// FUSEDCONV_CPU_ISA, as in the extension. Prints one line per case; exit 1 on a mismatch.
//   cpu_runner
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cpu/attention.h"
#include "cpu/conv3x3.h"
#include "cpu/group_norm_stats.h"
#include "cpu/isa.h"
#include "cpu/linear.h"

using namespace fusedconv;
using namespace fusedconv::cpu;

namespace {

uint64_t rng_state = 88172645463325252ull;
double uniform() {  // xorshift: deterministic inputs in [-1, 1)
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return double(rng_state >> 11) / double(1ull << 52) - 1.0;
}

// A buffer of n values of storage type T (exact size: ASan sees any overrun) and its
// values as doubles.
template <class T>
struct Buf {
  std::vector<T> data;
  std::vector<double> value;
  explicit Buf(size_t n, double scale = 1.0, double loc = 0.0) {
    for (size_t i = 0; i < n; ++i) {
      data.push_back(from_f32<T>(float(loc + scale * uniform())));
      value.push_back(to_f32(data.back()));
    }
  }
};

constexpr double unit_roundoff(DType dt) { return dt == DType::f32 ? 0x1p-24 : dt == DType::f16 ? 0x1p-11 : 0x1p-8; }

int failures = 0;

// |got - want| <= (8u + K 2^-23) * terms + 1e-30 for every element.
template <class T>
void check(const char* what, const std::vector<T>& got, const std::vector<double>& want,
           const std::vector<double>& terms, DType dt, int k) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = (8 * unit_roundoff(dt) + k * 0x1p-23) * terms[i] + 1e-30;
    worst = std::fmax(worst, std::fabs(double(to_f32(got[i])) - want[i]) / tol);
  }
  const bool ok = worst <= 1.0 && !std::isnan(worst);
  failures += !ok;
  std::printf("%s %s (error / tolerance %.3f)\n", ok ? "ok  " : "FAIL", what, worst);
}

template <class T>
void conv_case(DType dt, int n, int h, int w, int c, int o, int groups, int up, bool silu, int shortcut_c,
               bool residual, bool pixel_norm = false) {
  const int ho = h * up, wo = w * up;
  Buf<T> x(size_t(n) * h * w * c), wt(size_t(o) * 9 * c, 0.3), gamma(c, 0.2, 1.0), beta(c, 0.2), bias(o, 0.1);
  Buf<T> res(residual ? size_t(n) * ho * wo * o : 0), sx(size_t(n) * ho * wo * shortcut_c),
      sw(size_t(o) * shortcut_c, 0.3), sb(shortcut_c ? o : 0, 0.1);
  // statistics in double, stored as the kernels receive them (float)
  std::vector<float> stats(pixel_norm ? size_t(n) * h * w : size_t(n) * std::max(groups, 1) * 2);
  for (size_t px = 0; pixel_norm && px < stats.size(); ++px) {
    double ss = 0;
    for (int ch = 0; ch < c; ++ch) ss += x.value[px * c + ch] * x.value[px * c + ch];
    stats[px] = float(std::sqrt(double(c)) / std::fmax(std::sqrt(ss), 1e-12));
  }
  for (int b = 0; b < n && groups; ++b) {
    for (int g = 0; g < groups; ++g) {
      double s = 0, s2 = 0, cnt = 0;
      for (int p = 0; p < h * w; ++p)
        for (int ch = g * (c / groups); ch < (g + 1) * (c / groups); ++ch) {
          const double v = x.value[(size_t(b) * h * w + p) * c + ch];
          s += v, s2 += v * v, cnt += 1;
        }
      const double mean = s / cnt;
      stats[(b * groups + g) * 2] = float(mean);
      stats[(b * groups + g) * 2 + 1] = float(1 / std::sqrt(s2 / cnt - mean * mean + 1e-6));
    }
  }
  const bool norm = groups > 0 || pixel_norm;
  const Conv3x3Params p{n, h, w, c, ho, wo, o, groups, int(pixel_norm), up, int(silu), 1, int(residual), shortcut_c,
                        int(shortcut_c > 0)};
  std::vector<T> out(size_t(n) * ho * wo * o);
  const Conv3x3Buffers bufs{x.data.data(), wt.data.data(), norm ? stats.data() : nullptr,
                            norm ? gamma.data.data() : nullptr, norm ? beta.data.data() : nullptr,
                            bias.data.data(), residual ? res.data.data() : nullptr,
                            shortcut_c ? sx.data.data() : nullptr, shortcut_c ? sw.data.data() : nullptr,
                            shortcut_c ? sb.data.data() : nullptr, out.data()};
  const Conv3x3CpuPlan plan = plan_conv3x3(p, dt, 3);
  std::vector<float> scratch(plan.scratch_floats());
  conv3x3(p, dt, bufs, plan, scratch.data());

  // reference: the activation as the kernels round it, then the sums in double
  std::vector<double> act(size_t(n) * h * w * c);
  for (size_t i = 0; i < act.size(); ++i) {
    const int ch = int(i % c), b = int(i / (size_t(h) * w * c));
    double a = x.value[i];
    if (groups) {
      const int g = ch / (c / groups);
      a = (a - stats[(b * groups + g) * 2]) * stats[(b * groups + g) * 2 + 1] * gamma.value[ch] + beta.value[ch];
    }
    if (pixel_norm) a = a * stats[i / c] * gamma.value[ch] + beta.value[ch];
    if (silu) a = a / (1 + std::exp(-a));
    act[i] = (norm || silu) ? double(round_to<T>(float(a))) : a;
  }
  std::vector<double> want(out.size()), terms(out.size());
  for (int b = 0; b < n; ++b)
    for (int y = 0; y < ho; ++y)
      for (int xx = 0; xx < wo; ++xx)
        for (int oc = 0; oc < o; ++oc) {
          double s = bias.value[oc], t = std::fabs(bias.value[oc]);
          for (int ky = 0; ky < 3; ++ky)
            for (int kx = 0; kx < 3; ++kx) {
              const int yy = y + ky - 1, xs = xx + kx - 1;
              if (yy < 0 || yy >= ho || xs < 0 || xs >= wo) continue;
              const size_t pix = (size_t(b) * h + yy / up) * w + xs / up;
              for (int ch = 0; ch < c; ++ch) {
                const double v = act[pix * c + ch] * wt.value[(size_t(oc) * 9 + ky * 3 + kx) * c + ch];
                s += v, t += std::fabs(v);
              }
            }
          const size_t oi = ((size_t(b) * ho + y) * wo + xx) * o + oc;
          if (residual) s += res.value[oi], t += std::fabs(res.value[oi]);
          for (int ch = 0; ch < shortcut_c; ++ch) {
            const double v = sx.value[oi / o * shortcut_c + ch] * sw.value[size_t(oc) * shortcut_c + ch];
            s += v, t += std::fabs(v);
          }
          if (shortcut_c) s += sb.value[oc], t += std::fabs(sb.value[oc]);
          want[oi] = s, terms[oi] = t + std::fabs(s);
        }
  char what[160];
  std::snprintf(what, sizeof what,
                "conv3x3 dt=%d n=%d %dx%dx%d->%d groups=%d pixel_norm=%d up=%d silu=%d shortcut=%d residual=%d",
                int(dt), n, h, w, c, o, groups, int(pixel_norm), up, int(silu), shortcut_c, int(residual));
  check(what, out, want, terms, dt, 9 * c + shortcut_c);
}

template <class T>
void stats_case(DType dt, int n, int h, int w, int c, int groups, double loc) {
  Buf<T> x(size_t(n) * h * w * c, 1.0, loc);
  const GroupNormStatsParams p{n, c, groups, 1e-6f, fc_int64(h) * w};
  const GroupNormStatsCpuPlan plan = plan_group_norm_stats(p, 3);
  std::vector<float> scratch(plan.scratch_floats), out(size_t(n) * groups * 2);
  group_norm_stats(p, dt, x.data.data(), out.data(), plan, scratch.data());
  std::vector<double> want(out.size()), terms(out.size());
  for (int b = 0; b < n; ++b)
    for (int g = 0; g < groups; ++g) {
      double s = 0, cnt = 0, m2 = 0;
      auto each = [&](auto f) {
        for (int px = 0; px < h * w; ++px)
          for (int ch = g * (c / groups); ch < (g + 1) * (c / groups); ++ch) f(x.value[(size_t(b) * h * w + px) * c + ch]);
      };
      each([&](double v) { s += v, cnt += 1; });
      each([&](double v) { m2 += (v - s / cnt) * (v - s / cnt); });
      want[(b * groups + g) * 2] = s / cnt, terms[(b * groups + g) * 2] = std::fabs(s / cnt) + 1;
      want[(b * groups + g) * 2 + 1] = 1 / std::sqrt(m2 / cnt + 1e-6);
      terms[(b * groups + g) * 2 + 1] = want[(b * groups + g) * 2 + 1];
    }
  char what[128];
  std::snprintf(what, sizeof what, "group_norm_stats dt=%d n=%d %dx%dx%d groups=%d mean=%g", int(dt), n, h, w, c,
                groups, loc);
  check(what, out, want, terms, DType::f32, 64);
}

template <class T>
void linear_case(DType dt, int m, int k, int n) {
  Buf<T> x(size_t(m) * k), wt(size_t(n) * k, 0.3), bias(n, 0.1);
  std::vector<T> out(size_t(m) * n);
  const LinearCpuPlan plan = plan_linear(m, k, n, dt, 3);
  std::vector<float> scratch(plan.scratch_floats());
  linear(LinearJob{m, k, n, x.data.data(), bias.data.data(), out.data(), nullptr}, dt, wt.data.data(), plan,
         scratch.data());
  std::vector<double> want(out.size()), terms(out.size());
  for (int r = 0; r < m; ++r)
    for (int j = 0; j < n; ++j) {
      double s = bias.value[j], t = std::fabs(s);
      for (int i = 0; i < k; ++i) s += x.value[size_t(r) * k + i] * wt.value[size_t(j) * k + i],
                                  t += std::fabs(x.value[size_t(r) * k + i] * wt.value[size_t(j) * k + i]);
      want[size_t(r) * n + j] = s, terms[size_t(r) * n + j] = t + std::fabs(s);
    }
  char what[96];
  std::snprintf(what, sizeof what, "linear dt=%d %dx%d -> %d", int(dt), m, k, n);
  check(what, out, want, terms, dt, k);
}

template <class T>
void attention_case(DType dt, int b, int tq, int tk, int c) {
  Buf<T> q(size_t(b) * tq * c), k(size_t(b) * tk * c), v(size_t(b) * tk * c);
  std::vector<T> out(size_t(b) * tq * c);
  const float scale = 0.7f;
  const AttentionCpuPlan plan = plan_attention(b, tq, c, dt, 3);
  std::vector<float> scratch(plan.worker_floats * plan.threads);
  attention(AttentionJob{b, tq, tk, c, scale, q.data.data(), k.data.data(), v.data.data(), out.data()}, dt, plan,
            scratch.data());
  std::vector<double> want(out.size()), terms(out.size());
  for (int bb = 0; bb < b; ++bb)
    for (int i = 0; i < tq; ++i) {
      std::vector<double> s(tk);
      double mx = -1e300, sum = 0;
      for (int j = 0; j < tk; ++j) {
        for (int ch = 0; ch < c; ++ch) s[j] += q.value[(size_t(bb) * tq + i) * c + ch] * k.value[(size_t(bb) * tk + j) * c + ch];
        s[j] *= scale, mx = std::fmax(mx, s[j]);
      }
      for (int j = 0; j < tk; ++j) s[j] = std::exp(s[j] - mx), sum += s[j];
      for (int ch = 0; ch < c; ++ch) {
        double o = 0, t = 0;
        for (int j = 0; j < tk; ++j) o += s[j] / sum * v.value[(size_t(bb) * tk + j) * c + ch],
                                     t += std::fabs(s[j] / sum * v.value[(size_t(bb) * tk + j) * c + ch]);
        want[(size_t(bb) * tq + i) * c + ch] = o, terms[(size_t(bb) * tq + i) * c + ch] = t + 1;
      }
    }
  char what[96];
  std::snprintf(what, sizeof what, "attention dt=%d b=%d tq=%d tk=%d c=%d", int(dt), b, tq, tk, c);
  check(what, out, want, terms, dt, c + tk);
}

template <class T>
void all_cases(DType dt) {
  // tails of every tile: widths below / across the strip, C and Cs odd and over a 128 chunk,
  // O below / across 16- and 32-channel panels, 1x1 images, batch 2, C not a multiple of
  // AMX's 32
  conv_case<T>(dt, 1, 3, 37, 20, 40, 4, 1, true, 0, true);
  conv_case<T>(dt, 2, 2, 9, 16, 3, 8, 1, true, 0, false);
  conv_case<T>(dt, 1, 2, 5, 12, 8, 3, 2, true, 0, true);
  conv_case<T>(dt, 1, 1, 1, 8, 33, 2, 2, false, 0, false);
  conv_case<T>(dt, 1, 3, 17, 34, 17, 2, 1, true, 24, false);
  conv_case<T>(dt, 1, 3, 13, 33, 5, 0, 1, false, 7, false);
  conv_case<T>(dt, 1, 4, 7, 130, 35, 2, 2, true, 0, true);
  conv_case<T>(dt, 2, 3, 11, 24, 20, 0, 2, true, 0, true, true);
  conv_case<T>(dt, 1, 2, 9, 33, 7, 0, 1, false, 6, false, true);
  conv_case<T>(dt, 1, 2, 100, 34, 20, 2, 1, true, 6, true);  // two AMX strips (64 + 36 pixels)
  stats_case<T>(dt, 2, 7, 9, 32, 8, 0.0);
  stats_case<T>(dt, 1, 33, 35, 12, 3, 100.0);
  stats_case<T>(dt, 1, 1, 1, 4, 4, 0.0);
  linear_case<T>(dt, 1, 5, 3);
  linear_case<T>(dt, 50, 37, 17);
  linear_case<T>(dt, 97, 64, 33);
  attention_case<T>(dt, 1, 5, 5, 8);
  attention_case<T>(dt, 2, 50, 130, 20);
  attention_case<T>(dt, 1, 700, 70, 20);  // query blocks above the minimum, the last one short
}

}  // namespace

int main() {
  std::printf("isa %s\n", isa_name(active_isa()));
  all_cases<float>(DType::f32);
  all_cases<f16>(DType::f16);
  all_cases<bf16>(DType::bf16);
  std::printf("%d failures\n", failures);
  return failures ? 1 : 0;
}
