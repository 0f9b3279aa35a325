// Residual add + LayerNorm on CPU (schemas in ops.cpp):
//
//   add_layer_norm(x (A,D), residual (A,D), weight (D,), bias (D,), eps) -> (A,D)
//       LayerNorm(x + residual) * weight + bias
//   add_layer_norm_into_(base (R,D) contiguous, x, residual, weight, bias, eps, rows (A,) int64,
//                        at_rows=False) -> ()
//       base[rows[i]] = that row, in place (a row outside [0, R) is refused); with at_rows,
//       x and residual are (R,D) like base and read at rows[i] too (a layer run on every row
//       that writes back only its active ones)
//
// One pass over each row's inputs instead of an add (reads 2, writes 1) and a LayerNorm
// (reads 1, writes 1), and the _into_ form writes straight into the state rows instead of a
// scatter after. Not faster than torch's add and LayerNorm on the 2-core CPU machine, whose
// LayerNorm is vectorized per CPU (AVX2/AVX-512) while this file is built for baseline x86-64:
// so the encoder and the op's default on CPU tensors keep torch's (adaptive_encoder/norm.py),
// and this is the CPU implementation the Triton kernel is checked beside, used when asked for
// by name. Numerics as torch's: the sum rounded to the input dtype, mean and biased
// variance in the op math type (float; double for double), over the row's sums kept in a
// buffer, affine in that type.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops.h"

namespace adaptive_encoder {

// Shared with the CUDA implementation (norm_cuda.cu; declared in ops.h).
void check_norm_args(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                     const at::Tensor& bias, const char* op) {
  TORCH_CHECK(x.dim() == 2 && residual.sizes() == x.sizes(), op, ": x and residual must be (A, D) alike, got ",
              x.sizes(), " and ", residual.sizes());
  TORCH_CHECK(weight.dim() == 1 && bias.dim() == 1 && weight.size(0) == x.size(1) && bias.size(0) == x.size(1), op,
              ": weight and bias must be (D,) with D = ", x.size(1), ", got ", weight.sizes(), " and ", bias.sizes());
  TORCH_CHECK(residual.scalar_type() == x.scalar_type() && weight.scalar_type() == x.scalar_type() &&
                  bias.scalar_type() == x.scalar_type(),
              op, ": x, residual, weight and bias must share a dtype");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": a floating-point dtype is needed, got ", x.scalar_type());
  for (const at::Tensor* t : {&residual, &weight, &bias}) {
    TORCH_CHECK(t->device() == x.device(), op, ": all tensors must be on one device");
  }
}

void check_norm_into_args(const at::Tensor& base, const at::Tensor& x, const at::Tensor& residual,
                          const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& rows, bool at_rows) {
  check_norm_args(x, residual, weight, bias, "add_layer_norm_into_");
  TORCH_CHECK(base.dim() == 2 && base.size(1) == x.size(1) && base.scalar_type() == x.scalar_type() &&
                  base.device() == x.device(),
              "add_layer_norm_into_: base must be (R, D) of x's dtype and device, got ", base.sizes());
  TORCH_CHECK(base.is_contiguous(), "add_layer_norm_into_: base must be contiguous");
  TORCH_CHECK(!at_rows || x.size(0) == base.size(0),
              "add_layer_norm_into_: with at_rows, x and residual must have base's rows, got ", x.sizes(), " and ",
              base.sizes());
  TORCH_CHECK(rows.dim() == 1 && (at_rows || rows.size(0) == x.size(0)) && rows.scalar_type() == at::kLong &&
                  rows.device() == x.device(),
              "add_layer_norm_into_: rows must be (A,) int64 on x's device", at_rows ? "" : ", A = x's rows");
}

namespace {

// Row statistics in one pass over the rounded sums: mean and biased variance from the sums of
// (v - v[0]) and its squares (shifting by the row's first value keeps a large common offset
// from cancelling), in kLanes independent accumulators so that the compiler can vectorize the
// loop without reordering a float sum.
constexpr int64_t kLanes = 16;

template <typename T>
void moments(const T* v, int64_t n, T& mean, T& var) {
  const T shift = v[0];
  T s[kLanes] = {}, q[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      const T c = v[d + j] - shift;
      s[j] += c;
      q[j] += c * c;
    }
  }
  T sum = 0, sq = 0;
  for (int64_t j = 0; j < kLanes; ++j) {
    sum += s[j];
    sq += q[j];
  }
  for (; d < n; ++d) {
    const T c = v[d] - shift;
    sum += c;
    sq += c * c;
  }
  const T m = sum / static_cast<T>(n);
  mean = shift + m;
  var = std::max(sq / static_cast<T>(n) - m * m, T(0));
}

// out row dst[i] (or i) = LayerNorm(x[j] + r[j]) for i in [0, A), j = dst[i] if at_rows else i.
void run(at::Tensor& out, const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
         const at::Tensor& bias, double eps, const int64_t* dst, int64_t A, bool at_rows) {
  const at::Tensor xc = x.contiguous(), rc = residual.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
  const int64_t D = xc.size(1);
  if (A == 0 || D == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, xc.scalar_type(), "add_layer_norm", [&] {
    const scalar_t* px = xc.data_ptr<scalar_t>();
    const scalar_t* pr = rc.data_ptr<scalar_t>();
    const scalar_t* pw = wc.data_ptr<scalar_t>();
    const scalar_t* pb = bc.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    using acc_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, A, std::max<int64_t>(1, 32768 / D), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> buf(D);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t j = at_rows ? dst[i] : i;
        const scalar_t* xi = px + j * D;
        const scalar_t* ri = pr + j * D;
        // The sum as torch stores it (scalar_t), then in the op math type.
        for (int64_t d = 0; d < D; ++d) buf[d] = static_cast<acc_t>(static_cast<scalar_t>(xi[d] + ri[d]));
        acc_t mean, var;
        moments(buf.data(), D, mean, var);
        const acc_t rstd = acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
        scalar_t* oi = po + (dst ? dst[i] : i) * D;
        for (int64_t d = 0; d < D; ++d) {
          oi[d] = static_cast<scalar_t>((buf[d] - mean) * rstd * static_cast<acc_t>(pw[d]) + static_cast<acc_t>(pb[d]));
        }
      }
    });
  });
}

at::Tensor add_layer_norm_cpu(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                              const at::Tensor& bias, double eps) {
  check_norm_args(x, residual, weight, bias, "add_layer_norm");
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  run(out, x, residual, weight, bias, eps, nullptr, x.size(0), false);
  return out;
}

void add_layer_norm_into_cpu(at::Tensor base, const at::Tensor& x, const at::Tensor& residual,
                             const at::Tensor& weight, const at::Tensor& bias, double eps, const at::Tensor& rows,
                             bool at_rows) {
  check_norm_into_args(base, x, residual, weight, bias, rows, at_rows);
  const at::Tensor rc = rows.contiguous();
  const int64_t* pr = rc.data_ptr<int64_t>();
  for (int64_t i = 0; i < rc.size(0); ++i) {
    TORCH_CHECK(pr[i] >= 0 && pr[i] < base.size(0), "add_layer_norm_into_: row index ", pr[i], " out of range [0, ",
                base.size(0), ")");
  }
  run(base, x, residual, weight, bias, eps, pr, rc.size(0), at_rows);
}

}  // namespace

TORCH_LIBRARY_IMPL(adaptive_encoder, CPU, m) {
  m.impl("add_layer_norm", &add_layer_norm_cpu);
  m.impl("add_layer_norm_into_", &add_layer_norm_into_cpu);
}

}  // namespace adaptive_encoder
