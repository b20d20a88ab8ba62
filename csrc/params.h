// Parameter structs shared by the host code of every backend and by the
// kernels themselves. Plain C++ (no MLX, no STL) so that the Metal kernels and
// the CPU emulator can include the same definition.
#pragma once

namespace fusedconv {

// A count that can pass 2^31 (pixels of one image: 46341^2 > 2^31). 64-bit in both
// Metal (`long`) and host C++ (`long long`), so the structs have one layout.
#if defined(__METAL_VERSION__)
typedef long fc_int64;
#else
typedef long long fc_int64;
#endif

// One 3x3, stride-1, padding-1 convolution of an NHWC input, with optional
// GroupNorm(+SiLU) and nearest-2x upsample applied on load and bias/residual
// applied on store.
struct Conv3x3Params {
  int n;          // batch
  int h, w, c;    // input height, width, channels
  int ho, wo, o;  // output height, width, channels (ho = h * upsample)
  int groups;     // GroupNorm groups; 0 when the input is not group-normalised
  int pixel_norm;  // 1: normalise each input pixel by its own statistic (stats [N,H,W]) instead
  int upsample;   // 1 or 2 (nearest)
  int silu;       // apply SiLU after the norm (or to the raw input without norm)
  int has_bias;
  int has_residual;
  int shortcut_c;  // > 0: add a 1x1 conv of a second [N,Ho,Wo,shortcut_c] input (a
                   // resnet's channel-changing shortcut) instead of a residual array
  int has_shortcut_bias;
};

// Per-pixel statistics: sqrt(C) / max(||x[n, y, x, :]||_2, eps), the scale of
// F.normalize(x, dim=channels) * sqrt(C) (the RMS norm of the Wan / Qwen-Image VAE).
struct PixelNormStatsParams {
  fc_int64 pixels;  // N * H * W
  int c;
  float eps;
};

struct GroupNormStatsParams {
  int n;
  int c;
  int groups;
  float eps;
  fc_int64 hw;  // pixels per image
};

// How a GPU splits one (image, group) of the statistics into slices of pixels, each
// reduced by its own threadgroup, then merged in slice order (deterministic).
struct GroupNormSlices {
  int count;
  fc_int64 pixels;  // per slice (the last one may hold fewer)
};

}  // namespace fusedconv
