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
// The kernel and its launch shapes: norm_kernels.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "cuda_launch.cuh"
#include "norm_kernels.cuh"
#include "ops.h"

namespace adaptive_encoder {
namespace {

using norm_kernels::kMaxD;

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
    const bool launched = norm_kernels::add_layer_norm_rows<T>(CudaLaunch{}, out.data_ptr<T>(), pr, xc.data_ptr<T>(),
                                                               rc.data_ptr<T>(), wc.data_ptr<T>(), bc.data_ptr<T>(), A,
                                                               D, out.size(0), at_rows, static_cast<float>(eps));
    TORCH_CHECK(launched, "add_layer_norm (CUDA): no kernel for ", xc.scalar_type(), " with hidden size ", D);
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
