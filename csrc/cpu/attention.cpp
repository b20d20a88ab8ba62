#include "cpu/attention.h"

#include <algorithm>

#include "cpu/isa.h"
#include "cpu/pack.h"
#include "cpu/parallel.h"

namespace fusedconv::cpu {

AttentionCpuPlan plan_attention(int batch, int tq, int c, DType dt, int threads) {
  AttentionCpuPlan plan{};
  plan.block = active_kernels().attention_block(dt);
  // At least four tasks per thread where the tokens allow it.
  const int balanced = round_up(ceil_div(batch * tq, 4 * threads), 16);
  plan.query_block = std::clamp(balanced, kAttnMinQueryBlock, kAttnMaxQueryBlock);
  plan.query_blocks = ceil_div(tq, plan.query_block);
  plan.threads = std::max(1, std::min(threads, batch * plan.query_blocks));
  const size_t cpad = size_t(ceil_div(c, kPanel)) * kPanel;
  plan.worker_floats = size_t(plan.query_block) * c             // scaled Q block
                       + size_t(kAttnKeyBlock) * c             // packed K block
                       + cpad * kAttnKeyBlock                  // packed V block
                       + size_t(plan.query_block) * kAttnKeyBlock  // scores / probabilities
                       + size_t(plan.query_block) * cpad        // O accumulators
                       + 2 * size_t(plan.query_block);          // running max, running sum
  return plan;
}

void attention(const AttentionJob& job, DType dt, const AttentionCpuPlan& plan, float* scratch) {
  parallel_for(job.batch * plan.query_blocks, plan.threads, [&](int task, int worker) {
    const int b = task / plan.query_blocks;
    const int q0 = (task % plan.query_blocks) * plan.query_block;
    plan.block(job, b, q0, std::min(job.tq, q0 + plan.query_block), scratch + size_t(worker) * plan.worker_floats);
  });
}

}  // namespace fusedconv::cpu
