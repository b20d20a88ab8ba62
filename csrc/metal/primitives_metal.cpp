// Metal backend of the primitives: the thin Metal API glue. Everything it launches
// (kernel name, grid, threadgroup size, buffer order, params) comes from the
// dispatch plans in metal/plan.h, which the CI emulator also launches through.
// Compiled only against MLX built with Metal (macOS); never compiled or run in
// this project's CI, which has no Mac.
#include <dlfcn.h>

#include <filesystem>
#include <stdexcept>

#include "metal/plan.h"
#include "mlx/backend/metal/device.h"
#include "mlx/backend/metal/utils.h"
#include "primitives.h"

namespace fusedconv {

namespace {

namespace mp = metal_plan;

// Folder of this extension module: fusedconv.metallib is installed next to it.
const std::string& library_dir() {
  static const std::string dir = [] {
    Dl_info info;
    if (!dladdr(reinterpret_cast<void*>(&library_dir), &info)) {
      throw std::runtime_error("fusedconv: cannot locate the extension module to load fusedconv.metallib");
    }
    return std::filesystem::path(info.dli_fname).parent_path().string();
  }();
  return dir;
}

mp::KernelDType kernel_dtype(const mx::array& a) {
  switch (a.dtype()) {
    case mx::float32: return mp::KernelDType::float32;
    case mx::float16: return mp::KernelDType::float16;
    case mx::bfloat16: return mp::KernelDType::bfloat16;
    default: throw std::invalid_argument("fusedconv: unsupported dtype reached a Metal kernel");
  }
}

mx::metal::CommandEncoder& begin(const mx::Stream& s, const mp::KernelPlan& plan) {
  auto& d = mx::metal::device(s.device);
  auto* lib = d.get_library("fusedconv", library_dir());
  auto& enc = mx::metal::get_command_encoder(s);
  enc.set_compute_pipeline_state(d.get_kernel(plan.name, lib));
  return enc;
}

void dispatch(mx::metal::CommandEncoder& enc, const mp::KernelPlan& plan) {
  enc.dispatch_threadgroups(MTL::Size(plan.threadgroups.x, plan.threadgroups.y, plan.threadgroups.z),
                            MTL::Size(plan.threads.x, plan.threads.y, plan.threads.z));
}

[[noreturn]] void cpu_only(const char* op) {
  throw std::runtime_error(std::string("fusedconv.") + op +
                           " has no Metal kernel: on the GPU use MLX's own matmul / attention "
                           "(fusedconv.vae does), or run it on the CPU stream.");
}

}  // namespace

void GroupNormStats::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0];
  allocate(out, name());
  const GroupNormStatsParams p{x.shape(0), x.shape(3), groups_, eps_, fc_int64(x.shape(1)) * x.shape(2)};
  const GroupNormSlices slices = mp::group_norm_slices(p);
  // The slices' moments: at most kStatsMaxSlices x 3 floats per (image, group).
  mx::array partials({int(mp::group_norm_partials_floats(p, slices))}, mx::float32, nullptr, {});
  allocate(partials, name());

  const mp::KernelPlan partial = mp::plan_group_norm_partial(p, slices, kernel_dtype(x));
  auto& enc = begin(stream(), partial);
  enc.set_input_array(x, mp::kStatsIn);
  enc.set_output_array(partials, mp::kStatsOut);
  enc.set_bytes(p, mp::kStatsParams);
  enc.set_bytes(slices, mp::kStatsSlices);
  dispatch(enc, partial);

  const mp::KernelPlan merge = mp::plan_group_norm_merge(p);
  begin(stream(), merge);
  enc.set_input_array(partials, mp::kStatsIn);
  enc.set_output_array(out, mp::kStatsOut);
  enc.set_bytes(p, mp::kStatsParams);
  enc.set_bytes(slices, mp::kStatsSlices);
  dispatch(enc, merge);
  enc.add_temporary(std::move(partials));
}

void FusedConv3x3::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  allocate(out, name());
  const Conv3x3Params p = params(inputs);
  const mp::KernelPlan plan = mp::plan_conv3x3(p, kernel_dtype(out));
  auto& enc = begin(stream(), plan);

  // Absent optional inputs are bound to x: the kernel reads a buffer only when its
  // flag in the params says it is present.
  const mx::array& x = inputs[0];
  for (int i = mp::kConvX; i < mp::kConvOut; ++i) enc.set_input_array(x, i);
  enc.set_input_array(inputs[1], mp::kConvWeight);
  size_t i = 2;
  if (opts_.groups) {
    enc.set_input_array(inputs[i++], mp::kConvStats);
    enc.set_input_array(inputs[i++], mp::kConvGamma);
    enc.set_input_array(inputs[i++], mp::kConvBeta);
  }
  if (opts_.has_bias) enc.set_input_array(inputs[i++], mp::kConvBias);
  if (opts_.has_residual) enc.set_input_array(inputs[i++], mp::kConvResidual);
  if (opts_.has_shortcut) {
    enc.set_input_array(inputs[i++], mp::kConvShortcutX);
    enc.set_input_array(inputs[i++], mp::kConvShortcutW);
    if (opts_.has_shortcut_bias) enc.set_input_array(inputs[i++], mp::kConvShortcutBias);
  }
  enc.set_output_array(out, mp::kConvOut);
  enc.set_bytes(p, mp::kConvParams);
  dispatch(enc, plan);
}

void Linear::eval_gpu(const std::vector<mx::array>&, mx::array&) { cpu_only("linear"); }

void Attention::eval_gpu(const std::vector<mx::array>&, mx::array&) { cpu_only("attention"); }

}  // namespace fusedconv
