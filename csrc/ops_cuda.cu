// CUDA implementations of plan / gather / scatter (schemas and semantics: ops.cpp).
//
// gather and scatter are one row-copy kernel: each thread moves one vector of the widest
// type (16, 8, 4, 2 or 1 bytes) that divides the row size and both base addresses, so
// bf16/fp16 rows with hidden % 8 == 0 move as 16-byte accesses, coalesced across a warp.
// Every access is bounded by its tensor's row count, whatever the caller checked: a source
// row out of range reads zeros, a destination row out of range is not written.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "ops.h"

namespace adaptive_encoder {
namespace {

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

template <typename V>
void launch_copy(void* dst, const int64_t* dst_rows, const void* src, const int64_t* src_rows,
                 int64_t n, int64_t row_bytes, int64_t n_dst, int64_t n_src) {
  const int64_t row_vecs = row_bytes / static_cast<int64_t>(sizeof(V));
  const int64_t total = n * row_vecs;
  if (total == 0) return;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  // Enough blocks to fill the machine several times over; the grid-stride loop does the rest.
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(sms) * 16);
  copy_rows_kernel<V><<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      static_cast<V*>(dst), dst_rows, static_cast<const V*>(src), src_rows, n, row_vecs, n_dst, n_src);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void copy_rows_cuda(void* dst, const int64_t* dst_rows, const void* src, const int64_t* src_rows,
                    int64_t n, int64_t row_bytes, int64_t n_dst, int64_t n_src) {
  const auto a = reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) |
                 static_cast<uintptr_t>(row_bytes);
  if (a % 16 == 0) return launch_copy<uint4>(dst, dst_rows, src, src_rows, n, row_bytes, n_dst, n_src);
  if (a % 8 == 0) return launch_copy<uint2>(dst, dst_rows, src, src_rows, n, row_bytes, n_dst, n_src);
  if (a % 4 == 0) return launch_copy<uint32_t>(dst, dst_rows, src, src_rows, n, row_bytes, n_dst, n_src);
  if (a % 2 == 0) return launch_copy<uint16_t>(dst, dst_rows, src, src_rows, n, row_bytes, n_dst, n_src);
  launch_copy<uint8_t>(dst, dst_rows, src, src_rows, n, row_bytes, n_dst, n_src);
}

at::Tensor gather_cuda(const at::Tensor& x, const at::Tensor& rows) {
  check_rows_args(x, rows, "gather");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor rc = rows.contiguous();
  at::Tensor out = at::empty({rc.size(0), xc.size(1)}, xc.options());
  copy_rows_cuda(out.data_ptr(), nullptr, xc.data_ptr(), rc.data_ptr<int64_t>(), rc.size(0),
                 xc.size(1) * xc.element_size(), out.size(0), xc.size(0));
  return out;
}

at::Tensor scatter_cuda(const at::Tensor& base, const at::Tensor& src, const at::Tensor& rows) {
  check_scatter_args(base, src, rows, "scatter");
  const c10::cuda::CUDAGuard guard(base.device());
  const at::Tensor sc = src.contiguous();
  const at::Tensor rc = rows.contiguous();
  at::Tensor out = base.contiguous().clone();
  copy_rows_cuda(out.data_ptr(), rc.data_ptr<int64_t>(), sc.data_ptr(), nullptr, rc.size(0),
                 out.size(1) * out.element_size(), out.size(0), sc.size(0));
  return out;
}

void scatter_inplace_cuda(at::Tensor base, const at::Tensor& src, const at::Tensor& rows) {
  check_scatter_args(base, src, rows, "scatter_");
  TORCH_CHECK(base.is_contiguous(), "scatter_: base must be contiguous");
  const c10::cuda::CUDAGuard guard(base.device());
  const at::Tensor sc = src.contiguous();
  const at::Tensor rc = rows.contiguous();
  copy_rows_cuda(base.data_ptr(), rc.data_ptr<int64_t>(), sc.data_ptr(), nullptr, rc.size(0),
                 base.size(1) * base.element_size(), base.size(0), sc.size(0));
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

std::tuple<at::Tensor, at::Tensor> plan_cuda(const at::Tensor& depths, const at::Tensor& mask,
                                             int64_t num_layers) {
  check_plan_args(depths, mask, num_layers);
  const c10::cuda::CUDAGuard guard(depths.device());
  const at::Tensor d = depths.contiguous();
  const at::Tensor m = mask.contiguous();
  const int64_t B = d.size(0), T = d.size(1), L = num_layers;
  auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>((L * B + kPlanWarps - 1) / kPlanWarps);

  at::Tensor counts = at::empty({L * B}, d.options());
  if (L * B > 0) {
    plan_count_kernel<<<blocks, kPlanWarps * 32, 0, stream>>>(d.data_ptr<int64_t>(), m.data_ptr<bool>(), B, T, L,
                                                              counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor offsets = at::cat({at::zeros({1}, d.options()), at::cumsum(counts, 0)});
  // The one host synchronisation of the plan: the output size depends on the data.
  const int64_t total = offsets[L * B].item<int64_t>();
  at::Tensor rows = at::empty({total}, d.options());
  if (total > 0) {
    plan_fill_kernel<<<blocks, kPlanWarps * 32, 0, stream>>>(d.data_ptr<int64_t>(), m.data_ptr<bool>(), B, T, L,
                                                             offsets.data_ptr<int64_t>(), rows.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {rows, offsets};
}

}  // namespace

TORCH_LIBRARY_IMPL(adaptive_encoder, CUDA, m) {
  m.impl("plan", &plan_cuda);
  m.impl("gather", &gather_cuda);
  m.impl("scatter", &scatter_cuda);
  m.impl("scatter_", &scatter_inplace_cuda);
}

}  // namespace adaptive_encoder
