// What every backend shares: shapes, equivalence, the input order, allocation, and the
// transforms (from the reference composition, as mlx/fast.cpp's Custom does).
#include "primitives.h"

#include "mlx/allocator.h"
#include "mlx/ops.h"
#include "mlx/transforms.h"

namespace fusedconv {

OutOfMemory::OutOfMemory(const char* op, size_t bytes)
    : message_(std::string("fusedconv.") + op + ": out of memory allocating " + std::to_string(bytes) +
               " bytes (" + std::to_string(bytes >> 20) + " MiB)") {}

void allocate(mx::array& a, const char* op) {
  mx::allocator::Data data = mx::allocator::malloc(a.nbytes());
  if (data.buffer().ptr() == nullptr && a.nbytes() > 0) throw OutOfMemory(op, a.nbytes());
  a.set_data(std::move(data));
}

KernelDType kernel_dtype(const mx::array& a) {
  switch (a.dtype()) {
    case mx::float32: return KernelDType::float32;
    case mx::float16: return KernelDType::float16;
    case mx::bfloat16: return KernelDType::bfloat16;
    default: throw std::invalid_argument("fusedconv: unsupported dtype reached a GPU kernel");
  }
}

// ---- transforms from the composition ----------------------------------------------

namespace {

// The tangents of every input: the given ones at argnums, zeros elsewhere.
std::vector<mx::array> all_tangents(const std::vector<mx::array>& primals, const std::vector<mx::array>& tangents,
                                    const std::vector<int>& argnums) {
  std::vector<mx::array> all;
  for (int i = 0, j = 0; i < int(primals.size()); ++i) {
    if (j < int(argnums.size()) && argnums[j] == i) {
      all.push_back(tangents[j++]);
    } else {
      all.push_back(mx::zeros_like(primals[i]));
    }
  }
  return all;
}

// Moves the mapped axis of each of `inputs` at `indices` to the front (broadcasting an
// unmapped one to `size`) and folds it into the batch axis, as row-contiguous arrays.
void fold_into_batch(std::vector<mx::array>& inputs, const std::vector<int>& axes, const std::vector<int>& indices,
                     int size, const mx::Stream& s) {
  for (int i : indices) {
    mx::array a = inputs[i];
    if (axes[i] < 0) {
      mx::Shape shape = a.shape();
      shape.insert(shape.begin(), size);
      a = mx::broadcast_to(mx::expand_dims(a, 0, s), shape, s);
    } else {
      a = mx::moveaxis(a, axes[i], 0, s);
    }
    mx::Shape folded(a.shape().begin() + 1, a.shape().end());
    folded[0] *= size;
    inputs[i] = mx::contiguous(mx::reshape(a, folded, s), false, s);
  }
}

mx::array unfold_batch(const mx::array& out, int size, const mx::Stream& s) {
  mx::Shape shape = out.shape();
  shape[0] /= size;
  shape.insert(shape.begin(), size);
  return mx::reshape(out, shape, s);
}

int mapped_size(const std::vector<mx::array>& inputs, const std::vector<int>& axes) {
  for (size_t i = 0; i < inputs.size(); ++i)
    if (axes[i] >= 0) return inputs[i].shape(axes[i]);
  return 1;
}

}  // namespace

std::vector<mx::array> FusedPrimitive::vjp(const std::vector<mx::array>& primals,
                                           const std::vector<mx::array>& cotangents,
                                           const std::vector<int>& argnums, const std::vector<mx::array>&) {
  const std::vector<mx::array> all = mx::vjp(fallback_, primals, cotangents).second;
  std::vector<mx::array> out;
  for (int i : argnums) out.push_back(all[i]);
  return out;
}

std::vector<mx::array> FusedPrimitive::jvp(const std::vector<mx::array>& primals,
                                           const std::vector<mx::array>& tangents, const std::vector<int>& argnums) {
  return mx::jvp(fallback_, primals, all_tangents(primals, tangents, argnums)).second;
}

std::pair<std::vector<mx::array>, std::vector<int>> FusedPrimitive::vmap(const std::vector<mx::array>& inputs,
                                                                         const std::vector<int>& axes) {
  return {mx::vmap(fallback_, axes)(inputs), {0}};
}

// ---- GroupNormStats ------------------------------------------------------------------

GroupNormStatsParams GroupNormStats::params(const mx::array& x) const {
  return GroupNormStatsParams{x.shape(0), x.shape(3), groups_, eps_, fc_int64(x.shape(1)) * x.shape(2)};
}

bool GroupNormStats::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const GroupNormStats&>(other);
  return groups_ == o.groups_ && eps_ == o.eps_;
}

std::vector<mx::Shape> GroupNormStats::output_shapes(const std::vector<mx::array>& inputs) {
  return {{inputs[0].shape(0), groups_, 2}};
}

// Images of every map are images of one batch: the op itself on the folded batch.
std::pair<std::vector<mx::array>, std::vector<int>> GroupNormStats::vmap(const std::vector<mx::array>& inputs,
                                                                         const std::vector<int>& axes) {
  const int size = mapped_size(inputs, axes);
  std::vector<mx::array> in = inputs;
  fold_into_batch(in, axes, {0}, size, stream());
  mx::array out({in[0].shape(0), groups_, 2}, mx::float32,
                std::make_shared<GroupNormStats>(stream(), fallback_, groups_, eps_), in);
  return {{unfold_batch(out, size, stream())}, {0}};
}

// ---- PixelNormStats -------------------------------------------------------------------

PixelNormStatsParams PixelNormStats::params(const mx::array& x) const {
  return PixelNormStatsParams{fc_int64(x.size() / x.shape(3)), x.shape(3), eps_};
}

bool PixelNormStats::is_equivalent(const mx::Primitive& other) const {
  return eps_ == static_cast<const PixelNormStats&>(other).eps_;
}

std::vector<mx::Shape> PixelNormStats::output_shapes(const std::vector<mx::array>& inputs) {
  return {{inputs[0].shape(0), inputs[0].shape(1), inputs[0].shape(2)}};
}

std::pair<std::vector<mx::array>, std::vector<int>> PixelNormStats::vmap(const std::vector<mx::array>& inputs,
                                                                         const std::vector<int>& axes) {
  const int size = mapped_size(inputs, axes);
  std::vector<mx::array> in = inputs;
  fold_into_batch(in, axes, {0}, size, stream());
  mx::array out(output_shapes(in)[0], mx::float32, std::make_shared<PixelNormStats>(stream(), fallback_, eps_), in);
  return {{unfold_batch(out, size, stream())}, {0}};
}

// ---- FusedConv3x3 --------------------------------------------------------------------

Conv3x3Slots Conv3x3Slots::of(const Conv3x3Options& o) {
  Conv3x3Slots s;
  int next = 2;
  if (o.groups || o.pixel_norm) s.stats = next++, s.gamma = next++, s.beta = next++;
  if (o.has_bias) s.bias = next++;
  if (o.has_residual) s.residual = next++;
  if (o.has_shortcut) {
    s.shortcut_x = next++, s.shortcut_w = next++;
    if (o.has_shortcut_bias) s.shortcut_bias = next++;
  }
  s.count = next;
  return s;
}

std::vector<int> Conv3x3Slots::per_image() const {
  std::vector<int> out;
  for (int i : {x, stats, residual, shortcut_x})
    if (i >= 0) out.push_back(i);
  return out;
}

Conv3x3Options Conv3x3Inputs::options(bool pixel_norm, bool silu, int upsample) const {
  Conv3x3Options o;
  o.groups = stats && !pixel_norm ? stats->shape(1) : 0;
  o.pixel_norm = stats && pixel_norm;
  o.silu = silu;
  o.upsample = upsample;
  o.has_bias = bias.has_value();
  o.has_residual = residual.has_value();
  o.has_shortcut = shortcut_x.has_value();
  o.has_shortcut_bias = shortcut_bias.has_value();
  return o;
}

std::vector<mx::array> Conv3x3Inputs::pack() const {
  std::vector<mx::array> out{x, weight};
  for (const auto* a : {&stats, &gamma, &beta, &bias, &residual, &shortcut_x, &shortcut_w, &shortcut_bias})
    if (*a) out.push_back(**a);
  return out;
}

Conv3x3Inputs Conv3x3Inputs::unpack(const std::vector<mx::array>& in, const Conv3x3Options& opts) {
  const Conv3x3Slots s = Conv3x3Slots::of(opts);
  auto at = [&](int i) { return i >= 0 ? std::optional<mx::array>(in[i]) : std::nullopt; };
  Conv3x3Inputs out(in[s.x], in[s.weight]);
  out.stats = at(s.stats), out.gamma = at(s.gamma), out.beta = at(s.beta), out.bias = at(s.bias);
  out.residual = at(s.residual), out.shortcut_x = at(s.shortcut_x), out.shortcut_w = at(s.shortcut_w);
  out.shortcut_bias = at(s.shortcut_bias);
  return out;
}

Conv3x3Params FusedConv3x3::params(const std::vector<mx::array>& inputs) const {
  const Conv3x3Slots s = Conv3x3Slots::of(opts_);
  const mx::array& x = inputs[s.x];
  const int up = opts_.upsample;
  return Conv3x3Params{x.shape(0), x.shape(1), x.shape(2), x.shape(3), x.shape(1) * up, x.shape(2) * up,
                       inputs[s.weight].shape(0), opts_.groups, int(opts_.pixel_norm), up, int(opts_.silu), int(opts_.has_bias),
                       int(opts_.has_residual), s.shortcut_x >= 0 ? inputs[s.shortcut_x].shape(3) : 0,
                       int(opts_.has_shortcut_bias)};
}

bool FusedConv3x3::is_equivalent(const mx::Primitive& other) const {
  return opts_ == static_cast<const FusedConv3x3&>(other).opts_;
}

std::vector<mx::Shape> FusedConv3x3::output_shapes(const std::vector<mx::array>& inputs) {
  const Conv3x3Params p = params(inputs);
  return {{p.n, p.ho, p.wo, p.o}};
}

// MLX's Convolution has no jvp. The composition is linear in the cotangent of its vjp,
// so J t is the vjp of u -> J^T u at cotangent t (both through Convolution's vjp).
std::vector<mx::array> FusedConv3x3::jvp(const std::vector<mx::array>& primals,
                                         const std::vector<mx::array>& tangents, const std::vector<int>& argnums) {
  const Fallback transpose_map = [this, &primals](const std::vector<mx::array>& u) {
    return mx::vjp(fallback_, primals, u).second;
  };
  const mx::array u0 = mx::zeros(output_shapes(primals)[0], primals[0].dtype(), stream());
  return mx::vjp(transpose_map, {u0}, all_tangents(primals, tangents, argnums)).second;
}

// Mapped images fold into the batch when every per-channel input (weights, norm affine,
// biases) is shared; otherwise the composition's vmap.
std::pair<std::vector<mx::array>, std::vector<int>> FusedConv3x3::vmap(const std::vector<mx::array>& inputs,
                                                                       const std::vector<int>& axes) {
  const Conv3x3Slots slots = Conv3x3Slots::of(opts_);
  const std::vector<int> per_image = slots.per_image();
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (axes[i] >= 0 && std::find(per_image.begin(), per_image.end(), int(i)) == per_image.end()) {
      return FusedPrimitive::vmap(inputs, axes);
    }
  }
  const int size = mapped_size(inputs, axes);
  std::vector<mx::array> in = inputs;
  fold_into_batch(in, axes, per_image, size, stream());
  mx::array out(output_shapes(in)[0], in[0].dtype(), std::make_shared<FusedConv3x3>(stream(), fallback_, opts_), in);
  return {{unfold_batch(out, size, stream())}, {0}};
}

// ---- Linear, Attention -------------------------------------------------------------

bool Linear::is_equivalent(const mx::Primitive& other) const {
  return has_bias_ == static_cast<const Linear&>(other).has_bias_;
}

std::vector<mx::Shape> Linear::output_shapes(const std::vector<mx::array>& inputs) {
  mx::Shape shape = inputs[0].shape();
  shape.back() = inputs[1].shape(0);
  return {shape};
}

bool Attention::is_equivalent(const mx::Primitive& other) const {
  return scale_ == static_cast<const Attention&>(other).scale_;
}

std::vector<mx::Shape> Attention::output_shapes(const std::vector<mx::array>& inputs) {
  return {inputs[0].shape()};
}

}  // namespace fusedconv
