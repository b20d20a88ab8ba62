// Runs the project's Metal kernels on the CPU emulator, launched through the same
// dispatch plans as the Metal host code (csrc/metal/plan.h).
//   runner conv3x3|stats DIR
// DIR/params.txt holds the Conv3x3Params / GroupNormStatsParams fields and the dtype
// (0 float32, 1 float16, 2 bfloat16); DIR/b<i>.bin the buffer bound at index i (absent:
// a 1-byte buffer, so any read of it is out of bounds). Writes DIR/out.bin.
// Exit 3: the emulator rejected the launch (divergent barrier, deadlock, ...).
#define FC_METAL_EMULATOR 1
#include <metal_stdlib>

#ifndef FC_CONV_SOURCE
#define FC_CONV_SOURCE "metal/conv3x3.metal"
#endif
#ifndef FC_STATS_SOURCE
#define FC_STATS_SOURCE "metal/group_norm_stats.metal"
#endif
#include FC_CONV_SOURCE
#include FC_STATS_SOURCE

#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>

#include "metal/plan.h"

namespace mp = fusedconv::metal_plan;

namespace {

struct Buffer {
  void* data = nullptr;
  size_t bytes = 0;
  ~Buffer() { std::free(data); }
};

void read_buffer(const std::string& path, Buffer& b) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    b.data = std::malloc(1);
    return;
  }
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  b.bytes = bytes.size();
  b.data = std::malloc(b.bytes ? b.bytes : 1);
  std::memcpy(b.data, bytes.data(), b.bytes);
}

std::vector<double> read_params(const std::string& dir) {
  std::ifstream f(dir + "/params.txt");
  std::vector<double> v;
  for (double x; f >> x;) v.push_back(x);
  return v;
}

void write_out(const std::string& dir, const void* data, size_t bytes) {
  std::ofstream f(dir + "/out.bin", std::ios::binary);
  f.write(static_cast<const char*>(data), std::streamsize(bytes));
}

template <class T>
int run_conv(const std::string& dir, fusedconv::Conv3x3Params p, mp::KernelDType dt) {
  const mp::KernelPlan plan = mp::plan_conv3x3(p, dt);
  Buffer b[mp::kConvBufferCount];
  for (int i = 0; i < mp::kConvBufferCount; ++i) {
    if (i != mp::kConvOut && i != mp::kConvParams) read_buffer(dir + "/b" + std::to_string(i) + ".bin", b[i]);
  }
  const size_t out_bytes = size_t(p.n) * p.ho * p.wo * p.o * sizeof(T);
  Buffer& out = b[mp::kConvOut];
  out.bytes = out_bytes;
  out.data = std::malloc(out_bytes);
  using Fn = void (*)(const T*, const T*, const float*, const T*, const T*, const T*, const T*, const T*,
                      const T*, const T*, T*, fusedconv::Conv3x3Params&, metal::uint3, uint, uint, uint);
  Fn fn = reinterpret_cast<Fn>(fc_emu::find_kernel(plan.name));
  auto buf = [&](int i) { return static_cast<const T*>(b[i].data); };
  fc_emu::launch(plan.threadgroups.x, plan.threadgroups.y, plan.threadgroups.z, int(plan.threads.x),
                 plan.threadgroup_bytes, [&](int tid, metal::uint3 tg) {
                   fn(buf(mp::kConvX), buf(mp::kConvWeight), static_cast<const float*>(b[mp::kConvStats].data),
                      buf(mp::kConvGamma), buf(mp::kConvBeta), buf(mp::kConvBias), buf(mp::kConvResidual),
                      buf(mp::kConvShortcutX), buf(mp::kConvShortcutW), buf(mp::kConvShortcutBias),
                      static_cast<T*>(out.data), p, tg, uint(tid), uint(tid % 32), uint(tid / 32));
                 });
  write_out(dir, out.data, out_bytes);
  std::printf("%s grid %ux%ux%u threads %u tgmem %zu\n", plan.name.c_str(), plan.threadgroups.x,
              plan.threadgroups.y, plan.threadgroups.z, plan.threads.x, plan.threadgroup_bytes);
  return 0;
}

template <class T>
int run_stats(const std::string& dir, fusedconv::GroupNormStatsParams p, mp::KernelDType dt) {
  const mp::KernelPlan plan = mp::plan_group_norm_stats(p, dt);
  Buffer x;
  read_buffer(dir + "/b0.bin", x);
  std::vector<float> out(size_t(p.n) * p.groups * 2, std::numeric_limits<float>::quiet_NaN());
  using Fn = void (*)(const T*, float*, fusedconv::GroupNormStatsParams&, metal::uint3, uint, uint, uint);
  Fn fn = reinterpret_cast<Fn>(fc_emu::find_kernel(plan.name));
  fc_emu::launch(plan.threadgroups.x, plan.threadgroups.y, plan.threadgroups.z, int(plan.threads.x),
                 plan.threadgroup_bytes, [&](int tid, metal::uint3 tg) {
                   fn(static_cast<const T*>(x.data), out.data(), p, tg, uint(tid), uint(tid % 32),
                      uint(tid / 32));
                 });
  write_out(dir, out.data(), out.size() * sizeof(float));
  std::printf("%s grid %ux%ux%u threads %u\n", plan.name.c_str(), plan.threadgroups.x, plan.threadgroups.y,
              plan.threadgroups.z, plan.threads.x);
  return 0;
}

template <template <class> class Run, class P>
int by_dtype(const std::string& dir, const P& p, int dtype) {
  switch (dtype) {
    case 0: return Run<float>::run(dir, p, mp::KernelDType::float32);
    case 1: return Run<half>::run(dir, p, mp::KernelDType::float16);
    default: return Run<fc_bf16>::run(dir, p, mp::KernelDType::bfloat16);
  }
}
template <class T>
struct Conv {
  static int run(const std::string& d, const fusedconv::Conv3x3Params& p, mp::KernelDType dt) {
    return run_conv<T>(d, p, dt);
  }
};
template <class T>
struct Stats {
  static int run(const std::string& d, const fusedconv::GroupNormStatsParams& p, mp::KernelDType dt) {
    return run_stats<T>(d, p, dt);
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
    if (op == "conv3x3" && v.size() == 15) {
      fusedconv::Conv3x3Params p{int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4]), int(v[5]), int(v[6]),
                                 int(v[7]), int(v[8]), int(v[9]), int(v[10]), int(v[11]), int(v[12]), int(v[13])};
      return by_dtype<Conv>(dir, p, int(v[14]));
    }
    if (op == "stats" && v.size() == 6) {
      fusedconv::GroupNormStatsParams p{int(v[0]), int(v[1]), int(v[2]), int(v[3]), float(v[4])};
      return by_dtype<Stats>(dir, p, int(v[5]));
    }
    std::fprintf(stderr, "bad op or params\n");
    return 2;
  } catch (const fc_emu::LaunchError& e) {
    std::fprintf(stderr, "LAUNCH ERROR: %s\n", e.what());
    return 3;
  }
}
