#include "primitives.h"

#include <stdexcept>

#include "cpu/attention.h"
#include "cpu/conv3x3.h"
#include "cpu/linear.h"
#include "cpu/group_norm_stats.h"
#include "cpu/parallel.h"
#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

namespace fusedconv {

OutOfMemory::OutOfMemory(const char* op, size_t bytes)
    : message_(std::string("fusedconv.") + op + ": out of memory allocating " + std::to_string(bytes) +
               " bytes (" + std::to_string(bytes >> 20) + " MiB)") {}

void allocate(mx::array& a, const char* op) {
  mx::allocator::Data data = mx::allocator::malloc(a.nbytes());
  if (data.buffer().ptr() == nullptr && a.nbytes() > 0) throw OutOfMemory(op, a.nbytes());
  a.set_data(std::move(data));
}

namespace {

cpu::DType cpu_dtype(const mx::array& a) {
  switch (a.dtype()) {
    case mx::float32: return cpu::DType::f32;
    case mx::float16: return cpu::DType::f16;
    case mx::bfloat16: return cpu::DType::bf16;
    default: throw std::invalid_argument("fusedconv: unsupported dtype reached a kernel");
  }
}

// Scratch lives in MLX's allocator so that mx.get_peak_memory() sees it; the
// encoder keeps it alive until the dispatched task has run.
mx::array scratch_array(size_t floats) {
  mx::array s({int(std::max<size_t>(floats, 1))}, mx::float32, nullptr, {});
  allocate(s, "scratch");
  return s;
}

#if !defined(FUSEDCONV_METAL)
[[noreturn]] void no_gpu(const char* op) {
  throw std::runtime_error(std::string("fusedconv.") + op +
                           ": this build has no GPU backend for this MLX (Metal kernels are built "
                           "only against MLX with Metal). Run it on the CPU stream: stream=mx.cpu.");
}
#endif

}  // namespace

// ---- GroupNormStats ----------------------------------------------------------

void GroupNormStats::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0];
  allocate(out, name());
  const GroupNormStatsParams p{x.shape(0), x.shape(3), groups_, eps_, fc_int64(x.shape(1)) * x.shape(2)};
  const auto plan = cpu::plan_group_norm_stats(p, cpu::default_threads());
  mx::array scratch = scratch_array(plan.scratch_floats);
  auto& enc = mx::cpu::get_command_encoder(stream());
  enc.set_input_array(x);
  enc.set_output_array(out);
  enc.dispatch([p, plan, dt = cpu_dtype(x), xp = x.data<void>(), op = out.data<float>(),
                sp = scratch.data<float>()] { cpu::group_norm_stats(p, dt, xp, op, plan, sp); });
  enc.add_temporary(std::move(scratch));
}

#if !defined(FUSEDCONV_METAL)
void GroupNormStats::eval_gpu(const std::vector<mx::array>&, mx::array&) {
  no_gpu("group_norm_stats");
}
#endif

bool GroupNormStats::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const GroupNormStats&>(other);
  return groups_ == o.groups_ && eps_ == o.eps_;
}

std::vector<mx::Shape> GroupNormStats::output_shapes(const std::vector<mx::array>& inputs) {
  return {{inputs[0].shape(0), groups_, 2}};
}

// ---- FusedConv3x3 ------------------------------------------------------------

Conv3x3Params FusedConv3x3::params(const std::vector<mx::array>& inputs) const {
  const mx::array& x = inputs[0];
  const mx::array& w = inputs[1];
  const int up = opts_.upsample;
  const int shortcut_c = opts_.has_shortcut ? inputs[shortcut_index()].shape(3) : 0;
  return Conv3x3Params{x.shape(0), x.shape(1), x.shape(2), x.shape(3),
                       x.shape(1) * up, x.shape(2) * up, w.shape(0), opts_.groups, up,
                       int(opts_.silu), int(opts_.has_bias), int(opts_.has_residual),
                       shortcut_c, int(opts_.has_shortcut_bias)};
}

size_t FusedConv3x3::shortcut_index() const {
  return 2 + (opts_.groups ? 3 : 0) + (opts_.has_bias ? 1 : 0);
}

void FusedConv3x3::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  allocate(out, name());
  const Conv3x3Params p = params(inputs);
  const auto plan = cpu::plan_conv3x3(p, cpu_dtype(out), cpu::default_threads());
  mx::array scratch = scratch_array(plan.scratch_floats());

  auto& enc = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) enc.set_input_array(a);
  enc.set_output_array(out);

  cpu::Conv3x3Buffers b{};
  b.x = inputs[0].data<void>();
  b.weight = inputs[1].data<void>();
  b.out = out.data<void>();
  size_t i = 2;
  if (opts_.groups) {
    b.stats = inputs[i++].data<float>();
    b.gamma = inputs[i++].data<void>();
    b.beta = inputs[i++].data<void>();
  }
  if (opts_.has_bias) b.bias = inputs[i++].data<void>();
  if (opts_.has_residual) b.residual = inputs[i++].data<void>();
  if (opts_.has_shortcut) {
    b.shortcut_x = inputs[i++].data<void>();
    b.shortcut_w = inputs[i++].data<void>();
    if (opts_.has_shortcut_bias) b.shortcut_bias = inputs[i++].data<void>();
  }

  enc.dispatch([p, plan, b, dt = cpu_dtype(out), sp = scratch.data<float>()] {
    cpu::conv3x3(p, dt, b, plan, sp);
  });
  enc.add_temporary(std::move(scratch));
}

#if !defined(FUSEDCONV_METAL)
void FusedConv3x3::eval_gpu(const std::vector<mx::array>&, mx::array&) { no_gpu("conv3x3"); }
#endif

bool FusedConv3x3::is_equivalent(const mx::Primitive& other) const {
  return opts_ == static_cast<const FusedConv3x3&>(other).opts_;
}

std::vector<mx::Shape> FusedConv3x3::output_shapes(const std::vector<mx::array>& inputs) {
  const Conv3x3Params p = params(inputs);
  return {{p.n, p.ho, p.wo, p.o}};
}

// ---- Linear ------------------------------------------------------------------

void Linear::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0];
  const mx::array& w = inputs[1];
  allocate(out, name());
  const int m = x.shape(0), k = x.shape(1), n = w.shape(0);
  const auto plan = cpu::plan_linear(m, k, n, cpu_dtype(out), cpu::default_threads());
  mx::array scratch = scratch_array(plan.scratch_floats());
  auto& enc = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) enc.set_input_array(a);
  enc.set_output_array(out);
  const cpu::LinearJob job{m, k, n, x.data<void>(), has_bias_ ? inputs[2].data<void>() : nullptr,
                           out.data<void>(), nullptr};
  enc.dispatch([job, plan, dt = cpu_dtype(out), wp = w.data<void>(), sp = scratch.data<float>()] {
    cpu::linear(job, dt, wp, plan, sp);
  });
  enc.add_temporary(std::move(scratch));
}

#if !defined(FUSEDCONV_METAL)
void Linear::eval_gpu(const std::vector<mx::array>&, mx::array&) { no_gpu("linear"); }
#endif

bool Linear::is_equivalent(const mx::Primitive& other) const {
  return has_bias_ == static_cast<const Linear&>(other).has_bias_;
}

std::vector<mx::Shape> Linear::output_shapes(const std::vector<mx::array>& inputs) {
  return {{inputs[0].shape(0), inputs[1].shape(0)}};
}

// ---- Attention ---------------------------------------------------------------

void Attention::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& q = inputs[0];
  const mx::array& k = inputs[1];
  allocate(out, name());
  const cpu::AttentionJob job{q.shape(0), q.shape(1), k.shape(1), q.shape(2), scale_,
                              q.data<void>(), k.data<void>(), inputs[2].data<void>(), out.data<void>()};
  const auto plan = cpu::plan_attention(job.batch, job.tq, job.c, cpu_dtype(out), cpu::default_threads());
  mx::array scratch = scratch_array(plan.worker_floats * plan.threads);
  auto& enc = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) enc.set_input_array(a);
  enc.set_output_array(out);
  enc.dispatch([job, plan, dt = cpu_dtype(out), sp = scratch.data<float>()] {
    cpu::attention(job, dt, plan, sp);
  });
  enc.add_temporary(std::move(scratch));
}

#if !defined(FUSEDCONV_METAL)
void Attention::eval_gpu(const std::vector<mx::array>&, mx::array&) { no_gpu("attention"); }
#endif

bool Attention::is_equivalent(const mx::Primitive& other) const {
  return scale_ == static_cast<const Attention&>(other).scale_;
}

std::vector<mx::Shape> Attention::output_shapes(const std::vector<mx::array>& inputs) {
  return {inputs[0].shape()};
}

}  // namespace fusedconv
