// Fork-join over a fixed task count for the CPU kernels, on a persistent pool of worker
// threads (started on first use, grown on demand: the decoder makes hundreds of calls).
// Tasks are handed out through an atomic counter so uneven tiles balance, so a worker
// the system refuses to start only costs speed. Kernels never throw.
#pragma once

#include <algorithm>
#include <atomic>
#include <functional>

namespace fusedconv::cpu {

// Worker threads to use: FUSEDCONV_NUM_THREADS if it is a positive integer (at most
// the core count), else the core count.
int default_threads();

// Runs work(w) for w in [0, workers) at once: w = 0 on the calling thread, the others on
// pool threads (fewer if the pool cannot start enough). A call from inside a worker, or
// while another call holds the pool, runs every w on the calling thread, in order.
void run_on_workers(int workers, const std::function<void(int worker)>& work);

template <class F>
void parallel_for(int tasks, int threads, F&& f) {
  threads = std::max(1, std::min(threads, tasks));
  std::atomic<int> next{0};
  run_on_workers(threads, [&](int worker) {
    for (int t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) f(t, worker);
  });
}

}  // namespace fusedconv::cpu
