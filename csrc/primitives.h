// The MLX primitives: GroupNormStats, FusedConv3x3, Linear, Attention. Graph
// construction and validation live in ops.cpp; the shared parts (shapes,
// equivalence, transforms) in primitives.cpp; each backend's eval_* in its own file
// (cpu/primitives_cpu.cpp, metal/primitives_metal.cpp, no_gpu.cpp), picking a plan and
// dispatching, nothing else.
//
// As MLX's fast ops (mlx/fast.cpp) do, every primitive carries its reference
// composition (reference.h) as a fallback: vjp, jvp and vmap come from it, and ops.cpp
// builds the composition itself on a stream whose backend has no kernel for the op.
#pragma once

#include <functional>
#include <new>
#include <optional>
#include <string>

#include "kernel_dtype.h"
#include "mlx/primitives.h"
#include "params.h"

namespace fusedconv {

namespace mx = mlx::core;

enum class Op { group_norm_stats, pixel_norm_stats, conv3x3, linear, attention };

// Whether the backend of `s` has a kernel for `op`: the CPU has all; a GPU what the
// GPU backend this extension was built with provides (gpu_has_kernel, defined by that
// backend's file).
bool gpu_has_kernel(Op op);
inline bool has_kernel(const mx::Stream& s, Op op) {
  return s.device == mx::Device::cpu || gpu_has_kernel(op);
}

// Which kernel family the GPU backend's conv3x3 takes for 16-bit inputs on the stream's
// device: "wgmma" (CUDA, Hopper), "mma" (CUDA, other GPUs), "simt" (CUDA, GPUs short of
// shared memory for those), "metal", or "" without GPU kernels. (The decoder's choice of
// mlx.nn's composition for wide convs depends on it.)
std::string gpu_conv3x3_kernel_family(const mx::Stream& s);

// Out of memory in a primitive: a std::bad_alloc (so Python sees MemoryError) that names
// the op and the bytes it asked for.
class OutOfMemory : public std::bad_alloc {
 public:
  OutOfMemory(const char* op, size_t bytes);
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

// Gives `a` a buffer of its own size from MLX's allocator (so mx.get_peak_memory counts
// it), or throws OutOfMemory: MLX's allocator can return a null buffer, which every
// primitive used to write through.
void allocate(mx::array& a, const char* op);

// The kernel instantiation of an array's dtype (the ops admit only these to the GPU kernels).
KernelDType kernel_dtype(const mx::array& a);

using Fallback = std::function<std::vector<mx::array>(const std::vector<mx::array>&)>;

// A primitive whose transforms come from its reference composition.
class FusedPrimitive : public mx::UnaryPrimitive {
 public:
  FusedPrimitive(mx::Stream s, Fallback fallback) : mx::UnaryPrimitive(s), fallback_(std::move(fallback)) {}
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  std::vector<mx::array> jvp(const std::vector<mx::array>& primals, const std::vector<mx::array>& tangents,
                             const std::vector<int>& argnums) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(const std::vector<mx::array>& inputs,
                                                           const std::vector<int>& axes) override;

 protected:
  Fallback fallback_;
};

// inputs: x [N,H,W,C]; output: float32 [N,G,2] (mean, rstd).
class GroupNormStats : public FusedPrimitive {
 public:
  GroupNormStats(mx::Stream s, Fallback f, int groups, float eps)
      : FusedPrimitive(s, std::move(f)), groups_(groups), eps_(eps) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "GroupNormStats"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(const std::vector<mx::array>& inputs,
                                                           const std::vector<int>& axes) override;
  GroupNormStatsParams params(const mx::array& x) const;

 private:
  int groups_;
  float eps_;
};

// inputs: x [N,H,W,C]; output: float32 [N,H,W], sqrt(C) / max(||x[n,h,w,:]||, eps).
class PixelNormStats : public FusedPrimitive {
 public:
  PixelNormStats(mx::Stream s, Fallback f, float eps) : FusedPrimitive(s, std::move(f)), eps_(eps) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "PixelNormStats"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(const std::vector<mx::array>& inputs,
                                                           const std::vector<int>& axes) override;
  PixelNormStatsParams params(const mx::array& x) const;

 private:
  float eps_;
};

// Which optional inputs a FusedConv3x3 node carries.
struct Conv3x3Options {
  int groups = 0;           // > 0: group-normalise on load with (stats [N,G,2], gamma, beta)
  bool pixel_norm = false;  // or normalise each pixel with (stats [N,H,W], gamma, beta)
  bool silu = false;
  int upsample = 1;
  bool has_bias = false;
  bool has_residual = false;
  bool has_shortcut = false;
  bool has_shortcut_bias = false;
  bool operator==(const Conv3x3Options&) const = default;
};

// The one definition of a FusedConv3x3 node's input order: x, weight, [stats, gamma,
// beta], [bias], [residual | shortcut_x, shortcut_w, [shortcut_bias]]. The index of each
// input in the node (-1: absent); ops.cpp packs by it, every backend and the fallback
// unpack by it.
struct Conv3x3Slots {
  int x = 0, weight = 1, stats = -1, gamma = -1, beta = -1, bias = -1, residual = -1, shortcut_x = -1,
      shortcut_w = -1, shortcut_bias = -1, count = 2;
  static Conv3x3Slots of(const Conv3x3Options& opts);
  // The inputs that hold one entry per image (their first axis is the batch).
  std::vector<int> per_image() const;
};

struct Conv3x3Inputs {
  Conv3x3Inputs(mx::array x_, mx::array weight_) : x(std::move(x_)), weight(std::move(weight_)) {}
  mx::array x, weight;
  std::optional<mx::array> stats, gamma, beta, bias, residual, shortcut_x, shortcut_w, shortcut_bias;

  Conv3x3Options options(bool pixel_norm, bool silu, int upsample) const;
  std::vector<mx::array> pack() const;
  static Conv3x3Inputs unpack(const std::vector<mx::array>& inputs, const Conv3x3Options& opts);
};

class FusedConv3x3 : public FusedPrimitive {
 public:
  FusedConv3x3(mx::Stream s, Fallback f, Conv3x3Options opts) : FusedPrimitive(s, std::move(f)), opts_(opts) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "FusedConv3x3"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  std::vector<mx::array> jvp(const std::vector<mx::array>& primals, const std::vector<mx::array>& tangents,
                             const std::vector<int>& argnums) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(const std::vector<mx::array>& inputs,
                                                           const std::vector<int>& axes) override;
  Conv3x3Params params(const std::vector<mx::array>& inputs) const;
  const Conv3x3Options& options() const { return opts_; }

 private:
  Conv3x3Options opts_;
};

// inputs: x [..., K], weight [N,K], [bias [N]]; output [..., N] = x W^T + b.
class Linear : public FusedPrimitive {
 public:
  Linear(mx::Stream s, Fallback f, bool has_bias) : FusedPrimitive(s, std::move(f)), has_bias_(has_bias) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "FusedConvLinear"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  bool has_bias_;
};

// inputs: q [B,Tq,C], k [B,Tk,C], v [B,Tk,C]; output [B,Tq,C] = softmax(q k^T * scale) v.
class Attention : public FusedPrimitive {
 public:
  Attention(mx::Stream s, Fallback f, float scale) : FusedPrimitive(s, std::move(f)), scale_(scale) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "FusedConvAttention"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  float scale() const { return scale_; }

 private:
  float scale_;
};

}  // namespace fusedconv
