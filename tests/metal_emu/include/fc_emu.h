// CPU emulator of Metal compute for the project's kernels (in the manner of ROCm
// HIP-CPU): every Metal thread of a threadgroup runs as a fiber (ucontext) on one
// OS thread, under one of several deterministic schedules (Schedule) until it blocks.
//  - threadgroup_barrier counts arrivals: a thread that returns while others wait at
//    a barrier (a divergent or missed barrier) fails the launch;
//  - simd_sum and simdgroup_matrix multiply-accumulate are collectives over the 32
//    lanes of a simdgroup, exchanging values through per-simdgroup buffers;
//  - simdgroup_matrix elements live in lanes by Apple's layout (lane_coord);
//  - threadgroup memory is poisoned with all-ones bytes (NaN in f32, f16 and bf16)
//    before every threadgroup;
//  - device buffers are exact-size host allocations, so ASan checks their bounds.
// A missing barrier is a race: some order of the simdgroups then reads threadgroup
// memory before it is written, or after it is overwritten. The runner runs every
// launch under each Schedule and fails when the results differ bit-wise; the
// priority schedules let one simdgroup run ahead until it blocks at a threadgroup
// barrier, as a GPU may.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FC_EMU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define FC_EMU_ASAN 1
#endif
#if defined(FC_EMU_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

namespace fc_emu {

struct LaunchError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// (row, col) of the first of the two elements lane `lane` holds in an 8x8
// simdgroup_matrix; the second is (row, col + 1).
inline void lane_coord(int lane, int& row, int& col) {
  const int qid = lane / 4;
  row = (qid & 4) + (lane / 2) % 4;
  col = (qid & 2) * 2 + (lane % 2) * 2;
}

inline std::map<std::string, void*>& registry() {
  static std::map<std::string, void*> r;
  return r;
}
inline bool register_kernel(const char* name, void* fn) {
  registry()[name] = fn;
  return true;
}
inline void* find_kernel(const std::string& name) {
  auto it = registry().find(name);
  if (it == registry().end()) throw LaunchError("no kernel instantiated as " + name);
  return it->second;
}

enum class Wait { none, tg_barrier, simd_barrier, done };

// lockstep: every runnable thread runs until it blocks, in thread order (or the
// reverse); priority: only the first (or last) simdgroup with a runnable thread runs,
// so it gets ahead of the others up to its next threadgroup barrier.
enum class Schedule { lockstep_forward, lockstep_reverse, priority_forward, priority_reverse };
constexpr Schedule kSchedules[] = {Schedule::lockstep_forward, Schedule::lockstep_reverse,
                                   Schedule::priority_forward, Schedule::priority_reverse};
inline const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::lockstep_forward: return "lockstep-forward";
    case Schedule::lockstep_reverse: return "lockstep-reverse";
    case Schedule::priority_forward: return "priority-forward";
    case Schedule::priority_reverse: return "priority-reverse";
  }
  return "";
}

constexpr size_t kFiberStack = 256 * 1024;

// Fiber stacks, allocated once and reused by every threadgroup (uninitialised: a
// fresh zeroed stack per thread per threadgroup dominated the emulator's run time).
inline char* fiber_stack(int t) {
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (int(stacks.size()) <= t) stacks.emplace_back(new char[kFiberStack]);
  return stacks[t].get();
}

struct Fiber {
  ucontext_t ctx{};
  char* stack = nullptr;
  Wait wait = Wait::none;
  void* fake_stack = nullptr;  // ASan's per-context fake stack
};

struct Launch;
inline Launch*& current() {
  static Launch* l = nullptr;
  return l;
}

// The threadgroup memory of the threadgroup being run (allocated by launch()).
struct ThreadgroupMemory {
  float* data = nullptr;
  size_t bytes = 0;
};
inline ThreadgroupMemory& threadgroup_memory_block() {
  static ThreadgroupMemory m;
  return m;
}

// FC_THREADGROUP_ARRAY under the emulator: the kernel's threadgroup array is the
// launch's NaN-poisoned block, which must be exactly as large as the plan says.
template <typename T>
T* threadgroup_array(size_t count) {
  ThreadgroupMemory& m = threadgroup_memory_block();
  if (count * sizeof(T) != m.bytes) {
    throw std::logic_error("kernel declares " + std::to_string(count * sizeof(T)) +
                           " bytes of threadgroup memory, the dispatch plan " + std::to_string(m.bytes));
  }
  return reinterpret_cast<T*>(m.data);
}

struct Launch {
  int threads = 0;
  Schedule schedule = Schedule::lockstep_forward;
  int running = -1;  // index of the fiber on the CPU, -1 for the scheduler
  std::vector<Fiber> fibers;
  ucontext_t scheduler{};
  std::function<void(int tid)> body;
  std::vector<float> exchange;  // per simdgroup: 4 x 64 floats
  std::string error;
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack = nullptr;  // bounds of the scheduler's stack, for ASan
  size_t scheduler_stack_size = 0;

  int lane() const { return running % 32; }
  int simd() const { return running / 32; }
  float* simd_buffer(int which) { return exchange.data() + (size_t(simd()) * 4 + which) * 64; }

  // Fiber side: give the CPU back to the scheduler until released.
  void block(Wait why) {
    Fiber& f = fibers[running];
    f.wait = why;
#if defined(FC_EMU_ASAN)
    __sanitizer_start_switch_fiber(&f.fake_stack, scheduler_stack, scheduler_stack_size);
#endif
    swapcontext(&f.ctx, &scheduler);
#if defined(FC_EMU_ASAN)
    __sanitizer_finish_switch_fiber(f.fake_stack, nullptr, nullptr);
#endif
    if (!error.empty()) throw LaunchError(error);
  }

  // Scheduler side: run fiber t until it blocks or returns.
  void resume(int t) {
    running = t;
    Fiber& f = fibers[t];
#if defined(FC_EMU_ASAN)
    __sanitizer_start_switch_fiber(&scheduler_fake_stack, f.stack, kFiberStack);
#endif
    swapcontext(&scheduler, &f.ctx);
#if defined(FC_EMU_ASAN)
    __sanitizer_finish_switch_fiber(scheduler_fake_stack, nullptr, nullptr);
#endif
    running = -1;
  }

  static void entry() {
    Launch& l = *current();
#if defined(FC_EMU_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, &l.scheduler_stack, &l.scheduler_stack_size);
#endif
    const int t = l.running;
    try {
      l.body(t);
    } catch (const LaunchError&) {
      // the scheduler already holds the reason
    }
    l.fibers[t].wait = Wait::done;
#if defined(FC_EMU_ASAN)
    __sanitizer_start_switch_fiber(nullptr, l.scheduler_stack, l.scheduler_stack_size);
#endif
    setcontext(&l.scheduler);
  }

  void run_threadgroup() {
    fibers.assign(threads, Fiber{});
    for (int t = 0; t < threads; ++t) {
      Fiber& f = fibers[t];
      f.stack = fiber_stack(t);
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack;
      f.ctx.uc_stack.ss_size = kFiberStack;
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, &Launch::entry, 0);
    }
    exchange.assign(size_t((threads + 31) / 32) * 4 * 64, std::numeric_limits<float>::quiet_NaN());
    current() = this;
    for (;;) {
      bool progressed = false;
      for (int t : runnable_order()) {
        if (fibers[t].wait != Wait::none) continue;
        resume(t);
        progressed = true;
        if (!error.empty()) return drain();
      }
      if (release_barriers()) continue;
      if (all_done()) return;
      if (!progressed) fail("deadlock: threads wait at different barriers");
      if (!error.empty()) return drain();
    }
  }

  // The threads the scheduler runs next, in order (see Schedule).
  std::vector<int> runnable_order() const {
    std::vector<int> order;
    const bool reverse = schedule == Schedule::lockstep_reverse || schedule == Schedule::priority_reverse;
    for (int i = 0; i < threads; ++i) order.push_back(reverse ? threads - 1 - i : i);
    if (schedule == Schedule::lockstep_forward || schedule == Schedule::lockstep_reverse) return order;
    for (int t : order) {
      if (fibers[t].wait != Wait::none) continue;
      std::vector<int> simdgroup;  // the first simdgroup that can run, in lane order
      for (int u = t / 32 * 32; u < std::min(threads, t / 32 * 32 + 32); ++u) simdgroup.push_back(u);
      return simdgroup;
    }
    return {};
  }

  bool all_done() const {
    for (const Fiber& f : fibers)
      if (f.wait != Wait::done) return false;
    return true;
  }

  // Releases complete barriers; records an error for a divergent one.
  bool release_barriers() {
    int at_tg = 0, done = 0;
    for (const Fiber& f : fibers) {
      at_tg += f.wait == Wait::tg_barrier;
      done += f.wait == Wait::done;
    }
    bool released = false;
    if (at_tg > 0 && at_tg + done == threads) {
      if (done > 0) {
        fail("divergent threadgroup_barrier: " + std::to_string(at_tg) + " threads wait while " +
             std::to_string(done) + " returned without reaching it");
        return false;
      }
      for (Fiber& f : fibers) f.wait = Wait::none;
      released = true;
    }
    for (int s = 0; s * 32 < threads; ++s) {
      int at_simd = 0, simd_done = 0, lanes = std::min(32, threads - s * 32);
      for (int t = s * 32; t < s * 32 + lanes; ++t) {
        at_simd += fibers[t].wait == Wait::simd_barrier;
        simd_done += fibers[t].wait == Wait::done;
      }
      if (at_simd > 0 && at_simd + simd_done == lanes) {
        if (simd_done > 0) {
          fail("divergent simdgroup collective in simdgroup " + std::to_string(s));
          return false;
        }
        for (int t = s * 32; t < s * 32 + lanes; ++t) fibers[t].wait = Wait::none;
        released = true;
      }
    }
    return released;
  }

  void fail(const std::string& why) {
    if (error.empty()) error = why;
  }

  // After an error: let every blocked fiber unwind (it throws on resume).
  void drain() {
    for (int t = 0; t < threads; ++t) {
      if (fibers[t].wait == Wait::done) continue;
      resume(t);
    }
  }
};

// Runs `body(tid, tg)` for every thread of every threadgroup of the grid, one
// threadgroup at a time; threadgroup memory (tg_bytes) is NaN-poisoned before each.
template <class Body>
void launch(unsigned gx, unsigned gy, unsigned gz, int threads, size_t tg_bytes, Schedule schedule, Body body) {
  for (unsigned z = 0; z < gz; ++z) {
    for (unsigned y = 0; y < gy; ++y) {
      for (unsigned x = 0; x < gx; ++x) {
        ThreadgroupMemory& m = threadgroup_memory_block();
        m.bytes = tg_bytes;
        m.data = static_cast<float*>(std::malloc(tg_bytes ? tg_bytes : 1));  // exact size: ASan bounds
        std::memset(m.data, 0xff, tg_bytes);
        Launch l;
        l.threads = threads;
        l.schedule = schedule;
        l.body = [&](int tid) { body(tid, metal::uint3{x, y, z}); };
        l.run_threadgroup();
        std::free(m.data);
        m = ThreadgroupMemory{};
        if (!l.error.empty()) throw LaunchError(l.error);
      }
    }
  }
}

}  // namespace fc_emu

// ---- metal:: functions on the fibers -----------------------------------------------

namespace metal {

void threadgroup_barrier(mem_flags) { fc_emu::current()->block(fc_emu::Wait::tg_barrier); }
void simdgroup_barrier(mem_flags) { fc_emu::current()->block(fc_emu::Wait::simd_barrier); }

float simd_sum(float v) {
  fc_emu::Launch& l = *fc_emu::current();
  float* buf = l.simd_buffer(0);
  buf[l.lane()] = v;
  l.block(fc_emu::Wait::simd_barrier);
  float total = 0.0f;
  const int lanes = std::min(32, l.threads - l.simd() * 32);
  for (int i = 0; i < lanes; ++i) total += buf[i];
  l.block(fc_emu::Wait::simd_barrier);  // everyone has read before the buffer is reused
  return total;
}

template <typename T, int R, int C>
simdgroup_matrix<T, R, C> make_filled_simdgroup_matrix(T value) {
  simdgroup_matrix<T, R, C> m;
  m.e[0] = m.e[1] = value;
  return m;
}

// d = a * b + c as a simdgroup collective: lanes publish their elements, then each
// computes its own two elements of d.
template <typename T>
void simdgroup_multiply_accumulate(simdgroup_matrix<T, 8, 8>& d, const simdgroup_matrix<T, 8, 8>& a,
                                   const simdgroup_matrix<T, 8, 8>& b, const simdgroup_matrix<T, 8, 8>& c) {
  fc_emu::Launch& l = *fc_emu::current();
  float* A = l.simd_buffer(1);
  float* B = l.simd_buffer(2);
  float* Cm = l.simd_buffer(3);
  int row, col;
  fc_emu::lane_coord(l.lane(), row, col);
  for (int t = 0; t < 2; ++t) {
    A[row * 8 + col + t] = float(a.e[t]);
    B[row * 8 + col + t] = float(b.e[t]);
    Cm[row * 8 + col + t] = float(c.e[t]);
  }
  l.block(fc_emu::Wait::simd_barrier);
  float out[2];
  for (int t = 0; t < 2; ++t) {
    float s = Cm[row * 8 + col + t];
    for (int k = 0; k < 8; ++k) s += A[row * 8 + k] * B[k * 8 + col + t];
    out[t] = s;
  }
  l.block(fc_emu::Wait::simd_barrier);  // all lanes have read a, b, c
  d.e[0] = T(out[0]);
  d.e[1] = T(out[1]);
}

}  // namespace metal
