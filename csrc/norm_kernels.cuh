// Device code of the residual add + LayerNorm and how it is launched (no ATen here):
// norm_cuda.cu runs it on the GPU; tests/native/simt_ops.cpp runs the same code on the CPU
// under a SIMT emulator (tests/native/simt.h, tests/test_simt.py). `launch` as in
// ops_kernels.cuh.
//
// One warp per row, the row held in registers: each lane loads vectors of the widest access
// (16 bytes) that the row size and every pointer allow, else single elements, MAXV vectors at
// most; D <= kMaxD. The sum is rounded to the input dtype (as `x + residual` stores it), mean
// and biased variance (two passes over the registers) and the affine in float32, stored in the
// input dtype. float32, bfloat16, float16.
//
// Rows are masked, not checked here (the check would need the rows on the host, a sync): a
// destination row outside [0, n_out) is neither read nor written.
#pragma once
#include <cstdint>
#include <type_traits>

namespace adaptive_encoder {
namespace norm_kernels {

constexpr int kWarpsPerBlock = 4;
constexpr int64_t kMaxD = 2048;  // 64 floats per lane at most

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

__device__ __forceinline__ float warp_sum(float s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

// Row i of A: out[dst] = LayerNorm(x[src] + r[src]) * w + b, dst = rows ? rows[i] : i,
// src = at_rows ? dst : i. A warp returns as a whole (one row each), so the shuffles see
// every lane.
template <typename T, int VEC, int MAXV>
__global__ void add_layer_norm_kernel(T* __restrict__ out, const int64_t* __restrict__ rows,
                                      const T* __restrict__ x, const T* __restrict__ r,
                                      const T* __restrict__ w, const T* __restrict__ b, int64_t A, int64_t D,
                                      int64_t n_out, bool at_rows, float eps) {
  using P = Pack<T, VEC>;
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (i >= A) return;
  const int64_t dst = rows ? rows[i] : i;
  if (dst < 0 || dst >= n_out) return;
  const int64_t src = at_rows ? dst : i;
  const int64_t nvec = D / VEC;
  const P* xp = reinterpret_cast<const P*>(x + src * D);
  const P* rp = reinterpret_cast<const P*>(r + src * D);

  float v[MAXV][VEC];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < MAXV; ++k) {
    const int64_t j = lane + 32 * k;
    if (j < nvec) {
      const P a = xp[j], c = rp[j];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        // The sum as torch stores it (T), then in float.
        v[k][e] = static_cast<float>(static_cast<T>(static_cast<float>(a.v[e]) + static_cast<float>(c.v[e])));
        sum += v[k][e];
      }
    }
  }
  const float mean = warp_sum(sum) / static_cast<float>(D);
  float sq = 0.f;
#pragma unroll
  for (int k = 0; k < MAXV; ++k) {
    if (lane + 32 * k < nvec) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        v[k][e] -= mean;
        sq += v[k][e] * v[k][e];
      }
    }
  }
  const float rstd = rsqrtf(warp_sum(sq) / static_cast<float>(D) + eps);
  const P* wp = reinterpret_cast<const P*>(w);
  const P* bp = reinterpret_cast<const P*>(b);
  P* op = reinterpret_cast<P*>(out + dst * D);
#pragma unroll
  for (int k = 0; k < MAXV; ++k) {
    const int64_t j = lane + 32 * k;
    if (j < nvec) {
      const P wv = wp[j], bv = bp[j];
      P o;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        o.v[e] = static_cast<T>(v[k][e] * rstd * static_cast<float>(wv.v[e]) + static_cast<float>(bv.v[e]));
      }
      op[j] = o;
    }
  }
}

template <typename T, int VEC, int MAXV, class Launch>
void launch_rows(const Launch& launch, T* out, const int64_t* rows, const T* x, const T* r, const T* w, const T* b,
                 int64_t A, int64_t D, int64_t n_out, bool at_rows, float eps) {
  const int64_t blocks = (A + kWarpsPerBlock - 1) / kWarpsPerBlock;
  launch(add_layer_norm_kernel<T, VEC, MAXV>, blocks, kWarpsPerBlock * 32, out, rows, x, r, w, b, A, D, n_out, at_rows,
         eps);
}

// The fewest vectors per lane that hold a row: D / (32 * VEC) rounded up to a power of two.
// False if D is above kMaxD (nothing launched).
template <typename T, int VEC, class Launch>
bool launch_vec(const Launch& launch, T* out, const int64_t* rows, const T* x, const T* r, const T* w, const T* b,
                int64_t A, int64_t D, int64_t n_out, bool at_rows, float eps) {
  const int64_t per_lane = (D / VEC + 31) / 32;
  const auto go = [&](auto max_vecs) {
    launch_rows<T, VEC, decltype(max_vecs)::value>(launch, out, rows, x, r, w, b, A, D, n_out, at_rows, eps);
    return true;
  };
  if (per_lane <= 1) return go(std::integral_constant<int, 1>{});
  if (per_lane <= 2) return go(std::integral_constant<int, 2>{});
  if (per_lane <= 4) return go(std::integral_constant<int, 4>{});
  if (per_lane <= 8) return go(std::integral_constant<int, 8>{});
  if constexpr (VEC <= 4) {
    if (per_lane <= 16) return go(std::integral_constant<int, 16>{});
  }
  if constexpr (VEC == 1) {
    if (per_lane <= 32) return go(std::integral_constant<int, 32>{});
    if (per_lane <= 64) return go(std::integral_constant<int, 64>{});
  }
  return false;
}

// out[rows[i] or i] = LayerNorm(x[j] + r[j]) * w + b for i < A, j = rows[i] with at_rows, else
// i: 16-byte vectors when every pointer and D allow, else one element per access. False if T
// is not a 2- or 4-byte float or D is above kMaxD (nothing launched).
template <typename T, class Launch>
bool add_layer_norm_rows(const Launch& launch, T* out, const int64_t* rows, const T* x, const T* r, const T* w,
                         const T* b, int64_t A, int64_t D, int64_t n_out, bool at_rows, float eps) {
  if constexpr (sizeof(T) > 4) {
    return false;
  } else {
    if (A == 0 || D == 0) return true;
    constexpr int kVec = 16 / sizeof(T);
    const auto addr = reinterpret_cast<uintptr_t>(out) | reinterpret_cast<uintptr_t>(x) |
                      reinterpret_cast<uintptr_t>(r) | reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(b);
    if (addr % 16 == 0 && D % kVec == 0) {
      return launch_vec<T, kVec>(launch, out, rows, x, r, w, b, A, D, n_out, at_rows, eps);
    }
    return launch_vec<T, 1>(launch, out, rows, x, r, w, b, A, D, n_out, at_rows, eps);
  }
}

}  // namespace norm_kernels
}  // namespace adaptive_encoder
