// How the .cu files start the kernels of ops_kernels.cuh and norm_kernels.cuh on the GPU: on the
// current stream, each launch checked. The kernel headers take the launcher as a parameter so
// that the tests can run the same code on the CPU (tests/native/simt.h).
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>

namespace adaptive_encoder {

struct CudaLaunch {
  int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), int64_t blocks, int threads, A... args) const {
    kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(static_cast<P>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace adaptive_encoder
