// A pool of freed CPU pages, bounded by what is asked of it, in front of torch's CPU allocator: a
// budgeted run's step reuses the pages the step before freed instead of faulting fresh ones in
// (cpu_pool.py).
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kHuge = 2 * 1024 * 1024;
// Smaller blocks come from the C library's heap, which keeps them (glibc's mmap threshold under a
// budget: engine/machine/peak_memory.py).
constexpr size_t kFloor = 64 * 1024;

size_t whole_pages(size_t n) { return (n + kPage - 1) / kPage * kPage; }

// torch asks the kernel for huge pages for its blocks of 2 MiB and more where THP_MEM_ALLOC_ENABLE=1
// (edge_sel/huge_pages.py); the pool's own mappings do the same.
bool huge_pages_asked() {
  const char* v = std::getenv("THP_MEM_ALLOC_ENABLE");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

void release(void* p);

// Every block handed out and given back is reported as torch's own CPU allocator reports it, so the
// profiler's memory events (profile_memory=True) see the tensors the pool serves.
c10::DataPtr handed_out(void* p, size_t n) {
  if (p != nullptr) c10::profiledCPUMemoryReporter().New(p, n);
  return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
}

void* from_torch(size_t n) {
  try {
    return c10::alloc_cpu(n);
  } catch (const c10::Error&) {
    c10::profiledCPUMemoryReporter().OutOfMemory(n);
    throw;
  }
}

// `bytes` (whole pages) mapped afresh; on a 2 MiB boundary with huge pages asked for where torch would.
uintptr_t map_pages(size_t bytes) {
  bool huge = bytes >= kHuge && huge_pages_asked();
  size_t extra = huge ? kHuge : 0;
  void* p = mmap(nullptr, bytes + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    c10::profiledCPUMemoryReporter().OutOfMemory(bytes);
    TORCH_CHECK(false, "the pool of freed CPU blocks could not map ", bytes, " bytes");
  }
  uintptr_t start = reinterpret_cast<uintptr_t>(p);
  if (huge) {
    uintptr_t aligned = (start + kHuge - 1) / kHuge * kHuge;
    if (aligned > start) munmap(p, aligned - start);
    if (start + extra > aligned) munmap(reinterpret_cast<void*>(aligned + bytes), start + extra - aligned);
    madvise(reinterpret_cast<void*>(aligned), bytes, MADV_HUGEPAGE);
    start = aligned;
  }
  return start;
}

void unmap_pages(const std::vector<std::pair<uintptr_t, size_t>>& ranges) {
  for (const auto& r : ranges) munmap(reinterpret_cast<void*>(r.first), r.second);
}

struct Pool final : c10::Allocator {
  std::mutex mu;
  std::unordered_map<uintptr_t, size_t> handed;      // blocks the pool mapped, handed out now: their bytes
  std::map<uintptr_t, size_t> free_at;                // free page ranges by address, neighbours merged
  std::multimap<size_t, uintptr_t> free_by_size;      // the same ranges by size
  std::atomic<bool> on{false};
  size_t slack = 0;       // how far the pool's pages may reach above the most ever asked for at once
  size_t live = 0;        // bytes handed out now (whole pages)
  size_t peak = 0;        // the most handed out at once since the pool was last emptied
  size_t kept = 0;        // bytes kept free now
  size_t high = 0;        // the most the pool's pages, handed out and free, held at once since emptied
  uint64_t hits = 0, misses = 0;

  void drop_free(std::map<uintptr_t, size_t>::iterator at) {
    auto same = free_by_size.equal_range(at->second);
    for (auto s = same.first; s != same.second; ++s) {
      if (s->second == at->first) {
        free_by_size.erase(s);
        break;
      }
    }
    kept -= at->second;
    free_at.erase(at);
  }

  // A free range, merged with its free neighbours, so a later block of their joint size fits in it.
  void add_free(uintptr_t start, size_t bytes) {
    auto next = free_at.find(start + bytes);
    if (next != free_at.end()) {
      bytes += next->second;
      drop_free(next);
    }
    auto after = free_at.lower_bound(start);
    if (after != free_at.begin()) {
      auto before = std::prev(after);
      if (before->first + before->second == start) {
        start = before->first;
        bytes += before->second;
        drop_free(before);
      }
    }
    free_at.emplace(start, bytes);
    free_by_size.emplace(bytes, start);
    kept += bytes;
  }

  // With the lock held: free pages leave the pool, the ends of the largest ranges first, until its
  // pages and `more` about to be mapped reach no higher than the most asked for at once plus the
  // slack. Without the pool the resident size would follow what is asked for; with it, it stays
  // within the slack of that.
  void trim(size_t more, std::vector<std::pair<uintptr_t, size_t>>& out) {
    size_t bound = std::max(peak, live + more) + slack;
    while (kept > 0 && live + kept + more > bound) {
      size_t over = live + kept + more - bound;
      auto largest = std::prev(free_by_size.end());
      uintptr_t start = largest->second;
      size_t bytes = largest->first;
      drop_free(free_at.find(start));
      size_t cut = std::min(bytes, over);
      if (cut < bytes) add_free(start, bytes - cut);
      out.emplace_back(start + bytes - cut, cut);
    }
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kFloor || !on.load()) return handed_out(from_torch(n), n);
    size_t bytes = whole_pages(n);
    std::vector<std::pair<uintptr_t, size_t>> out;
    uintptr_t start = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      // The smallest free range that holds the block serves it from its start; the rest stays free.
      auto it = free_by_size.lower_bound(bytes);
      if (it != free_by_size.end()) {
        start = it->second;
        size_t range = it->first;
        drop_free(free_at.find(start));
        if (range > bytes) add_free(start + bytes, range - bytes);
        ++hits;
      } else {
        ++misses;
        trim(bytes, out);
      }
    }
    unmap_pages(out);
    if (start == 0) start = map_pages(bytes);
    {
      std::lock_guard<std::mutex> lock(mu);
      handed[start] = bytes;
      live += bytes;
      peak = std::max(peak, live);
      high = std::max(high, live + kept);
    }
    return handed_out(reinterpret_cast<void*>(start), n);
  }

  void give_back(void* p) {
    if (p == nullptr) return;
    c10::profiledCPUMemoryReporter().Delete(p);
    uintptr_t start = reinterpret_cast<uintptr_t>(p);
    size_t bytes = 0;       // stays 0 for torch's own blocks: below the floor, or asked for while off
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = handed.find(start);
      if (it != handed.end()) {
        bytes = it->second;
        handed.erase(it);
        live -= bytes;
        if (on.load()) {
          add_free(start, bytes);
          return;
        }
      }
    }
    if (bytes) {
      munmap(p, bytes);
    } else {
      c10::free_cpu(p);
    }
  }

  // Every free page back to the system; the most asked for at once is counted again from now.
  void set(bool keep, size_t new_slack) {
    std::vector<std::pair<uintptr_t, size_t>> out;
    {
      std::lock_guard<std::mutex> lock(mu);
      out.assign(free_at.begin(), free_at.end());
      free_at.clear();
      free_by_size.clear();
      kept = 0;
      on.store(keep);
      slack = new_slack;
      peak = live;
      high = live;
    }
    unmap_pages(out);
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

// Empties the pool; then, where `keep`, freed pages are kept as long as the pool's pages reach no
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
