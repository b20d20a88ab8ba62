// Runs the project's Metal kernels on the CPU emulator, launched through the same
// dispatch plans as the Metal host code (csrc/metal/plan.h).
//   runner conv3x3|stats|pixel_stats DIR
// DIR/params.txt holds the Conv3x3Params / GroupNormStatsParams fields and the dtype
// (0 float32, 1 float16, 2 bfloat16); DIR/b<i>.bin the buffer bound at index i (absent:
// a 1-byte buffer, so any read of it is out of bounds). Every launch runs under each
// fc_emu::Schedule; writes DIR/out.bin (the first schedule's result).
// Exit 3: the emulator rejected a launch (divergent barrier, deadlock, ...);
// exit 4: the schedules disagree bit-wise (a race).
#define FC_METAL_EMULATOR 1
#include <metal_stdlib>

#ifndef FC_CONV_SOURCE
#define FC_CONV_SOURCE "metal/conv3x3.metal"
#endif
#ifndef FC_STATS_SOURCE
#define FC_STATS_SOURCE "metal/group_norm_stats.metal"
#endif
#ifndef FC_PIXEL_STATS_SOURCE
#define FC_PIXEL_STATS_SOURCE "metal/pixel_norm_stats.metal"
#endif
#include FC_CONV_SOURCE
#include FC_STATS_SOURCE
#include FC_PIXEL_STATS_SOURCE

#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>

#include "metal/plan.h"

namespace mp = fusedconv::metal_plan;

namespace {

// An exact-size heap buffer (ASan checks its bounds), poisoned with all-ones bytes.
struct Buffer {
  std::vector<char> bytes;
  explicit Buffer(size_t n = 1) : bytes(n ? n : 1, char(0xff)) {}
  template <class T>
  T* as() {
    return reinterpret_cast<T*>(bytes.data());
  }
};

Buffer read_buffer(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Buffer(1);
  Buffer b;
  b.bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  if (b.bytes.empty()) b.bytes.push_back(0);
  return b;
}

std::vector<double> read_params(const std::string& dir) {
  std::ifstream f(dir + "/params.txt");
  std::vector<double> v;
  for (double x; f >> x;) v.push_back(x);
  return v;
}

// The kernels take `constant T&` parameters, which the emulator sees as `T&`: the
// launchers call them with their own copies.
// Runs `launch_all(schedule)` (which returns the output buffer) under every schedule;
// writes the first result and fails when another differs.
template <class F>
int run_all_schedules(const std::string& dir, const std::string& name, F launch_all) {
  const Buffer first = launch_all(fc_emu::kSchedules[0]);
  for (fc_emu::Schedule s : fc_emu::kSchedules) {
    if (launch_all(s).bytes != first.bytes) {
      std::fprintf(stderr, "RACE: %s gives a different result under the %s schedule than under %s\n",
                   name.c_str(), fc_emu::schedule_name(s), fc_emu::schedule_name(fc_emu::kSchedules[0]));
      return 4;
    }
  }
  std::ofstream(dir + "/out.bin", std::ios::binary).write(first.bytes.data(), std::streamsize(first.bytes.size()));
  return 0;
}

template <class D>
int run_conv(const std::string& dir, fusedconv::Conv3x3Params p, mp::KernelDType dt) {
  using T = typename D::storage;
  const mp::KernelPlan plan = mp::plan_conv3x3(p, dt);
  std::vector<Buffer> b(mp::kConvBufferCount);
  for (int i = 0; i < mp::kConvOut; ++i) b[i] = read_buffer(dir + "/b" + std::to_string(i) + ".bin");
  using Fn = void (*)(const T*, const T*, const float*, const T*, const T*, const T*, const T*, const T*,
                      const T*, const T*, T*, fusedconv::Conv3x3Params&, metal::uint3, uint, uint, uint);
  const Fn fn = reinterpret_cast<Fn>(fc_emu::find_kernel(plan.name));
  std::printf("%s grid %ux%ux%u threads %u tgmem %zu\n", plan.name.c_str(), plan.threadgroups.x,
              plan.threadgroups.y, plan.threadgroups.z, plan.threads.x, plan.threadgroup_bytes);
  return run_all_schedules(dir, plan.name, [&](fc_emu::Schedule schedule) {
    Buffer out(size_t(p.n) * p.ho * p.wo * p.o * sizeof(T));
    fc_emu::launch(plan.threadgroups.x, plan.threadgroups.y, plan.threadgroups.z, int(plan.threads.x),
                   plan.threadgroup_bytes, schedule, [&](int tid, metal::uint3 tg) {
                     fn(b[mp::kConvX].as<T>(), b[mp::kConvWeight].as<T>(), b[mp::kConvStats].as<float>(),
                        b[mp::kConvGamma].as<T>(), b[mp::kConvBeta].as<T>(), b[mp::kConvBias].as<T>(),
                        b[mp::kConvResidual].as<T>(), b[mp::kConvShortcutX].as<T>(),
                        b[mp::kConvShortcutW].as<T>(), b[mp::kConvShortcutBias].as<T>(), out.as<T>(), p, tg,
                        uint(tid), uint(tid % 32), uint(tid / 32));
                   });
    return out;
  });
}

template <class D>
int run_stats(const std::string& dir, fusedconv::GroupNormStatsParams p, mp::KernelDType dt) {
  using T = typename D::storage;
  fusedconv::GroupNormSlices slices = mp::group_norm_slices(p);
  const mp::KernelPlan partial = mp::plan_group_norm_partial(p, slices, dt);
  const mp::KernelPlan merge = mp::plan_group_norm_merge(p);
  Buffer x = read_buffer(dir + "/b0.bin");
  using PartialFn = void (*)(const T*, float*, fusedconv::GroupNormStatsParams&, fusedconv::GroupNormSlices&, metal::uint3, uint, uint, uint);
  using MergeFn = void (*)(const float*, float*, fusedconv::GroupNormStatsParams&, fusedconv::GroupNormSlices&, uint);
  const PartialFn partial_fn = reinterpret_cast<PartialFn>(fc_emu::find_kernel(partial.name));
  const MergeFn merge_fn = reinterpret_cast<MergeFn>(fc_emu::find_kernel(merge.name));
  std::printf("%s grid %ux%ux%u, %s grid %u (%d slices of %lld px)\n", partial.name.c_str(), partial.threadgroups.x,
              partial.threadgroups.y, partial.threadgroups.z, merge.name.c_str(), merge.threadgroups.x,
              slices.count, slices.pixels);
  return run_all_schedules(dir, partial.name, [&](fc_emu::Schedule schedule) {
    Buffer partials(mp::group_norm_partials_floats(p, slices) * sizeof(float));
    fc_emu::launch(partial.threadgroups.x, partial.threadgroups.y, partial.threadgroups.z, int(partial.threads.x),
                   partial.threadgroup_bytes, schedule, [&](int tid, metal::uint3 tg) {
                     partial_fn(x.as<T>(), partials.as<float>(), p, slices, tg, uint(tid), uint(tid % 32),
                                uint(tid / 32));
                   });
    Buffer out(size_t(p.n) * p.groups * 2 * sizeof(float));
    fc_emu::launch(merge.threadgroups.x, merge.threadgroups.y, merge.threadgroups.z, int(merge.threads.x),
                   merge.threadgroup_bytes, schedule, [&](int tid, metal::uint3 tg) {
                     merge_fn(partials.as<float>(), out.as<float>(), p, slices, tg.x * merge.threads.x + uint(tid));
                   });
    return out;
  });
}

template <class D>
int run_pixel_stats(const std::string& dir, fusedconv::PixelNormStatsParams p, mp::KernelDType dt) {
  using T = typename D::storage;
  const mp::KernelPlan plan = mp::plan_pixel_norm_stats(p, dt);
  Buffer x = read_buffer(dir + "/b0.bin");
  using Fn = void (*)(const T*, float*, fusedconv::PixelNormStatsParams&, uint);
  const Fn fn = reinterpret_cast<Fn>(fc_emu::find_kernel(plan.name));
  std::printf("%s grid %u threads %u\n", plan.name.c_str(), plan.threadgroups.x, plan.threads.x);
  return run_all_schedules(dir, plan.name, [&](fc_emu::Schedule schedule) {
    Buffer out(size_t(p.pixels) * sizeof(float));
    fc_emu::launch(plan.threadgroups.x, 1, 1, int(plan.threads.x), 0, schedule, [&](int tid, metal::uint3 tg) {
      fn(x.as<T>(), out.as<float>(), p, tg.x * plan.threads.x + uint(tid));
    });
    return out;
  });
}

template <template <class> class Run, class P>
int by_dtype(const std::string& dir, const P& p, int dtype) {
  switch (dtype) {
    case 0: return Run<fc_float32>::run(dir, p, mp::KernelDType::float32);
    case 1: return Run<fc_float16>::run(dir, p, mp::KernelDType::float16);
    default: return Run<fc_bfloat16>::run(dir, p, mp::KernelDType::bfloat16);
  }
}
template <class D>
struct Conv {
  static int run(const std::string& d, const fusedconv::Conv3x3Params& p, mp::KernelDType dt) {
    return run_conv<D>(d, p, dt);
  }
};
template <class D>
struct PixelStats {
  static int run(const std::string& d, const fusedconv::PixelNormStatsParams& p, mp::KernelDType dt) {
    return run_pixel_stats<D>(d, p, dt);
  }
};
template <class D>
struct Stats {
  static int run(const std::string& d, const fusedconv::GroupNormStatsParams& p, mp::KernelDType dt) {
    return run_stats<D>(d, p, dt);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: runner conv3x3|stats DIR\n");
    return 2;
  }
  const std::string op = argv[1], dir = argv[2];
  const std::vector<double> v = read_params(dir);
  try {
    if (op == "conv3x3" && v.size() == 16) {
      fusedconv::Conv3x3Params p{int(v[0]), int(v[1]), int(v[2]),  int(v[3]),  int(v[4]),  int(v[5]),  int(v[6]),
                                 int(v[7]), int(v[8]), int(v[9]), int(v[10]), int(v[11]), int(v[12]), int(v[13]),
                                 int(v[14])};
      return by_dtype<Conv>(dir, p, int(v[15]));
    }
    if (op == "stats" && v.size() == 6) {
      fusedconv::GroupNormStatsParams p{int(v[0]), int(v[2]), int(v[3]), float(v[4]), fusedconv::fc_int64(v[1])};
      return by_dtype<Stats>(dir, p, int(v[5]));
    }
    if (op == "pixel_stats" && v.size() == 4) {
      fusedconv::PixelNormStatsParams p{fusedconv::fc_int64(v[0]), int(v[1]), float(v[2])};
      return by_dtype<PixelStats>(dir, p, int(v[3]));
    }
    std::fprintf(stderr, "bad op or params\n");
    return 2;
  } catch (const fc_emu::LaunchError& e) {
    std::fprintf(stderr, "LAUNCH ERROR: %s\n", e.what());
    return 3;
  }
}
