// Residual add + LayerNorm on CUDA (schemas in ops.cpp, semantics and CPU version in norm.cpp):
//
//   add_layer_norm(x (A,D), residual (A,D), weight (D,), bias (D,), eps) -> (A,D)
//   add_layer_norm_into_(base (R,D) contiguous, x, residual, weight, bias, eps, rows (A,) int64,
//                        at_rows=False) -> ()   base[rows[i]] = LayerNorm(x[j] + residual[j]) ...,
//                        j = rows[i] with at_rows, else i
//
// Why a C++ kernel beside the Triton one (kernels/norm.py): the same arithmetic, but launched
// from C++ (~5-10 us of host time) instead of Triton's Python launcher. H200 run 5's follow-up
// measured the Triton form losing to torch's add + LayerNorm pair in launch-bound forwards
// (0.82-0.95x at batch 2-15), while its kernel moved 2.56x the pair's rows at 65k rows.
//
// One warp per row, the row held in registers: each lane loads vectors of the widest access
// (16 bytes) that the row size and every pointer allow, else single elements, MAXV vectors at
// most; D <= kMaxD. The sum is rounded to the input dtype (as `x + residual` stores it), mean
// and biased variance (two passes over the registers) and the affine in float32, stored in the
// input dtype. float32, bfloat16, float16 (float64 takes the reference: adaptive_encoder/norm.py).
//
// Rows are masked, not checked here (the check would need the rows on the host, a sync): a
// destination row outside [0, R) is neither read nor written. The public Python functions
// check the range first unless told the rows come from a plan.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "ops.h"

namespace adaptive_encoder {
namespace {

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

template <typename T, int VEC, int MAXV>
void launch(T* out, const int64_t* rows, const T* x, const T* r, const T* w, const T* b, int64_t A, int64_t D,
            int64_t n_out, bool at_rows, float eps) {
  const int64_t blocks = (A + kWarpsPerBlock - 1) / kWarpsPerBlock;
  add_layer_norm_kernel<T, VEC, MAXV><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0,
                                        at::cuda::getCurrentCUDAStream()>>>(out, rows, x, r, w, b, A, D, n_out,
                                                                             at_rows, eps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The fewest vectors per lane that hold a row: D / (32 * VEC) rounded up to a power of two.
template <typename T, int VEC>
void launch_vec(T* out, const int64_t* rows, const T* x, const T* r, const T* w, const T* b, int64_t A, int64_t D,
                int64_t n_out, bool at_rows, float eps) {
  const int64_t per_lane = (D / VEC + 31) / 32;
  if (per_lane <= 1) return launch<T, VEC, 1>(out, rows, x, r, w, b, A, D, n_out, at_rows, eps);
  if (per_lane <= 2) return launch<T, VEC, 2>(out, rows, x, r, w, b, A, D, n_out, at_rows, eps);
  if (per_lane <= 4) return launch<T, VEC, 4>(out, rows, x, r, w, b, A, D, n_out, at_rows, eps);
  if (per_lane <= 8) return launch<T, VEC, 8>(out, rows, x, r, w, b, A, D, n_out, at_rows, eps);
  if constexpr (VEC <= 4) {
    if (per_lane <= 16) return launch<T, VEC, 16>(out, rows, x, r, w, b, A, D, n_out, at_rows, eps);
  }
  if constexpr (VEC == 1) {
    if (per_lane <= 32) return launch<T, 1, 32>(out, rows, x, r, w, b, A, D, n_out, at_rows, eps);
    if (per_lane <= 64) return launch<T, 1, 64>(out, rows, x, r, w, b, A, D, n_out, at_rows, eps);
  }
  TORCH_CHECK(false, "add_layer_norm (CUDA): hidden size ", D, " above ", kMaxD);
}

void run(at::Tensor& out, const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
         const at::Tensor& bias, double eps, const at::Tensor* rows, int64_t A, bool at_rows) {
  const int64_t D = x.size(1);
  TORCH_CHECK(D <= kMaxD, "add_layer_norm (CUDA): hidden size ", D, " above ", kMaxD,
              " (the Triton kernel takes it: adaptive_encoder.norm)");
  TORCH_CHECK(x.scalar_type() != at::kDouble, "add_layer_norm (CUDA): float32, bfloat16 or float16, got float64");
  if (A == 0 || D == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), rc = residual.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
  const at::Tensor rows_c = rows ? rows->contiguous() : at::Tensor();
  const int64_t* pr = rows ? rows_c.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "add_layer_norm_cuda", [&] {
    using T = scalar_t;
    constexpr int kVec = 16 / sizeof(T);
    T* po = out.data_ptr<T>();
    const T *px = xc.data_ptr<T>(), *prs = rc.data_ptr<T>(), *pw = wc.data_ptr<T>(), *pb = bc.data_ptr<T>();
    const auto addr = reinterpret_cast<uintptr_t>(po) | reinterpret_cast<uintptr_t>(px) |
                      reinterpret_cast<uintptr_t>(prs) | reinterpret_cast<uintptr_t>(pw) |
                      reinterpret_cast<uintptr_t>(pb);
    const float e = static_cast<float>(eps);
    if constexpr (sizeof(T) <= 4) {
      if (addr % 16 == 0 && D % kVec == 0) {
        return launch_vec<T, kVec>(po, pr, px, prs, pw, pb, A, D, out.size(0), at_rows, e);
      }
      launch_vec<T, 1>(po, pr, px, prs, pw, pb, A, D, out.size(0), at_rows, e);
    }
  });
}

at::Tensor add_layer_norm_cuda(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                               const at::Tensor& bias, double eps) {
  check_norm_args(x, residual, weight, bias, "add_layer_norm");
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  run(out, x, residual, weight, bias, eps, nullptr, x.size(0), false);
  return out;
}

void add_layer_norm_into_cuda(at::Tensor base, const at::Tensor& x, const at::Tensor& residual,
                              const at::Tensor& weight, const at::Tensor& bias, double eps, const at::Tensor& rows,
                              bool at_rows) {
  check_norm_into_args(base, x, residual, weight, bias, rows, at_rows);
  run(base, x, residual, weight, bias, eps, &rows, rows.size(0), at_rows);
}

}  // namespace

TORCH_LIBRARY_IMPL(adaptive_encoder, CUDA, m) {
  m.impl("add_layer_norm", &add_layer_norm_cuda);
  m.impl("add_layer_norm_into_", &add_layer_norm_into_cuda);
}

}  // namespace adaptive_encoder
