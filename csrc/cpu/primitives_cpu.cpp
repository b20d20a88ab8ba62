// CPU backend of the primitives: plan the kernel on the eval thread, dispatch it to the
// stream's CPU encoder with its scratch (through MLX's allocator, so mx.get_peak_memory
// counts it; the encoder keeps it alive until the task has run).
#include "cpu/attention.h"
#include "cpu/conv3x3.h"
#include "cpu/group_norm_stats.h"
#include "cpu/linear.h"
#include "cpu/parallel.h"
#include "cpu/pixel_norm_stats.h"
#include "mlx/backend/cpu/encoder.h"
#include "primitives.h"

namespace fusedconv {

namespace {

cpu::DType cpu_dtype(const mx::array& a) {
  switch (a.dtype()) {
    case mx::float32: return cpu::DType::f32;
    case mx::float16: return cpu::DType::f16;
    case mx::bfloat16: return cpu::DType::bf16;
    default: throw std::invalid_argument("fusedconv: unsupported dtype reached a CPU kernel");
  }
}

mx::array scratch_array(size_t floats) {
  mx::array s({int(std::max<size_t>(floats, 1))}, mx::float32, nullptr, {});
  allocate(s, "scratch");
  return s;
}

// Registers inputs and output with the encoder, dispatches `task`, keeps `scratch` alive.
template <class Task>
void dispatch(const mx::Stream& stream, const std::vector<mx::array>& inputs, mx::array& out, mx::array scratch,
              Task task) {
  auto& enc = mx::cpu::get_command_encoder(stream);
  for (const auto& a : inputs) enc.set_input_array(a);
  enc.set_output_array(out);
  enc.dispatch(std::move(task));
  enc.add_temporary(std::move(scratch));
}

}  // namespace

void GroupNormStats::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0];
  allocate(out, name());
  const GroupNormStatsParams p = params(x);
  const auto plan = cpu::plan_group_norm_stats(p, cpu::default_threads());
  mx::array scratch = scratch_array(plan.scratch_floats);
  dispatch(stream(), inputs, out, scratch,
           [p, plan, dt = cpu_dtype(x), xp = x.data<void>(), op = out.data<float>(), sp = scratch.data<float>()] {
             cpu::group_norm_stats(p, dt, xp, op, plan, sp);
           });
}

void PixelNormStats::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0];
  allocate(out, name());
  const PixelNormStatsParams p = params(x);
  auto& enc = mx::cpu::get_command_encoder(stream());
  enc.set_input_array(x);
  enc.set_output_array(out);
  enc.dispatch([p, dt = cpu_dtype(x), xp = x.data<void>(), op = out.data<float>()] {
    cpu::pixel_norm_stats(p, dt, xp, op, cpu::default_threads());
  });
}

void FusedConv3x3::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  allocate(out, name());
  const Conv3x3Params p = params(inputs);
  const auto plan = cpu::plan_conv3x3(p, cpu_dtype(out), cpu::default_threads());
  mx::array scratch = scratch_array(plan.scratch_floats());
  const Conv3x3Inputs in = Conv3x3Inputs::unpack(inputs, options());
  auto data = [](const std::optional<mx::array>& a) { return a ? a->data<void>() : nullptr; };
  const cpu::Conv3x3Buffers b{in.x.data<void>(), in.weight.data<void>(),
                              in.stats ? in.stats->data<float>() : nullptr, data(in.gamma), data(in.beta),
                              data(in.bias), data(in.residual), data(in.shortcut_x), data(in.shortcut_w),
                              data(in.shortcut_bias), out.data<void>()};
  dispatch(stream(), inputs, out, scratch, [p, plan, b, dt = cpu_dtype(out), sp = scratch.data<float>()] {
    cpu::conv3x3(p, dt, b, plan, sp);
  });
}

// x [..., K] as M = size / K rows.
void Linear::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0];
  const mx::array& w = inputs[1];
  allocate(out, name());
  const int k = x.shape(-1), n = w.shape(0), m = int(x.size() / k);
  const auto plan = cpu::plan_linear(m, k, n, cpu_dtype(out), cpu::default_threads());
  mx::array scratch = scratch_array(plan.scratch_floats());
  const cpu::LinearJob job{m, k, n, x.data<void>(), has_bias_ ? inputs[2].data<void>() : nullptr,
                           out.data<void>(), nullptr};
  dispatch(stream(), inputs, out, scratch,
           [job, plan, dt = cpu_dtype(out), wp = w.data<void>(), sp = scratch.data<float>()] {
             cpu::linear(job, dt, wp, plan, sp);
           });
}

void Attention::eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& q = inputs[0];
  const mx::array& k = inputs[1];
  allocate(out, name());
  const cpu::AttentionJob job{q.shape(0), q.shape(1), k.shape(1), q.shape(2), scale_,
                              q.data<void>(), k.data<void>(), inputs[2].data<void>(), out.data<void>()};
  const auto plan = cpu::plan_attention(job.batch, job.tq, job.c, cpu_dtype(out), cpu::default_threads());
  mx::array scratch = scratch_array(plan.worker_floats * plan.threads);
  dispatch(stream(), inputs, out, scratch, [job, plan, dt = cpu_dtype(out), sp = scratch.data<float>()] {
    cpu::attention(job, dt, plan, sp);
  });
}

}  // namespace fusedconv
