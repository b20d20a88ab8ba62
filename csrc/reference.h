// The reference composition of each op in plain MLX ops: the semantics the parity tests
// check, the fallback that gives the primitives vjp/jvp/vmap, and what runs on a stream
// whose backend has no kernel for the op.
#pragma once

#include <optional>

#include "mlx/array.h"
#include "mlx/utils.h"
#include "primitives.h"

namespace fusedconv::reference {

namespace mx = mlx::core;

// Bound on the attention scores (and softmax) the composition holds per query chunk.
constexpr size_t kAttentionScoresBudget = size_t(64) << 20;

// float32 [N, G, 2]: mean and 1/sqrt(var + eps) per (image, group), PyTorch grouping.
mx::array group_norm_stats(const mx::array& x, int groups, float eps, mx::StreamOrDevice s = {});

// float32 [N, H, W]: sqrt(C) / max(||x[n, h, w, :]||_2, eps).
mx::array pixel_norm_stats(const mx::array& x, float eps, mx::StreamOrDevice s = {});

// GroupNorm or the per-pixel norm (from the given statistics) -> SiLU -> rounding to x's dtype -> nearest 2x
// upsample -> conv2d(padding 1) -> + bias -> + residual or the 1x1 shortcut.
mx::array conv3x3(const Conv3x3Inputs& in, const Conv3x3Options& opts, mx::StreamOrDevice s = {});

mx::array linear(const mx::array& x, const mx::array& weight, const std::optional<mx::array>& bias,
                 mx::StreamOrDevice s = {});

// Query rows per chunk so that one chunk's scores and probabilities (and the f32 softmax)
// fit in `budget` bytes.
int attention_query_rows(int batch, int keys, int itemsize, size_t budget);

// softmax(q k^T * scale) v, a chunk of attention_query_rows queries at a time.
mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                    mx::StreamOrDevice s = {});

}  // namespace fusedconv::reference
