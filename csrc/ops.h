// Graph-building ops: validate arguments (errors name the argument), make
// inputs row-contiguous, and build the primitive's output array.
#pragma once

#include <optional>
#include <stdexcept>

#include "mlx/array.h"
#include "mlx/utils.h"

namespace fusedconv {

namespace mx = mlx::core;

// Raised for an argument of the wrong dtype; surfaces in Python as TypeError.
struct DTypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

mx::array group_norm_stats(const mx::array& x, int groups, float eps, mx::StreamOrDevice s = {});

// sqrt(C) / max(||x[n, h, w, :]||_2, eps) per pixel: float32 [N, H, W].
mx::array pixel_norm_stats(const mx::array& x, float eps, mx::StreamOrDevice s = {});

// stats: group_norm_stats' [N, G, 2], or with pixel_norm pixel_norm_stats' [N, H, W].
mx::array conv3x3(const mx::array& x, const mx::array& weight,
                  const std::optional<mx::array>& bias, const std::optional<mx::array>& stats,
                  const std::optional<mx::array>& gamma, const std::optional<mx::array>& beta,
                  bool pixel_norm, bool silu, int upsample, const std::optional<mx::array>& residual,
                  const std::optional<mx::array>& shortcut_x,
                  const std::optional<mx::array>& shortcut_weight,
                  const std::optional<mx::array>& shortcut_bias, mx::StreamOrDevice s = {});

// y = x W^T + b over the last axis of x (weight [N,K], the mlx.nn.Linear layout).
mx::array linear(const mx::array& x, const mx::array& weight, const std::optional<mx::array>& bias,
                 mx::StreamOrDevice s = {});

// softmax(q k^T * scale) v for q [B,Tq,C], k and v [B,Tk,C]; never materialises the scores.
mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                    mx::StreamOrDevice s = {});

}  // namespace fusedconv
