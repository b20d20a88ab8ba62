#include "cpu/parallel.h"

#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace fusedconv::cpu {

namespace {

thread_local bool inside_job = false;

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

  // False when the pool is busy with another caller's job (then the caller runs alone).
  bool run(int workers, const std::function<void(int)>& work) {
    std::unique_lock<std::mutex> call(call_mutex_, std::try_to_lock);
    if (!call.owns_lock()) return false;
    grow(workers - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &work;
      helpers_ = std::min<int>(workers - 1, int(threads_.size()));
      pending_ = helpers_;
      ++generation_;
    }
    wake_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
    return true;
  }

 private:
  void grow(int wanted) {
    while (int(threads_.size()) < wanted) {
      try {
        threads_.emplace_back([this, id = int(threads_.size()) + 1] { loop(id); });
      } catch (const std::system_error&) {
        return;  // the threads started so far, and the caller, take every task
      }
    }
  }

  void loop(int id) {
    inside_job = true;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (id > helpers_) continue;
      const std::function<void(int)>* work = job_;
      lock.unlock();
      (*work)(id);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex call_mutex_;  // one job at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  int helpers_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace

int default_threads() {
  // Capped by the machine: more workers than cores only add scratch (a halo ring each).
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  if (const char* env = std::getenv("FUSEDCONV_NUM_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v > 0) return int(std::min<long>(v, cores));
  }
  return cores;
}

void run_on_workers(int workers, const std::function<void(int worker)>& work) {
  if (workers > 1 && !inside_job) {
    static Pool pool;
    inside_job = true;
    const bool ran = pool.run(workers, work);
    inside_job = false;
    if (ran) return;
  }
  for (int w = 0; w < workers; ++w) work(w);
}

}  // namespace fusedconv::cpu
