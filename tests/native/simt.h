// A small SIMT emulator: runs the CUDA kernels of csrc/*_kernels.cuh on the CPU, one std::thread
// per lane, so their indexing, warp votes and shuffles are tested where no GPU is
// (tests/test_simt.py through simt_ops.cpp).
//
// Modelled: grid, block and thread indices (x only), gridDim/blockDim, warps of 32 lanes that
// meet at every *_sync intrinsic (__ballot_sync, __shfl_xor_sync) with the full mask, __popc,
// rsqrtf. A full-mask intrinsic reached while a lane of the warp has returned is undefined on a
// GPU (it hangs or reads garbage); here it is reported: the launch throws. Warps run one after
// another, so races between warps are not modelled; neither are shared memory, __syncthreads,
// partial masks or timing.
#pragma once
#include <array>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};

namespace simt {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// The lanes of one warp meet here: each deposits a 64-bit value, the last to arrive publishes
// all 32 and wakes the others.
struct Warp {
  std::mutex m;
  std::condition_variable cv;
  int arrived = 0, exited = 0;
  uint64_t generation = 0;
  std::array<uint64_t, kWarp> slots{}, published{};
  std::string error;
};

struct Lane {
  Warp* warp = nullptr;
  int lane = 0;
  dim3 thread, block;
};
inline thread_local Lane here;
inline dim3 grid_dim, block_dim;  // set before a launch's threads start, read-only while they run

inline void fail(Warp& w, const std::string& why) {
  if (w.error.empty()) w.error = why;
}

inline void publish(Warp& w) {
  w.published = w.slots;
  w.arrived = 0;
  ++w.generation;
  w.cv.notify_all();
}

// Every live lane of the warp deposits `v`; returns what all 32 deposited.
template <typename V>
std::array<uint64_t, kWarp> exchange(unsigned mask, V v, const char* what) {
  static_assert(sizeof(V) <= sizeof(uint64_t), "one 64-bit slot per lane");
  Warp& w = *here.warp;
  std::unique_lock<std::mutex> lock(w.m);
  if (mask != kFullMask) fail(w, std::string(what) + ": only the full mask is modelled");
  if (w.exited) fail(w, std::string(what) + " with the full mask after a lane of the warp returned");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  w.slots[here.lane] = bits;
  const uint64_t gen = w.generation;
  if (++w.arrived + w.exited == kWarp) {
    publish(w);
  } else {
    w.cv.wait(lock, [&] { return w.generation != gen; });
  }
  return w.published;
}

// A lane's kernel returned: lanes waiting for it at an intrinsic would wait for ever on a GPU.
inline void lane_exit() {
  Warp& w = *here.warp;
  std::lock_guard<std::mutex> lock(w.m);
  ++w.exited;
  if (w.arrived > 0 && w.arrived + w.exited == kWarp) {
    fail(w, "a lane returned while the others of its warp waited at a *_sync intrinsic");
    publish(w);
  }
}

template <typename V>
V from_bits(uint64_t bits) {
  V v;
  std::memcpy(&v, &bits, sizeof(V));
  return v;
}

// kernel<<<blocks, threads>>>(args...): warp by warp, 32 threads each.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), int64_t blocks, int threads, A... args) {
  if (threads <= 0 || threads % kWarp != 0) throw std::invalid_argument("simt: threads must be a multiple of 32");
  if (blocks < 0 || blocks > (int64_t(1) << 31) - 1) throw std::invalid_argument("simt: grid size out of range");
  grid_dim = dim3{static_cast<unsigned>(blocks), 1, 1};
  block_dim = dim3{static_cast<unsigned>(threads), 1, 1};
  for (int64_t bx = 0; bx < blocks; ++bx) {
    for (int wi = 0; wi < threads / kWarp; ++wi) {
      Warp warp;
      std::vector<std::thread> lanes;
      lanes.reserve(kWarp);
      for (int lane = 0; lane < kWarp; ++lane) {
        lanes.emplace_back([&, lane] {
          here = Lane{&warp, lane, dim3{static_cast<unsigned>(wi * kWarp + lane), 0, 0},
                      dim3{static_cast<unsigned>(bx), 0, 0}};
          kernel(static_cast<P>(args)...);
          lane_exit();
        });
      }
      for (auto& t : lanes) t.join();
      if (!warp.error.empty()) {
        throw std::runtime_error("simt: block " + std::to_string(bx) + " warp " + std::to_string(wi) + ": " +
                                 warp.error);
      }
    }
  }
}

}  // namespace simt

#define threadIdx (::simt::here.thread)
#define blockIdx (::simt::here.block)
#define blockDim (::simt::block_dim)
#define gridDim (::simt::grid_dim)

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const auto all = simt::exchange(mask, static_cast<uint64_t>(predicate != 0), "__ballot_sync");
  unsigned ballot = 0;
  for (int lane = 0; lane < simt::kWarp; ++lane) ballot |= static_cast<unsigned>(all[lane] & 1u) << lane;
  return ballot;
}

inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
  const auto all = simt::exchange(mask, v, "__shfl_xor_sync");
  return simt::from_bits<float>(all[(simt::here.lane ^ lane_mask) & (simt::kWarp - 1)]);
}

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }  // exact here; the GPU's is within 2 ulp
