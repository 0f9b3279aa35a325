// CUDA implementations of plan / gather / scatter (schemas and semantics: ops.cpp; the
// kernels and their launch shapes: ops_kernels.cuh).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>

#include "cuda_launch.cuh"
#include "ops.h"
#include "ops_kernels.cuh"

namespace adaptive_encoder {
namespace {

at::Tensor gather_cuda(const at::Tensor& x, const at::Tensor& rows) {
  check_rows_args(x, rows, "gather");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor rc = rows.contiguous();
  at::Tensor out = at::empty({rc.size(0), xc.size(1)}, xc.options());
  ops_kernels::copy_rows(CudaLaunch{}, out.data_ptr(), nullptr, xc.data_ptr(), rc.data_ptr<int64_t>(), rc.size(0),
                         xc.size(1) * xc.element_size(), out.size(0), xc.size(0));
  return out;
}

at::Tensor scatter_cuda(const at::Tensor& base, const at::Tensor& src, const at::Tensor& rows) {
  check_scatter_args(base, src, rows, "scatter");
  const c10::cuda::CUDAGuard guard(base.device());
  const at::Tensor sc = src.contiguous();
  const at::Tensor rc = rows.contiguous();
  at::Tensor out = base.contiguous().clone();
  ops_kernels::copy_rows(CudaLaunch{}, out.data_ptr(), rc.data_ptr<int64_t>(), sc.data_ptr(), nullptr, rc.size(0),
                         out.size(1) * out.element_size(), out.size(0), sc.size(0));
  return out;
}

void scatter_inplace_cuda(at::Tensor base, const at::Tensor& src, const at::Tensor& rows) {
  check_scatter_args(base, src, rows, "scatter_");
  TORCH_CHECK(base.is_contiguous(), "scatter_: base must be contiguous");
  const c10::cuda::CUDAGuard guard(base.device());
  const at::Tensor sc = src.contiguous();
  const at::Tensor rc = rows.contiguous();
  ops_kernels::copy_rows(CudaLaunch{}, base.data_ptr(), rc.data_ptr<int64_t>(), sc.data_ptr(), nullptr, rc.size(0),
                         base.size(1) * base.element_size(), base.size(0), sc.size(0));
}

std::tuple<at::Tensor, at::Tensor> plan_cuda(const at::Tensor& depths, const at::Tensor& mask,
                                             int64_t num_layers) {
  check_plan_args(depths, mask, num_layers);
  const c10::cuda::CUDAGuard guard(depths.device());
  const at::Tensor d = depths.contiguous();
  const at::Tensor m = mask.contiguous();
  const int64_t B = d.size(0), T = d.size(1), L = num_layers;
  const CudaLaunch launch{};

  at::Tensor counts = at::empty({L * B}, d.options());
  ops_kernels::plan_count(launch, d.data_ptr<int64_t>(), m.data_ptr<bool>(), B, T, L, counts.data_ptr<int64_t>());
  at::Tensor offsets = at::cat({at::zeros({1}, d.options()), at::cumsum(counts, 0)});
  // The one host synchronisation of the plan: the output size depends on the data.
  const int64_t total = offsets[L * B].item<int64_t>();
  at::Tensor rows = at::empty({total}, d.options());
  if (total > 0) {
    ops_kernels::plan_fill(launch, d.data_ptr<int64_t>(), m.data_ptr<bool>(), B, T, L, offsets.data_ptr<int64_t>(),
                           rows.data_ptr<int64_t>());
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
