// CPU backend of single-head attention softmax(q k^T * scale) v over pixels (the
// VAE mid-block): flash-attention style, one block of queries per task, keys and
// values streamed in blocks with an online softmax. No tokens x tokens scores; the
// scratch is per worker and independent of the token count.
#pragma once

#include <cstddef>

#include "cpu/dtype.h"

namespace fusedconv::cpu {

// Queries per task: every query block repacks all keys and values (to f32 panels), so
// blocks are as large as the load balance allows (measured on a Zen 3, 16384 tokens x 512
// channels, 2 threads: 4.3 s at 48 queries, 3.6 s at 192, 3.4 s at 384).
constexpr int kAttnMinQueryBlock = 48;
constexpr int kAttnMaxQueryBlock = 384;
constexpr int kAttnKeyBlock = 64;

struct AttentionJob;
using AttentionBlockFn = void (*)(const AttentionJob&, int b, int q0, int q1, float* work);

struct AttentionCpuPlan {
  AttentionBlockFn block;  // the active ISA build's kernel
  int threads;
  int query_block;       // queries per task
  int query_blocks;      // per batch item
  size_t worker_floats;  // Q block, packed K and V blocks, scores, O accumulators, m, l
};

// Picks the kernel of the active instruction set (isa.h) and the query blocking.
AttentionCpuPlan plan_attention(int batch, int tq, int c, DType dt, int threads);

struct AttentionJob {
  int batch, tq, tk, c;
  float scale;
  const void* q;  // [B,Tq,C]
  const void* k;  // [B,Tk,C]
  const void* v;  // [B,Tk,C]
  void* out;      // [B,Tq,C]
};

void attention(const AttentionJob& job, DType dt, const AttentionCpuPlan& plan, float* scratch);


}  // namespace fusedconv::cpu
