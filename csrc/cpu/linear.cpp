#include "cpu/linear.h"

#include <algorithm>

#include "cpu/isa.h"
#include "cpu/pack.h"
#include "cpu/parallel.h"

namespace fusedconv::cpu {

LinearCpuPlan plan_linear(int m, int k, int n, DType dt, int threads) {
  LinearCpuPlan plan{};
  plan.rows = active_kernels().linear_rows(dt);
  plan.row_blocks = ceil_div(m, kLinearRowBlock);
  plan.threads = std::max(1, std::min(threads, plan.row_blocks));
  plan.packed_floats = size_t(ceil_div(n, kPanel)) * k * kPanel;
  plan.worker_floats = size_t(kLinearRowBlock) * k;
  return plan;
}

void linear(const LinearJob& job_in, DType dt, const void* w, const LinearCpuPlan& plan, float* scratch) {
  LinearJob job = job_in;
  job.packed_w = scratch;
  with_dtype(dt, [&](auto t) {
    pack_panels(static_cast<const decltype(t)*>(w), job.n, 1, job.k, job.k, scratch, plan.threads);
  });
  float* work = scratch + plan.packed_floats;
  parallel_for(plan.row_blocks, plan.threads, [&](int blk, int worker) {
    const int r0 = blk * kLinearRowBlock;
    plan.rows(job, r0, std::min(job.m, r0 + kLinearRowBlock), work + size_t(worker) * plan.worker_floats);
  });
}

}  // namespace fusedconv::cpu
