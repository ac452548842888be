// One pool of worker threads for every kernel (the BLAS runs inside its chunks, on one thread each).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

#include "common.h"

namespace dpt {

namespace {

thread_local bool in_region = false;  // this thread runs a chunk of a parallel_for

struct Job {
  const std::function<void(int64_t, int64_t)>* f;
  int64_t n, chunks;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex m;
  std::condition_variable finished;
  std::exception_ptr error;

  // Runs chunks until none is left. A thread that arrives late finds none and never touches f.
  void take() {
    in_region = true;
    for (int64_t c; (c = next.fetch_add(1)) < chunks;) {
      try {
        (*f)(n * c / chunks, n * (c + 1) / chunks);
      } catch (...) {
        std::lock_guard<std::mutex> lk(m);
        if (!error) error = std::current_exception();
      }
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) {
        std::lock_guard<std::mutex> lk(m);
        finished.notify_all();
      }
    }
    in_region = false;
  }
};

class Pool {
 public:
  explicit Pool(int n) { resize(n); }

  int size() const { return int(workers_.size()) + 1; }

  void resize(int n) {
    std::lock_guard<std::mutex> no_job(job_mutex_);
    stop();
    quit_ = false;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { work(); });
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
    int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, int64_t(size()) * 4);
    if (chunks <= 1 || workers_.empty() || in_region) {
      f(0, n);
      return;
    }
    std::lock_guard<std::mutex> one_job(job_mutex_);  // jobs from several caller threads queue here
    auto job = std::make_shared<Job>();
    job->f = &f;
    job->n = n;
    job->chunks = chunks;
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = job;
      ++generation_;
    }
    cv_.notify_all();
    job->take();
    {
      std::unique_lock<std::mutex> lk(job->m);
      job->finished.wait(lk, [&] { return job->done.load(std::memory_order_acquire) >= chunks; });
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      job_.reset();
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void work() {
    uint64_t seen = 0;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return quit_ || (generation_ != seen && job_); });
        if (quit_) return;
        seen = generation_;
        job = job_;
      }
      job->take();
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(m_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex job_mutex_, m_;
  std::condition_variable cv_;
  std::shared_ptr<Job> job_;
  uint64_t generation_ = 0;
  bool quit_ = false;
};

int default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

Pool& pool() {
  static Pool* p = new Pool(default_threads());  // never destroyed: workers may outlive statics
  return *p;
}

}  // namespace

void set_threads(int n) {
  n = std::max(1, n);
  if (n != pool().size()) pool().resize(n);
}

int threads() { return pool().size(); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
  if (n <= 0) return;
  pool().run(n, std::max<int64_t>(grain, 1), f);
}

float* scratch(int slot, size_t count) {
  thread_local std::vector<std::unique_ptr<float[]>> buffers;
  thread_local std::vector<size_t> sizes;
  if (size_t(slot) >= buffers.size()) {
    buffers.resize(slot + 1);
    sizes.resize(slot + 1, 0);
  }
  if (sizes[slot] < count) {
    buffers[slot].reset(new float[count]);
    sizes[slot] = count;
  }
  return buffers[slot].get();
}

}  // namespace dpt
