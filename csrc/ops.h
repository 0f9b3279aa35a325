// Argument checks shared by the CPU (ops.cpp) and CUDA (ops_cuda.cu) implementations.
#pragma once
#include <ATen/ATen.h>

namespace adaptive_encoder {
void check_rows_args(const at::Tensor& x, const at::Tensor& rows, const char* op);
// scatter / scatter_ (op names the caller): src (A, D) of base's dtype, rows (A,) int64.
void check_scatter_args(const at::Tensor& base, const at::Tensor& src, const at::Tensor& rows, const char* op);
void check_plan_args(const at::Tensor& depths, const at::Tensor& mask, int64_t num_layers);
}  // namespace adaptive_encoder
