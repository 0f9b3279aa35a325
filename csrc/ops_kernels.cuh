// Device code of plan / gather / scatter and how it is launched (no ATen here): ops_cuda.cu
// runs it on the GPU; tests/native/simt_ops.cpp runs the same code on the CPU under a SIMT
// emulator (tests/native/simt.h, tests/test_simt.py), so it is tested where no GPU is.
//
// `launch(kernel, blocks, threads, args...)` starts a kernel: CudaLaunch (cuda_launch.cuh) on
// the GPU, the emulator's launcher in the tests. `launch.sms` is the device's SM count.
//
// gather and scatter are one row-copy kernel: each thread moves one vector of the widest
// type (16, 8, 4, 2 or 1 bytes) that divides the row size and both base addresses, so
// bf16/fp16 rows with hidden % 8 == 0 move as 16-byte accesses, coalesced across a warp.
// Every access is bounded by its tensor's row count, whatever the caller checked: a source
// row out of range reads zeros, a destination row out of range is not written.
#pragma once
#include <algorithm>
#include <cstdint>

namespace adaptive_encoder {
namespace ops_kernels {

constexpr int kThreads = 256;

template <typename V>
__global__ void copy_rows_kernel(V* __restrict__ dst, const int64_t* __restrict__ dst_rows,
                                 const V* __restrict__ src, const int64_t* __restrict__ src_rows,
                                 int64_t n, int64_t row_vecs, int64_t n_dst, int64_t n_src) {
  const int64_t total = n * row_vecs;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t i = idx / row_vecs;
    const int64_t c = idx - i * row_vecs;
    const int64_t d = dst_rows ? dst_rows[i] : i;
    const int64_t s = src_rows ? src_rows[i] : i;
    if (d < 0 || d >= n_dst) continue;
    dst[d * row_vecs + c] = (s >= 0 && s < n_src) ? src[s * row_vecs + c] : V{};
  }
}

template <typename V, class Launch>
void launch_copy(const Launch& launch, void* dst, const int64_t* dst_rows, const void* src,
                 const int64_t* src_rows, int64_t n, int64_t row_bytes, int64_t n_dst, int64_t n_src) {
  const int64_t row_vecs = row_bytes / static_cast<int64_t>(sizeof(V));
  const int64_t total = n * row_vecs;
  if (total == 0) return;
  // Enough blocks to fill the machine several times over; the grid-stride loop does the rest.
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(launch.sms) * 16);
  launch(copy_rows_kernel<V>, blocks, kThreads, static_cast<V*>(dst), dst_rows, static_cast<const V*>(src),
         src_rows, n, row_vecs, n_dst, n_src);
}

// dst[dst_rows[i] or i] = src[src_rows[i] or i] for i < n; rows of row_bytes bytes.
template <class Launch>
void copy_rows(const Launch& launch, void* dst, const int64_t* dst_rows, const void* src, const int64_t* src_rows,
               int64_t n, int64_t row_bytes, int64_t n_dst, int64_t n_src) {
  const auto a = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) |
                 static_cast<uintptr_t>(row_bytes);
  if (a % 16 == 0) return launch_copy<uint4>(launch, dst, dst_rows, src, src_rows, n, row_bytes, n_dst, n_src);
  if (a % 8 == 0) return launch_copy<uint2>(launch, dst, dst_rows, src, src_rows, n, row_bytes, n_dst, n_src);
  if (a % 4 == 0) return launch_copy<uint32_t>(launch, dst, dst_rows, src, src_rows, n, row_bytes, n_dst, n_src);
  if (a % 2 == 0) return launch_copy<uint16_t>(launch, dst, dst_rows, src, src_rows, n, row_bytes, n_dst, n_src);
  launch_copy<uint8_t>(launch, dst, dst_rows, src, src_rows, n, row_bytes, n_dst, n_src);
}

// One warp per (layer n, sequence b), walking the sequence's T tokens 32 at a time: lane j
// looks at token t0 + j, and a ballot gives the warp which of the 32 are active at layer n
// (real, depth > n). H200 run 5's follow-up (kernels_128/host_profile.txt) timed the previous
// kernels, one thread walking all T tokens per (n, b), at 104 + 157 us per forward at batch
// 128 (T = 512): 4 % of an MI forward's GPU time, for ~7 MB of reads.
constexpr int kPlanWarps = 4;  // warps per block

__device__ __forceinline__ bool plan_active(const int64_t* depths, const bool* mask, int64_t b, int64_t T,
                                            int64_t t, int64_t n) {
  return t < T && mask[b * T + t] && depths[b * T + t] > n;
}

// counts[n*B+b] = real tokens of sequence b with depth > n.
__global__ void plan_count_kernel(const int64_t* __restrict__ depths, const bool* __restrict__ mask,
                                  int64_t B, int64_t T, int64_t L, int64_t* __restrict__ counts) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kPlanWarps + threadIdx.x / 32;
  if (w >= L * B) return;  // the whole warp: one (n, b) each
  const int lane = threadIdx.x & 31;
  const int64_t n = w / B, b = w % B;
  int64_t c = 0;
  for (int64_t t0 = 0; t0 < T; t0 += 32) {
    c += __popc(__ballot_sync(0xffffffffu, plan_active(depths, mask, b, T, t0 + lane, n)));
  }
  if (lane == 0) counts[w] = c;
}

// rows[offsets[n*B+b] + k] = b*T + t of the k-th active token of (n, b), in token order: each
// lane writes its token at the count of active lanes below it, then the warp moves on.
__global__ void plan_fill_kernel(const int64_t* __restrict__ depths, const bool* __restrict__ mask,
                                 int64_t B, int64_t T, int64_t L, const int64_t* __restrict__ offsets,
                                 int64_t* __restrict__ rows) {
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kPlanWarps + threadIdx.x / 32;
  if (w >= L * B) return;
  const int lane = threadIdx.x & 31;
  const unsigned below = (1u << lane) - 1u;
  const int64_t n = w / B, b = w % B;
  int64_t pos = offsets[w];
  for (int64_t t0 = 0; t0 < T; t0 += 32) {
    const int64_t t = t0 + lane;
    const bool on = plan_active(depths, mask, b, T, t, n);
    const unsigned ballot = __ballot_sync(0xffffffffu, on);
    if (on) rows[pos + __popc(ballot & below)] = b * T + t;
    pos += __popc(ballot);
  }
}

// The plan's two passes; the caller makes offsets = [0, cumsum(counts)] between them and sizes
// rows from its last entry (the one host synchronisation: the output size depends on the data).
inline int64_t plan_blocks(int64_t B, int64_t L) { return (L * B + kPlanWarps - 1) / kPlanWarps; }

template <class Launch>
void plan_count(const Launch& launch, const int64_t* depths, const bool* mask, int64_t B, int64_t T, int64_t L,
                int64_t* counts) {
  if (L * B > 0) launch(plan_count_kernel, plan_blocks(B, L), kPlanWarps * 32, depths, mask, B, T, L, counts);
}

template <class Launch>
void plan_fill(const Launch& launch, const int64_t* depths, const bool* mask, int64_t B, int64_t T, int64_t L,
               const int64_t* offsets, int64_t* rows) {
  if (L * B > 0) launch(plan_fill_kernel, plan_blocks(B, L), kPlanWarps * 32, depths, mask, B, T, L, offsets, rows);
}

}  // namespace ops_kernels
}  // namespace adaptive_encoder
