// CUDA backend of the primitives (MLX's CUDA build): the launch glue. Everything it
// launches (module, kernel, grid, block, shared memory) comes from cuda/plan.h.
//
// Each kernel goes through MLX's public precompiled_cuda_kernel primitive (mlx/fast.h):
// evaluating that primitive on our arrays allocates them in device memory on the
// stream's pool (counted by MLX's allocator), loads the module once per device, and adds
// the kernel to the stream's CUDA graph with its inputs and outputs as dependencies. The
// wgmma conv is the exception (launch_allocated): its CUfunction added to the graph through
// the command encoder's exported entry points, its output allocated by the launch before it.
// MLX's own launch helpers cannot be used from an extension: libmlx links the CUDA
// runtime statically (a kernel address of ours means nothing to it) and its device
// allocation entry points are not exported. The kernels' machine code is built per
// architecture (CMake: FUSEDCONV_CUDA_ARCHITECTURES) as compressed fatbins (the driver
// loads those as it does cubins) and installed beside this module under cuda/.
#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <utility>

#include "cuda/kernel_params.h"
#include "cuda/plan.h"
#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/utils.h"
#include "mlx/fast.h"
#include "primitives.h"

namespace fusedconv {

namespace {

namespace cp = cuda_plan;
namespace fs = std::filesystem;

const fs::path& kernel_dir() {
  static const fs::path dir = [] {
    Dl_info info;
    if (!dladdr(reinterpret_cast<void*>(&kernel_dir), &info)) {
      throw std::runtime_error("fusedconv: cannot locate the extension module to load its CUDA kernels");
    }
    return fs::path(info.dli_fname).parent_path() / "cuda";
  }();
  return dir;
}

std::string read_file(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  if (!f) throw std::runtime_error("fusedconv: cannot read " + path.string());
  return s.str();
}

// A module's machine code for compute capability major.minor (suffix "a": the
// arch-specific one).
fs::path machine_code_path(const std::string& module, int major, int minor, const char* suffix = "") {
  return kernel_dir() / (module + ".sm_" + std::to_string(major) + std::to_string(minor) + suffix + ".fatbin");
}

// One module's kernels for the stream's device: the machine code of the newest
// architecture built that the device runs (arch-specific "a" code for its exact compute
// capability, else the same major version with minor <= the device's), else the PTX, which
// the driver compiles for it. (MLX copies and hashes the image at every launch: modules
// are kept small, and compressed.)
const std::string& module_image(const std::string& module, const mx::Stream& s) {
  static std::mutex mutex;
  static std::map<std::pair<std::string, int>, std::string> images;
  auto& device = mx::cu::device(s.device);
  const int major = device.compute_capability_major(), minor = device.compute_capability_minor();
  std::lock_guard lock(mutex);
  const auto key = std::make_pair(module, major * 10 + minor);
  if (auto it = images.find(key); it != images.end()) return it->second;
  fs::path chosen = machine_code_path(module, major, minor, "a");
  if (!fs::exists(chosen)) chosen.clear();
  for (int m = minor; m >= 0 && chosen.empty(); --m) {
    if (fs::exists(machine_code_path(module, major, m))) chosen = machine_code_path(module, major, m);
  }
  if (chosen.empty() && fs::exists(kernel_dir() / (module + ".ptx"))) chosen = kernel_dir() / (module + ".ptx");
  if (chosen.empty()) {
    throw std::runtime_error("fusedconv: no CUDA kernels for compute capability " + std::to_string(major) + "." +
                             std::to_string(minor) + " in " + kernel_dir().string() +
                             " (rebuild with FUSEDCONV_CUDA_ARCHITECTURES including it)");
  }
  return images.emplace(key, read_file(chosen)).first->second;
}

// Whether the conv may take a wgmma kernel: the device is compute capability 9.0 and the
// build installed the kernels' sm_90a machine code. FUSEDCONV_CUDA_WGMMA=0 keeps Hopper on the
// mma.sync kernel (to compare the two, and to test both on one GPU); read at every launch,
// as the tests switch it.
bool wgmma_available(const mx::Stream& s) {
  const char* v = std::getenv("FUSEDCONV_CUDA_WGMMA");
  if (v && std::string(v) == "0") return false;
  auto& device = mx::cu::device(s.device);
  static const bool installed = fs::exists(machine_code_path("fc_conv3x3_wgmma_bfloat16_act", 9, 0, "a"));
  return device.compute_capability_major() == 9 && device.compute_capability_minor() == 0 && installed;
}

// The most dynamic shared memory one block may opt into on the stream's device.
unsigned max_shared_bytes(const mx::Stream& s) {
  static std::mutex mutex;
  static std::map<int, unsigned> limits;
  const int ordinal = mx::cu::device(s.device).cuda_device();
  std::lock_guard lock(mutex);
  if (auto it = limits.find(ordinal); it != limits.end()) return it->second;
  CUdevice device;
  int bytes = 0;
  if (cuDeviceGet(&device, ordinal) != CUDA_SUCCESS ||
      cuDeviceGetAttribute(&bytes, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, device) != CUDA_SUCCESS) {
    throw std::runtime_error("fusedconv: cannot read the CUDA device's shared-memory limit");
  }
  return limits.emplace(ordinal, unsigned(bytes)).first->second;
}

// Whether an array's data starts on 16 bytes, read from its device address (array::data()
// would copy the buffer to the host).
bool aligned16(const mx::array& a) { return reinterpret_cast<uintptr_t>(mx::gpu_ptr<void>(a)) % 16 == 0; }

void launch(const mx::Stream& s, const cp::KernelPlan& k, const std::vector<mx::array>& inputs,
            std::vector<mx::array> outputs, const std::vector<mx::fast::ScalarArg>& scalars) {
  std::vector<mx::Shape> shapes;
  std::vector<mx::Dtype> dtypes;
  for (const mx::array& o : outputs) {
    shapes.push_back(o.shape());
    dtypes.push_back(o.dtype());
  }
  const std::vector<mx::array> node = mx::fast::precompiled_cuda_kernel(
      k.name, module_image(k.module, s), inputs, shapes, dtypes, scalars,
      {int(k.blocks_x * k.threads), int(k.blocks_y), 1}, {int(k.threads), 1, 1}, int(k.shared_bytes), std::nullopt,
      false, s);
  node[0].primitive().eval_gpu(inputs, outputs);
}

// A kernel of ours as a function of the stream's device (its primary context, the one
// MLX's runtime uses), loaded once, with its dynamic shared-memory limit raised.
CUfunction loaded_kernel(const mx::Stream& s, const cp::KernelPlan& k) {
  static std::mutex mutex;
  static std::map<std::pair<std::string, int>, CUfunction> functions;
  const int ordinal = mx::cu::device(s.device).cuda_device();
  std::lock_guard lock(mutex);
  const auto key = std::make_pair(k.name, ordinal);
  if (auto it = functions.find(key); it != functions.end()) return it->second;
  const std::string& image = module_image(k.module, s);
  CUdevice device;
  CUcontext context;
  CUmodule module;
  CUfunction function;
  const auto check = [&](CUresult r, const char* what) {
    if (r != CUDA_SUCCESS) throw std::runtime_error(std::string("fusedconv: ") + what + " failed for " + k.name);
  };
  check(cuDeviceGet(&device, ordinal), "cuDeviceGet");
  check(cuDevicePrimaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain");
  check(cuCtxPushCurrent(context), "cuCtxPushCurrent");
  const CUresult loaded = cuModuleLoadData(&module, image.data());
  const CUresult found = loaded == CUDA_SUCCESS ? cuModuleGetFunction(&function, module, k.name.c_str()) : loaded;
  const CUresult raised =
      found == CUDA_SUCCESS
          ? cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, int(k.shared_bytes))
          : found;
  cuCtxPopCurrent(&context);
  check(loaded, "cuModuleLoadData");
  check(found, "cuModuleGetFunction");
  check(raised, "cuFuncSetAttribute");
  return functions.emplace(key, function).first->second;  // (the module stays loaded)
}

// A conv kernel added to the stream's graph directly: the inputs by device address, then
// the output (already allocated), then the int scalars, in the kernel's parameter order.
// (precompiled_cuda_kernel copies and hashes the module image at every launch: for the
// wgmma module, tens of microseconds of host time a conv, which MLX's graph waits out.)
void launch_allocated(const mx::Stream& s, const cp::KernelPlan& k, const std::vector<mx::array>& inputs,
                      const mx::array& out, std::vector<int> scalars) {
  const CUfunction function = loaded_kernel(s, k);
  auto& encoder = mx::cu::get_command_encoder(s);
  std::vector<const void*> pointers;
  for (const mx::array& a : inputs) pointers.push_back(mx::gpu_ptr<void>(a));
  pointers.push_back(mx::gpu_ptr<void>(out));
  std::vector<void*> params;
  for (const void*& p : pointers) params.push_back(&p);
  for (int& v : scalars) params.push_back(&v);
  for (const mx::array& a : inputs) encoder.set_input_array(a);
  encoder.set_output_array(out);
  encoder.add_kernel_node_raw(function, dim3(k.blocks_x, k.blocks_y, 1), dim3(k.threads, 1, 1), dim3(), k.shared_bytes,
                              params.data());
}

[[noreturn]] void unreachable(const char* op) {
  throw std::logic_error(std::string("fusedconv.") + op +
                         ": no CUDA kernel; ops should have built the reference composition");
}

}  // namespace

// linear and attention run as their compositions (MLX's matmul / softmax) on the GPU.
bool gpu_has_kernel(Op op) { return op != Op::linear && op != Op::attention; }
std::string gpu_conv3x3_kernel_family(const mx::Stream& s) {
  return cp::tensor_core_family(max_shared_bytes(s), wgmma_available(s));
}

void GroupNormStats::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0];
  const GroupNormStatsParams p = params(x);
  const bool rows = cp::group_norm_rows(p, kernel_dtype(x), aligned16(x));
  const cp::StatsSlices slices = cp::group_norm_slices(p, rows);
  const int h = x.shape(1), w = x.shape(2);
  // The slices' shifted sums: kStatsMaxSlices x 2 floats per (image, group) at most.
  mx::array partials({p.n * p.groups * slices.count * 2}, mx::float32, nullptr, {});
  launch(stream(), cp::plan_group_norm_partial(p, slices, kernel_dtype(x), rows), {x}, {partials},
         {p.n, h, w, p.c, p.groups, slices.count, slices.pixels});
  launch(stream(), cp::plan_group_norm_merge(p, kernel_dtype(x)), {partials, x}, {out},
         {p.n, h, w, p.c, p.groups, slices.count, p.eps});
  mx::cu::get_command_encoder(stream()).add_temporary(partials);
}

void PixelNormStats::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const mx::array& x = inputs[0];
  const PixelNormStatsParams p = params(x);
  launch(stream(), cp::plan_pixel_norm_stats(p, kernel_dtype(x)), {x}, {out},
         {x.shape(0) * x.shape(1), x.shape(2), p.c, p.eps});
}

void FusedConv3x3::eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) {
  const Conv3x3Params p = params(inputs);
  // The kernels take every input; absent ones are bound to x, which the kernel reads
  // for an input only when its flag in the params says it is present.
  const Conv3x3Slots slot = Conv3x3Slots::of(options());
  std::vector<mx::array> bound;
  for (int i : {slot.x, slot.weight, slot.stats, slot.gamma, slot.beta, slot.bias, slot.residual, slot.shortcut_x,
                slot.shortcut_w, slot.shortcut_bias}) {
    bound.push_back(inputs[i >= 0 ? i : slot.x]);
  }
  std::vector<int> fields;
#define FC_FIELD(f) fields.push_back(p.f);
  FC_CONV3X3_FIELDS(FC_FIELD)
#undef FC_FIELD
  const bool vectors = aligned16(inputs[slot.x]) && aligned16(inputs[slot.weight]);
  const cp::KernelPlan plan =
      cp::plan_conv3x3(p, kernel_dtype(out), max_shared_bytes(stream()), vectors, wgmma_available(stream()));
  if (plan.name.rfind("fc_conv3x3_wgmma_", 0) == 0) {
    // The wgmma kernel reads its weights repacked into whole tiles, in the weights' slot
    // (bound[1]); the temporary is handed to the encoder after the launch that reads it.
    // The packing launch also allocates the conv's output (MLX allocates a precompiled
    // kernel's outputs on the stream's pool; its allocator is not exported), so that the
    // conv itself goes to the graph directly.
    const mx::array& w = inputs[slot.weight];
    const int elements = int(cp::packed_weight_elements(p));
    mx::array packed({elements}, w.dtype(), nullptr, {});
    launch(stream(), cp::plan_pack_conv3x3_weights(p), {w}, {packed, out}, {p.o, p.c, elements / 8});
    bound[1] = packed;
    launch_allocated(stream(), plan, bound, out, std::move(fields));
    mx::cu::get_command_encoder(stream()).add_temporary(packed);
    return;
  }
  launch(stream(), plan, bound, {out}, std::vector<mx::fast::ScalarArg>(fields.begin(), fields.end()));
}

void Linear::eval_gpu(const std::vector<mx::array>&, mx::array&) { unreachable(name()); }

void Attention::eval_gpu(const std::vector<mx::array>&, mx::array&) { unreachable(name()); }

}  // namespace fusedconv
