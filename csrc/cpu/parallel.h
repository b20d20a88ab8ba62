// Minimal fork-join over a fixed task count for the CPU kernels. Each call
// starts threads-1 helpers and works itself; tasks are handed out through an
// atomic counter so uneven tiles balance, so a helper the system refuses to start
// only costs speed. Kernels never throw.
#pragma once

#include <algorithm>
#include <atomic>
#include <system_error>
#include <thread>
#include <vector>

namespace fusedconv::cpu {

// Worker threads to use: FUSEDCONV_NUM_THREADS if it is a positive integer (at most
// the core count), else the core count.
int default_threads();

template <class F>
void parallel_for(int tasks, int threads, F&& f) {
  threads = std::max(1, std::min(threads, tasks));
  std::atomic<int> next{0};
  auto work = [&](int worker) {
    for (int t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) {
      f(t, worker);
    }
  };
  std::vector<std::thread> helpers;
  helpers.reserve(threads - 1);
  for (int w = 1; w < threads; ++w) {
    try {
      helpers.emplace_back(work, w);
    } catch (const std::system_error&) {
      break;  // the workers started so far, and this thread, take every task
    }
  }
  work(0);
  for (auto& t : helpers) t.join();
}

}  // namespace fusedconv::cpu
