// The CUDA kernels of csrc/ops_kernels.cuh and csrc/norm_kernels.cuh, run on CPU tensors under
// the SIMT emulator (simt.h), with the launch shapes and host steps of csrc/ops_cuda.cu and
// csrc/norm_cuda.cu. Built by tests/test_simt.py with torch.utils.cpp_extension.load.
// No argument checks: the tests pass valid tensors (the checks are ops.h's, tested on CPU).
#include <torch/extension.h>

#include "simt.h"  // before the kernel headers: it defines the CUDA keywords they use
// clang-format off
#include "norm_kernels.cuh"
#include "ops_kernels.cuh"
// clang-format on

namespace {

namespace k = adaptive_encoder;

struct SimtLaunch {
  int sms = 1;  // one SM: the copy's grid-stride loop takes several turns on small tensors

  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), int64_t blocks, int threads, A... args) const {
    simt::launch(kernel, blocks, threads, args...);
  }
};

const int64_t* rows_ptr(const c10::optional<torch::Tensor>& rows) {
  return rows ? rows->data_ptr<int64_t>() : nullptr;
}

// dst[dst_rows[i] or i] = src[src_rows[i] or i], i < n: gather (src_rows) and scatter (dst_rows) of
// ops_cuda.cu. dst and src are contiguous 2-D tensors with rows of equal byte size; their data
// pointers may be offset from 16-byte alignment to reach the narrower vector types.
void copy_rows(torch::Tensor dst, const c10::optional<torch::Tensor>& dst_rows, const torch::Tensor& src,
               const c10::optional<torch::Tensor>& src_rows, int64_t n, int64_t sms) {
  k::ops_kernels::copy_rows(SimtLaunch{static_cast<int>(sms)}, dst.data_ptr(), rows_ptr(dst_rows), src.data_ptr(),
                            rows_ptr(src_rows), n, dst.size(1) * dst.element_size(), dst.size(0), src.size(0));
}

// plan_cuda's steps: count, offsets = [0, cumsum(counts)], fill.
std::tuple<torch::Tensor, torch::Tensor> plan(const torch::Tensor& depths, const torch::Tensor& mask,
                                              int64_t num_layers) {
  const int64_t B = depths.size(0), T = depths.size(1), L = num_layers;
  const SimtLaunch launch;
  torch::Tensor counts = torch::full({L * B}, -7, depths.options());  // poisoned: each warp writes its own
  k::ops_kernels::plan_count(launch, depths.data_ptr<int64_t>(), mask.data_ptr<bool>(), B, T, L,
                             counts.data_ptr<int64_t>());
  torch::Tensor offsets = torch::cat({torch::zeros({1}, depths.options()), torch::cumsum(counts, 0)});
  const int64_t total = offsets[L * B].item<int64_t>();
  // Poisoned, with a guard of one warp's width behind it: a write past the end is reported.
  torch::Tensor rows = torch::full({std::max<int64_t>(total, 0) + simt::kWarp}, -7, depths.options());
  if (total > 0) {
    k::ops_kernels::plan_fill(launch, depths.data_ptr<int64_t>(), mask.data_ptr<bool>(), B, T, L,
                              offsets.data_ptr<int64_t>(), rows.data_ptr<int64_t>());
  }
  TORCH_CHECK(rows.slice(0, total).eq(-7).all().item<bool>(), "plan_fill wrote past the end of rows");
  return {rows.slice(0, 0, total), offsets};
}

// norm_cuda.cu's run(): out[rows[i] or i] = LayerNorm(x[j] + residual[j]) * weight + bias, A rows.
// Returns false where the CUDA op refuses (no kernel for the dtype or hidden size).
bool add_layer_norm(torch::Tensor out, const c10::optional<torch::Tensor>& rows, const torch::Tensor& x,
                    const torch::Tensor& residual, const torch::Tensor& weight, const torch::Tensor& bias,
                    int64_t A, bool at_rows, double eps) {
  bool launched = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "simt_add_layer_norm", [&] {
    using T = scalar_t;
    launched = k::norm_kernels::add_layer_norm_rows<T>(
        SimtLaunch{}, out.data_ptr<T>(), rows_ptr(rows), x.data_ptr<T>(), residual.data_ptr<T>(),
        weight.data_ptr<T>(), bias.data_ptr<T>(), A, x.size(1), out.size(0), at_rows, static_cast<float>(eps));
  });
  return launched;
}

// Kernels that break the warp rules, to show the emulator reports them.
__global__ void ballot_after_return_kernel(int64_t* out) {
  if (threadIdx.x % 32 == 5) return;  // one lane leaves, the rest vote with the full mask
  out[threadIdx.x] = __ballot_sync(0xffffffffu, 1);
}

__global__ void lane_ops_kernel(int64_t* ballots, float* sums) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x & 31;
  ballots[i] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  sums[i] = k::norm_kernels::warp_sum(static_cast<float>(i));
}

void ballot_after_return(torch::Tensor out) {
  simt::launch(ballot_after_return_kernel, 1, 32, out.data_ptr<int64_t>());
}

void lane_ops(torch::Tensor ballots, torch::Tensor sums, int64_t blocks, int64_t threads) {
  simt::launch(lane_ops_kernel, blocks, static_cast<int>(threads), ballots.data_ptr<int64_t>(),
               sums.data_ptr<float>());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("copy_rows", &copy_rows);
  m.def("plan", &plan);
  m.def("add_layer_norm", &add_layer_norm);
  m.def("ballot_after_return", &ballot_after_return);
  m.def("lane_ops", &lane_ops);
}
