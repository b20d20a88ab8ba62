#include "ops.h"

#include <cmath>
#include <cstdint>
#include <sstream>

#include "mlx/ops.h"
#include "primitives.h"
#include "reference.h"

namespace fusedconv {

namespace {

// Without iostreams: on MLX's CUDA build (0.32.4, Linux) writing an int into an
// std::ostringstream here crashed the process (segfault, measured on the H200 host), where
// std::to_string does not.
std::string shape_str(const mx::Shape& s) {
  std::string o = "(";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + (s.size() == 1 ? ",)" : ")");
}

std::string dtype_str(mx::Dtype d) {
  std::ostringstream o;
  o << d;
  return o.str();
}

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

void check_float(const char* name, const mx::array& a) {
  if (a.dtype() != mx::float32 && a.dtype() != mx::float16 && a.dtype() != mx::bfloat16) {
    throw DTypeError(std::string(name) + ": dtype " + dtype_str(a.dtype()) +
                     " is not supported; expected float32, float16 or bfloat16");
  }
}

void check_dtype(const char* name, const mx::array& a, mx::Dtype want, const char* why) {
  if (a.dtype() != want) {
    throw DTypeError(std::string(name) + ": dtype " + dtype_str(a.dtype()) + " does not match " +
                     why + " (" + dtype_str(want) + ")");
  }
}

void check_shape(const char* name, const mx::array& a, const mx::Shape& want, const char* what) {
  if (a.shape() != want) {
    fail(std::string(name) + ": expected shape " + shape_str(want) + " " + what + ", got " +
         shape_str(a.shape()));
  }
}

void check_image(const char* name, const mx::array& x) {
  if (x.ndim() != 4) {
    fail(std::string(name) + ": expected a 4-D NHWC array [N, H, W, C], got shape " +
         shape_str(x.shape()));
  }
  for (int d : x.shape()) {
    if (d <= 0) fail(std::string(name) + ": every dimension must be positive, got shape " + shape_str(x.shape()));
  }
  check_float(name, x);
}

void check_groups(int groups, int channels) {
  if (groups <= 0 || channels % groups != 0) {
    fail("groups: " + std::to_string(groups) + " must be positive and divide the " +
         std::to_string(channels) + " channels of x");
  }
}

}  // namespace

mx::array group_norm_stats(const mx::array& x, int groups, float eps, mx::StreamOrDevice s) {
  check_image("x", x);
  check_groups(groups, x.shape(3));
  if (!(eps >= 0.0f) || !std::isfinite(eps)) fail("eps: must be finite and >= 0");
  const mx::Stream stream = mx::to_stream(s);
  if (!has_kernel(stream, Op::group_norm_stats)) return reference::group_norm_stats(x, groups, eps, stream);
  const Fallback fallback = [groups, eps, stream](const std::vector<mx::array>& in) {
    return std::vector<mx::array>{reference::group_norm_stats(in[0], groups, eps, stream)};
  };
  return mx::array({x.shape(0), groups, 2}, mx::float32,
                   std::make_shared<GroupNormStats>(stream, fallback, groups, eps),
                   {mx::contiguous(x, false, stream)});
}

mx::array pixel_norm_stats(const mx::array& x, float eps, mx::StreamOrDevice s) {
  check_image("x", x);
  if (!(eps > 0.0f) || !std::isfinite(eps)) fail("eps: must be finite and > 0");
  const mx::Stream stream = mx::to_stream(s);
  if (!has_kernel(stream, Op::pixel_norm_stats)) return reference::pixel_norm_stats(x, eps, stream);
  const Fallback fallback = [eps, stream](const std::vector<mx::array>& in) {
    return std::vector<mx::array>{reference::pixel_norm_stats(in[0], eps, stream)};
  };
  return mx::array({x.shape(0), x.shape(1), x.shape(2)}, mx::float32,
                   std::make_shared<PixelNormStats>(stream, fallback, eps), {mx::contiguous(x, false, stream)});
}

mx::array conv3x3(const mx::array& x, const mx::array& weight,
                  const std::optional<mx::array>& bias, const std::optional<mx::array>& stats,
                  const std::optional<mx::array>& gamma, const std::optional<mx::array>& beta,
                  bool pixel_norm, bool silu, int upsample, const std::optional<mx::array>& residual,
                  const std::optional<mx::array>& shortcut_x,
                  const std::optional<mx::array>& shortcut_weight,
                  const std::optional<mx::array>& shortcut_bias, mx::StreamOrDevice s) {
  check_image("x", x);
  const int n = x.shape(0), c = x.shape(3);
  if (weight.ndim() != 4 || weight.shape(1) != 3 || weight.shape(2) != 3 ||
      weight.shape(3) != c || weight.shape(0) <= 0) {
    fail("weight: expected shape (O, 3, 3, " + std::to_string(c) +
         ") (the mlx.nn.Conv2d layout, C matching x), got " + shape_str(weight.shape()));
  }
  check_dtype("weight", weight, x.dtype(), "x");
  const int o = weight.shape(0);
  if (upsample != 1 && upsample != 2) {
    fail("upsample: must be 1 or 2, got " + std::to_string(upsample));
  }
  // Each output dimension is an int in MLX and in the kernels' parameters.
  const long long ho = (long long)x.shape(1) * upsample, wo = (long long)x.shape(2) * upsample;
  if (ho > INT32_MAX || wo > INT32_MAX) {
    fail("x: the output would be " + std::to_string(ho) + " x " + std::to_string(wo) +
         " pixels (H and W times upsample); each must be at most 2^31 - 1");
  }

  const mx::Stream stream = mx::to_stream(s);
  auto in = [&](const mx::array& a) { return mx::contiguous(a, false, stream); };
  Conv3x3Inputs inputs(in(x), in(weight));

  const bool any_norm = stats || gamma || beta;
  if (any_norm) {
    if (!(stats && gamma && beta)) fail("norm: expected (stats, gamma, beta), all three arrays");
    if (pixel_norm) {
      check_shape("norm stats", *stats, {n, x.shape(1), x.shape(2)}, "from pixel_norm_stats(x)");
      check_dtype("norm stats", *stats, mx::float32, "the float32 of pixel_norm_stats");
    } else {
      if (stats->ndim() != 3 || stats->shape(0) != n || stats->shape(2) != 2) {
        fail("norm stats: expected shape (" + std::to_string(n) +
             ", G, 2) from group_norm_stats(x, G), got " + shape_str(stats->shape()));
      }
      check_dtype("norm stats", *stats, mx::float32, "the float32 of group_norm_stats");
      const int groups = stats->shape(1);
      if (groups <= 0 || c % groups != 0) {
        fail("norm stats: " + std::to_string(groups) + " groups do not divide the " +
             std::to_string(c) + " channels of x");
      }
    }
    check_shape("norm gamma", *gamma, {c}, "(one per channel of x)");
    check_shape("norm beta", *beta, {c}, "(one per channel of x)");
    check_dtype("norm gamma", *gamma, x.dtype(), "x");
    check_dtype("norm beta", *beta, x.dtype(), "x");
    inputs.stats = in(*stats), inputs.gamma = in(*gamma), inputs.beta = in(*beta);
  }
  if (bias) {
    check_shape("bias", *bias, {o}, "(one per output channel)");
    check_dtype("bias", *bias, x.dtype(), "x");
    inputs.bias = in(*bias);
  }
  const mx::Shape out_shape{n, x.shape(1) * upsample, x.shape(2) * upsample, o};
  if (residual) {
    check_shape("residual", *residual, out_shape, "(the output's shape)");
    check_dtype("residual", *residual, x.dtype(), "x");
    inputs.residual = in(*residual);
  }
  if (shortcut_x || shortcut_weight || shortcut_bias) {
    if (!(shortcut_x && shortcut_weight)) fail("shortcut: expected (x, weight, bias), x and weight arrays");
    if (residual) fail("shortcut: give either residual or shortcut, not both");
    const mx::array& sx = *shortcut_x;
    if (sx.ndim() != 4 || sx.shape(0) != n || sx.shape(1) != out_shape[1] ||
        sx.shape(2) != out_shape[2] || sx.shape(3) <= 0) {
      fail("shortcut x: expected shape (" + std::to_string(n) + ", " + std::to_string(out_shape[1]) +
           ", " + std::to_string(out_shape[2]) + ", Cs) (the output's pixels), got " + shape_str(sx.shape()));
    }
    check_shape("shortcut weight", *shortcut_weight, {o, 1, 1, sx.shape(3)},
                "(the mlx.nn.Conv2d layout of a 1x1 conv from Cs to O channels)");
    check_dtype("shortcut x", sx, x.dtype(), "x");
    check_dtype("shortcut weight", *shortcut_weight, x.dtype(), "x");
    inputs.shortcut_x = in(sx), inputs.shortcut_w = in(*shortcut_weight);
    if (shortcut_bias) {
      check_shape("shortcut bias", *shortcut_bias, {o}, "(one per output channel)");
      check_dtype("shortcut bias", *shortcut_bias, x.dtype(), "x");
      inputs.shortcut_bias = in(*shortcut_bias);
    }
  }
  if (pixel_norm && !any_norm) fail("norm: pixel_norm needs (stats, gamma, beta) from pixel_norm_stats");
  const Conv3x3Options opts = inputs.options(pixel_norm, silu, upsample);
  if (!has_kernel(stream, Op::conv3x3)) return reference::conv3x3(inputs, opts, stream);
  const Fallback fallback = [opts, stream](const std::vector<mx::array>& in) {
    return std::vector<mx::array>{reference::conv3x3(Conv3x3Inputs::unpack(in, opts), opts, stream)};
  };
  return mx::array(out_shape, x.dtype(), std::make_shared<FusedConv3x3>(stream, fallback, opts), inputs.pack());
}

mx::array linear(const mx::array& x, const mx::array& weight, const std::optional<mx::array>& bias,
                 mx::StreamOrDevice s) {
  if (x.ndim() < 1 || x.size() == 0) fail("x: expected a non-empty array [..., K], got shape " + shape_str(x.shape()));
  check_float("x", x);
  const int k = x.shape(-1);
  if (weight.ndim() != 2 || weight.shape(1) != k || weight.shape(0) <= 0) {
    fail("weight: expected shape (N, " + std::to_string(k) + ") (the mlx.nn.Linear layout), got " +
         shape_str(weight.shape()));
  }
  check_dtype("weight", weight, x.dtype(), "x");
  const int n = weight.shape(0);
  if (bias) {
    check_shape("bias", *bias, {n}, "(one per output feature)");
    check_dtype("bias", *bias, x.dtype(), "x");
  }
  const mx::Stream stream = mx::to_stream(s);
  if (!has_kernel(stream, Op::linear)) return reference::linear(x, weight, bias, stream);
  auto in = [&](const mx::array& a) { return mx::contiguous(a, false, stream); };
  std::vector<mx::array> inputs{in(x), in(weight)};
  if (bias) inputs.push_back(in(*bias));
  const Fallback fallback = [stream](const std::vector<mx::array>& in) {
    return std::vector<mx::array>{
        reference::linear(in[0], in[1], in.size() > 2 ? std::optional<mx::array>(in[2]) : std::nullopt, stream)};
  };
  mx::Shape out_shape = x.shape();
  out_shape.back() = n;
  return mx::array(out_shape, x.dtype(), std::make_shared<Linear>(stream, fallback, bool(bias)), std::move(inputs));
}

mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                    mx::StreamOrDevice s) {
  auto check3 = [](const char* name, const mx::array& a) {
    if (a.ndim() != 3 || a.size() == 0) {
      fail(std::string(name) + ": expected a non-empty [B, T, C] array, got shape " + shape_str(a.shape()));
    }
    check_float(name, a);
  };
  check3("q", q);
  check3("k", k);
  check3("v", v);
  if (k.shape(0) != q.shape(0) || k.shape(2) != q.shape(2)) {
    fail("k: expected shape (" + std::to_string(q.shape(0)) + ", Tk, " + std::to_string(q.shape(2)) +
         ") to match q, got " + shape_str(k.shape()));
  }
  check_shape("v", v, k.shape(), "(the shape of k)");
  check_dtype("k", k, q.dtype(), "q");
  check_dtype("v", v, q.dtype(), "q");
  if (!std::isfinite(scale)) fail("scale: must be finite");
  const mx::Stream stream = mx::to_stream(s);
  if (!has_kernel(stream, Op::attention)) return reference::attention(q, k, v, scale, stream);
  auto in = [&](const mx::array& a) { return mx::contiguous(a, false, stream); };
  const Fallback fallback = [scale, stream](const std::vector<mx::array>& in) {
    return std::vector<mx::array>{reference::attention(in[0], in[1], in[2], scale, stream)};
  };
  return mx::array(q.shape(), q.dtype(), std::make_shared<Attention>(stream, fallback, scale),
                   {in(q), in(k), in(v)});
}

}  // namespace fusedconv
