// Argument checks shared by the CPU (ops.cpp, norm.cpp) and CUDA (ops_cuda.cu, norm_cuda.cu) implementations.
#pragma once
#include <ATen/ATen.h>

namespace adaptive_encoder {
void check_rows_args(const at::Tensor& x, const at::Tensor& rows, const char* op);
// scatter / scatter_ (op names the caller): src (A, D) of base's dtype, rows (A,) int64.
void check_scatter_args(const at::Tensor& base, const at::Tensor& src, const at::Tensor& rows, const char* op);
void check_plan_args(const at::Tensor& depths, const at::Tensor& mask, int64_t num_layers);
// add_layer_norm / add_layer_norm_into_ (norm.cpp, norm_cuda.cu); the row range is each device's own check.
void check_norm_args(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                     const at::Tensor& bias, const char* op);
void check_norm_into_args(const at::Tensor& base, const at::Tensor& x, const at::Tensor& residual,
                          const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& rows, bool at_rows);
}  // namespace adaptive_encoder
