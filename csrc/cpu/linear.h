// CPU backend of the linear op y = x W^T + b (x [M,K], W [N,K]): the decoder's
// attention projections and 1x1 convs, which MLX's Linux CPU matmul runs at a
// few GFLOP/s. Row blocks of x are converted to f32 per worker and multiplied by
// f32-packed weight panels.
#pragma once

#include <cstddef>

#include "cpu/dtype.h"

namespace fusedconv::cpu {

constexpr int kLinearRowBlock = 48;

struct LinearJob;
using LinearRowsFn = void (*)(const LinearJob&, int r0, int r1, float* work);

struct LinearCpuPlan {
  LinearRowsFn rows;         // the active ISA build's kernel
  int threads;
  int row_blocks;
  size_t packed_floats;      // ceil(N/16) * K * 16
  size_t worker_floats;      // kLinearRowBlock * K
  size_t scratch_floats() const { return packed_floats + size_t(threads) * worker_floats; }
};

// Picks the kernel of the active instruction set (isa.h) and the row blocking.
LinearCpuPlan plan_linear(int m, int k, int n, DType dt, int threads);

struct LinearJob {
  int m, k, n;
  const void* x;
  const void* bias;  // [N] or null
  void* out;         // [M,N]
  const float* packed_w;
};

void linear(const LinearJob& job, DType dt, const void* w, const LinearCpuPlan& plan, float* scratch);


}  // namespace fusedconv::cpu
