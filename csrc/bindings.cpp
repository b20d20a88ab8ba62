// Python module fusedconv._ext. NB_DOMAIN mlx (CMakeLists.txt) shares MLX's
// nanobind type registry, so mx.array and mx.Stream pass straight through.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>

#include "cpu/isa.h"
#include "mlx/version.h"
#include "ops.h"
#include "primitives.h"
#include "reference.h"

namespace nb = nanobind;
namespace mx = mlx::core;
using namespace nb::literals;

NB_MODULE(_ext, m) {
  m.doc() = "fusedconv C++ primitives (see fusedconv.ops for the documented API)";
  m.attr("built_mlx_version") = FUSEDCONV_MLX_VERSION;
  m.def("linked_mlx_version", [] { return std::string(mlx::core::version()); },
        "MLX version of the libmlx this extension is running against.");
  nb::exception<fusedconv::DTypeError>(m, "DTypeError", PyExc_TypeError);

  m.def("group_norm_stats", &fusedconv::group_norm_stats, "x"_a, "groups"_a, "eps"_a,
        nb::kw_only(), "stream"_a = nb::none());
  m.def("pixel_norm_stats", &fusedconv::pixel_norm_stats, "x"_a, "eps"_a, nb::kw_only(), "stream"_a = nb::none());
  m.def("conv3x3", &fusedconv::conv3x3, "x"_a, "weight"_a, "bias"_a.none(), "stats"_a.none(),
        "gamma"_a.none(), "beta"_a.none(), "pixel_norm"_a, "silu"_a, "upsample"_a, "residual"_a.none(),
        "shortcut_x"_a.none(), "shortcut_weight"_a.none(), "shortcut_bias"_a.none(), nb::kw_only(), "stream"_a = nb::none());
  m.def("linear", &fusedconv::linear, "x"_a, "weight"_a, "bias"_a.none(), nb::kw_only(),
        "stream"_a = nb::none());
  m.def("attention", &fusedconv::attention, "q"_a, "k"_a, "v"_a, "scale"_a, nb::kw_only(),
        "stream"_a = nb::none());
  m.def("has_kernel",
        [](const std::string& op, mx::StreamOrDevice s) {
          using fusedconv::Op;
          const std::pair<const char*, Op> ops[] = {{"group_norm_stats", Op::group_norm_stats},
                                                    {"pixel_norm_stats", Op::pixel_norm_stats},
                                                    {"conv3x3", Op::conv3x3}, {"linear", Op::linear},
                                                    {"attention", Op::attention}};
          for (const auto& [name, value] : ops)
            if (op == name) return fusedconv::has_kernel(mx::to_stream(s), value);
          throw std::invalid_argument("op: unknown op " + op);
        },
        "op"_a, "stream"_a = nb::none(),
        "Whether the stream's backend has a kernel for the op (else the op runs as its reference composition).");
  m.def("conv3x3_kernel_family",
        [](mx::StreamOrDevice s) {
          const mx::Stream stream = mx::to_stream(s);
          return stream.device == mx::Device::cpu ? std::string("cpu") : fusedconv::gpu_conv3x3_kernel_family(stream);
        },
        "stream"_a = nb::none(),
        "The conv3x3 kernel family on the stream's backend for 16-bit inputs: cpu, wgmma, mma or simt (CUDA), "
        "metal, or an empty string where the GPU has no kernels (the reference composition runs).");
  m.attr("ATTENTION_SCORES_BUDGET") = fusedconv::reference::kAttentionScoresBudget;
  m.def("attention_query_rows", &fusedconv::reference::attention_query_rows, "batch"_a, "keys"_a, "itemsize"_a,
        "budget"_a, "Query rows per chunk of the attention composition within `budget` bytes of scores.");
  m.def("cpu_isa", [] { return std::string(fusedconv::cpu::isa_name(fusedconv::cpu::active_isa())); },
        "Instruction set the CPU kernels use now (FUSEDCONV_CPU_ISA=<name> forces one this CPU supports).");
  m.def("cpu_isa_timings",
        [] {
          nb::dict out;
          for (const auto& t : fusedconv::cpu::calibration()) out[fusedconv::cpu::isa_name(t.isa)] = t.seconds;
          return out;
        },
        "Seconds of each CPU build on the calibration conv (measured once per process; the fastest runs).");
  m.def("cpu_isas", [] { return fusedconv::cpu::available_isas(); },
        "Comma-separated instruction sets this machine can run.");
}
