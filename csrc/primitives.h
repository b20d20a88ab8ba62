// The two MLX primitives. Graph construction and validation live in ops.cpp;
// each eval_* picks its backend's plan and dispatches, nothing else.
#pragma once

#include <new>
#include <string>

#include "mlx/primitives.h"
#include "params.h"

namespace fusedconv {

namespace mx = mlx::core;

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

// inputs: x [N,H,W,C]; output: float32 [N,G,2] (mean, rstd).
class GroupNormStats : public mx::UnaryPrimitive {
 public:
  GroupNormStats(mx::Stream s, int groups, float eps)
      : mx::UnaryPrimitive(s), groups_(groups), eps_(eps) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "GroupNormStats"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  int groups_;
  float eps_;
};

// Which optional inputs a FusedConv3x3 node carries. Inputs are ordered
// x, weight, [stats, gamma, beta], [bias], [residual | shortcut_x, shortcut_w, [shortcut_b]].
struct Conv3x3Options {
  int groups = 0;  // > 0: normalise on load with (stats, gamma, beta)
  bool silu = false;
  int upsample = 1;
  bool has_bias = false;
  bool has_residual = false;
  bool has_shortcut = false;
  bool has_shortcut_bias = false;
  bool operator==(const Conv3x3Options&) const = default;
};

class FusedConv3x3 : public mx::UnaryPrimitive {
 public:
  FusedConv3x3(mx::Stream s, Conv3x3Options opts) : mx::UnaryPrimitive(s), opts_(opts) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "FusedConv3x3"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  Conv3x3Params params(const std::vector<mx::array>& inputs) const;
  size_t shortcut_index() const;
  Conv3x3Options opts_;
};

// inputs: x [M,K], weight [N,K], [bias [N]]; output [M,N] = x W^T + b.
class Linear : public mx::UnaryPrimitive {
 public:
  Linear(mx::Stream s, bool has_bias) : mx::UnaryPrimitive(s), has_bias_(has_bias) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "FusedConvLinear"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  bool has_bias_;
};

// inputs: q [B,Tq,C], k [B,Tk,C], v [B,Tk,C]; output [B,Tq,C] = softmax(q k^T * scale) v.
class Attention : public mx::UnaryPrimitive {
 public:
  Attention(mx::Stream s, float scale) : mx::UnaryPrimitive(s), scale_(scale) {}
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override;
  const char* name() const override { return "FusedConvAttention"; }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  float scale_;
};

}  // namespace fusedconv
