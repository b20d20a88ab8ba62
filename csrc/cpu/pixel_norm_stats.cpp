#include "cpu/pixel_norm_stats.h"

#include <algorithm>
#include <cmath>

#include "cpu/parallel.h"

namespace fusedconv::cpu {

namespace {

constexpr int kPixelsPerTask = 256;

template <class T>
void run(const PixelNormStatsParams& p, const T* x, float* out, int threads) {
  const fc_int64 tasks = (p.pixels + kPixelsPerTask - 1) / kPixelsPerTask;
  const float scale = std::sqrt(float(p.c));
  parallel_for(int(tasks), threads, [&](int task, int) {
    const fc_int64 end = std::min<fc_int64>(p.pixels, fc_int64(task + 1) * kPixelsPerTask);
    for (fc_int64 px = fc_int64(task) * kPixelsPerTask; px < end; ++px) {
      const T* v = x + px * p.c;
      float ss = 0.0f;
      for (int c = 0; c < p.c; ++c) ss += to_f32(v[c]) * to_f32(v[c]);
      out[px] = scale / std::max(std::sqrt(ss), p.eps);
    }
  });
}

}  // namespace

void pixel_norm_stats(const PixelNormStatsParams& p, DType dt, const void* x, float* out, int threads) {
  with_dtype(dt, [&](auto t) { run(p, static_cast<const decltype(t)*>(x), out, threads); });
}

}  // namespace fusedconv::cpu
