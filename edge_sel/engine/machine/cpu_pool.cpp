// A pool of freed CPU blocks, bounded by what is asked of it, in front of torch's CPU allocator: a
// budgeted run's step reuses the blocks the step before freed instead of faulting fresh pages in (cpu_pool.py).
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kPage = 4096;
// Smaller blocks come from the C library's heap, which keeps them (glibc's mmap threshold under a
// budget: engine/machine/peak_memory.py).
constexpr size_t kFloor = 64 * 1024;

// Blocks are whole pages; a free block serves a request of at least half its size, the smallest that
// fits first: a block freed by one micro-batch serves the next one's request of nearly the same size
// (9 rows and then 8), and one map's block a smaller map's.
size_t whole_pages(size_t n) { return (n + kPage - 1) / kPage * kPage; }

void release(void* p);

// Every block handed out and given back is reported as torch's own CPU allocator reports it, so the
// profiler's memory events (profile_memory=True) see the tensors the pool serves.
c10::DataPtr handed_out(void* p, size_t n) {
  if (p != nullptr) c10::profiledCPUMemoryReporter().New(p, n);
  return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
}

void* mapped(size_t n) {
  try {
    return c10::alloc_cpu(n);
  } catch (const c10::Error&) {
    c10::profiledCPUMemoryReporter().OutOfMemory(n);
    throw;
  }
}

struct Pool final : c10::Allocator {
  std::mutex mu;
  // The pool's blocks, handed out or free: their bytes, and the whole pages asked for where handed out.
  std::unordered_map<void*, std::pair<size_t, size_t>> pooled;
  std::multimap<size_t, void*> free_by_size;
  std::list<std::multimap<size_t, void*>::iterator> free_order;   // the longest free first
  std::unordered_map<void*, std::list<std::multimap<size_t, void*>::iterator>::iterator> place;
  std::atomic<bool> on{false};
  size_t slack = 0;       // how far the pool's blocks may reach above the most ever asked for at once
  size_t live = 0;        // bytes of the pool's blocks handed out now
  size_t asked = 0;       // whole pages asked for by the blocks handed out now (a block may be larger)
  size_t peak = 0;        // the most asked for at once since the pool was last emptied
  size_t kept = 0;        // bytes kept free now
  size_t high = 0;        // the most the pool's blocks, handed out and free, held at once since emptied
  uint64_t hits = 0, misses = 0;

  void unfree(std::multimap<size_t, void*>::iterator it) {
    free_order.erase(place[it->second]);
    place.erase(it->second);
    kept -= it->first;
    free_by_size.erase(it);
  }

  // With the lock held: the longest free blocks leave the pool until its blocks, and `more` bytes
  // about to be mapped, reach no higher than the most asked for at once plus the slack. Without the
  // pool the resident size would follow what is asked for; with it, it stays within the slack of that.
  void trim(size_t more, std::vector<void*>& out) {
    while (kept > 0 && live + kept + more > peak + slack) {
      auto oldest = free_order.front();
      out.push_back(oldest->second);
      pooled.erase(oldest->second);
      unfree(oldest);
    }
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kFloor || !on.load()) return handed_out(mapped(n), n);
    size_t pages = whole_pages(n), bytes = pages;
    std::vector<void*> out;
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu);
      // A block of the size asked always serves. A larger one serves only where what blocks handed out
      // hold beyond what was asked of them stays within the slack: the pool's blocks then reach no
      // higher than the most asked plus it. (Blocks a phase with more slack handed out larger may hold
      // more than the slack beyond what they were asked; a block of the size asked adds nothing to that.)
      auto it = free_by_size.lower_bound(bytes);
      if (it != free_by_size.end() &&
          (it->first == bytes || (it->first / 2 <= bytes && live - asked + it->first - bytes <= slack))) {
        p = it->second;
        bytes = it->first;
        unfree(it);
        ++hits;
      } else {
        ++misses;
        trim(bytes, out);
      }
    }
    for (void* q : out) c10::free_cpu(q);
    if (p == nullptr) p = mapped(bytes);
    {
      std::lock_guard<std::mutex> lock(mu);
      pooled[p] = {bytes, pages};
      live += bytes;
      asked += pages;
      peak = std::max(peak, asked);
      high = std::max(high, live + kept);
    }
    return handed_out(p, n);
  }

  void give_back(void* p) {
    if (p == nullptr) return;
    c10::profiledCPUMemoryReporter().Delete(p);
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = pooled.find(p);
      if (it != pooled.end()) {
        size_t bytes = it->second.first;
        live -= bytes;
        asked -= it->second.second;
        if (on.load()) {
          place[p] = free_order.insert(free_order.end(), free_by_size.emplace(bytes, p));
          kept += bytes;
          return;
        }
        pooled.erase(it);
      }
    }
    c10::free_cpu(p);
  }

  // Every free block back to the system; the most asked for at once is counted again from now.
  void set(bool keep, size_t new_slack) {
    std::vector<void*> out;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (const auto& f : free_by_size) {
        pooled.erase(f.second);
        out.push_back(f.second);
      }
      free_order.clear();
      free_by_size.clear();
      place.clear();
      kept = 0;
      on.store(keep);
      slack = new_slack;
      peak = asked;
      high = live;
    }
    for (void* q : out) c10::free_cpu(q);
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

Pool& pool() {
  static Pool* p = new Pool();   // never destroyed: tensors may outlive static destruction
  return *p;
}

void release(void* p) { pool().give_back(p); }

}  // namespace

extern "C" {

// The pool in front of torch's CPU allocator, for every CPU block allocated from then on; it keeps
// nothing until it is turned on.
int edge_sel_pool_install(void) {
  c10::SetCPUAllocator(&pool(), /*priority=*/1);
  return c10::GetCPUAllocator() == &pool();
}

// Empties the pool; then, where `keep`, freed blocks are kept as long as the pool's blocks reach no
// higher than the most bytes asked of it at once (counted from now) plus `slack` bytes.
void edge_sel_pool_keep(int keep, size_t slack) { pool().set(keep != 0, slack); }

size_t edge_sel_pool_kept(void) {
  std::lock_guard<std::mutex> lock(pool().mu);
  return pool().kept;
}

size_t edge_sel_pool_peak(void) {
  std::lock_guard<std::mutex> lock(pool().mu);
  return pool().peak;
}

size_t edge_sel_pool_high(void) {
  std::lock_guard<std::mutex> lock(pool().mu);
  return pool().high;
}

uint64_t edge_sel_pool_hits(void) { return pool().hits; }
uint64_t edge_sel_pool_misses(void) { return pool().misses; }
}
