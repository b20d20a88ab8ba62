// Metal backend of the primitives: the thin Metal API glue. Everything it launches
// (kernel name, grid, threadgroup size, buffer order, params) comes from the
// dispatch plans in metal/plan.h, which the CI emulator also launches through.
// Compiled only against MLX built with Metal (macOS); in this project's CI, which has
// no Mac, only by the macOS build rehearsal (tests/test_macos_build.py), never run.
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

[[noreturn]] void unreachable(const char* op) {
  throw std::logic_error(std::string("fusedconv.") + op +
                         ": no Metal kernel; ops should have built the reference composition");
}

}  // namespace

// linear and attention run as their compositions (MLX's matmul / softmax) on the GPU.
bool gpu_has_kernel(Op op) { return op != Op::linear && op != Op::attention; }
std::string gpu_conv3x3_kernel_family(const mx::Stream&) { return "metal"; }

void GroupNormStats::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0];
  allocate(out, name());
  const GroupNormStatsParams p = params(x);
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

void PixelNormStats::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0];
  allocate(out, name());
  const PixelNormStatsParams p = params(x);
  const mp::KernelPlan plan = mp::plan_pixel_norm_stats(p, kernel_dtype(x));
  auto& enc = begin(stream(), plan);
  enc.set_input_array(x, mp::kPixelStatsX);
  enc.set_output_array(out, mp::kPixelStatsOut);
  enc.set_bytes(p, mp::kPixelStatsParams);
  dispatch(enc, plan);
}

void FusedConv3x3::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  allocate(out, name());
  const Conv3x3Params p = params(inputs);
  const mp::KernelPlan plan = mp::plan_conv3x3(p, kernel_dtype(out));
  auto& enc = begin(stream(), plan);

  // Absent optional inputs are bound to x: the kernel reads a buffer only when its
  // flag in the params says it is present.
  const Conv3x3Slots slot = Conv3x3Slots::of(options());
  const std::pair<int, int> bindings[] = {
      {slot.x, mp::kConvX}, {slot.weight, mp::kConvWeight}, {slot.stats, mp::kConvStats},
      {slot.gamma, mp::kConvGamma}, {slot.beta, mp::kConvBeta}, {slot.bias, mp::kConvBias},
      {slot.residual, mp::kConvResidual}, {slot.shortcut_x, mp::kConvShortcutX},
      {slot.shortcut_w, mp::kConvShortcutW}, {slot.shortcut_bias, mp::kConvShortcutBias}};
  for (const auto& [input, buffer] : bindings) enc.set_input_array(inputs[input >= 0 ? input : slot.x], buffer);
  enc.set_output_array(out, mp::kConvOut);
  enc.set_bytes(p, mp::kConvParams);
  dispatch(enc, plan);
}

void Linear::eval_gpu(const std::vector<mx::array>&, mx::array&) { unreachable(name()); }

void Attention::eval_gpu(const std::vector<mx::array>&, mx::array&) { unreachable(name()); }

}  // namespace fusedconv
