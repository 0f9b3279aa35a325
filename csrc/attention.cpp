// Varlen attention on CPU, without padding (schema in ops.cpp):
//
//   varlen_attention(q (Aq,H,Dh), k (Ak,H,Dh), v (Ak,H,Dh), cu_q (B+1,) int64, cu_k (B+1,) int64,
//                    scale, dist (2P-1,H)?, q_pos (Aq,)?, k_pos (Ak,)?) -> (Aq,H,Dh)
//
// The queries of sequence b (rows cu_q[b]:cu_q[b+1]) attend to its keys (cu_k[b]:cu_k[b+1]);
// with dist, scores[i,j] += dist[k_pos[j] - q_pos[i] + P - 1] (MPNet's relative position bias).
// Rows at or past cu_q[B] / cu_k[B] are in no sequence: their output rows are not written.
//
// Why not the padded reference: a batch of documents of uneven length padded to the longest
// one does up to 4x the attention work at batch 15 (IMDB-like lengths), and SDPA with a mask
// is slower per pair than without. Here every sequence is one SDPA call on its own rows, so
// the work is sum_b q_b * k_b pairs, and the unmasked calls take ATen's fused CPU kernel.
// Forward only (no autograd): the encoder uses it for inference; training takes the reference.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "ops.h"

namespace adaptive_encoder {
namespace {

void check_offsets(const at::Tensor& cu, int64_t rows, const char* name) {
  TORCH_CHECK(cu.dim() == 1 && cu.scalar_type() == at::kLong, "varlen_attention: ", name,
              " must be a 1-D int64 tensor");
  const int64_t* c = cu.data_ptr<int64_t>();
  const int64_t n = cu.numel();
  // Rows past c[n-1] belong to no sequence (graph mode pads to fixed sizes): left unwritten.
  TORCH_CHECK(n >= 1 && c[0] == 0 && c[n - 1] <= rows, "varlen_attention: ", name, " must run from 0 to at most ",
              rows, " (the number of rows)");
  for (int64_t i = 0; i + 1 < n; ++i) {
    TORCH_CHECK(c[i] <= c[i + 1], "varlen_attention: ", name, " must be non-decreasing");
  }
}

at::Tensor varlen_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& cu_q, const at::Tensor& cu_k, double scale,
                                const std::optional<at::Tensor>& dist, const std::optional<at::Tensor>& q_pos,
                                const std::optional<at::Tensor>& k_pos) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && k.sizes() == v.sizes() && q.size(1) == k.size(1) &&
                  q.size(2) == k.size(2),
              "varlen_attention: q (Aq,H,Dh) and k, v (Ak,H,Dh) expected, got ", q.sizes(), ", ", k.sizes(), ", ",
              v.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(),
              "varlen_attention: q, k and v must share a dtype");
  TORCH_CHECK(cu_q.numel() == cu_k.numel(), "varlen_attention: cu_q and cu_k must both be (B+1,)");
  const at::Tensor cq = cu_q.contiguous(), ck = cu_k.contiguous();
  check_offsets(cq, q.size(0), "cu_q");
  check_offsets(ck, k.size(0), "cu_k");
  const bool has_bias = dist.has_value();
  TORCH_CHECK(has_bias == q_pos.has_value() && has_bias == k_pos.has_value(),
              "varlen_attention: dist, q_pos and k_pos go together");
  int64_t off = 0;
  if (has_bias) {
    TORCH_CHECK(dist->dim() == 2 && dist->size(1) == q.size(1) && dist->size(0) % 2 == 1,
                "varlen_attention: bias table must be (2P-1, H=", q.size(1), "), got ", dist->sizes());
    TORCH_CHECK(q_pos->dim() == 1 && q_pos->size(0) == q.size(0) && k_pos->dim() == 1 &&
                    k_pos->size(0) == k.size(0),
                "varlen_attention: bias positions must be (Aq,) and (Ak,)");
    off = (dist->size(0) - 1) / 2;
  }

  at::Tensor out = at::empty(q.sizes(), q.options());
  const int64_t* pq = cq.data_ptr<int64_t>();
  const int64_t* pk = ck.data_ptr<int64_t>();
  const int64_t B = cq.numel() - 1;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t q0 = pq[b], q1 = pq[b + 1], k0 = pk[b], k1 = pk[b + 1];
    if (q1 == q0) continue;
    TORCH_CHECK(k1 > k0, "varlen_attention: sequence ", b, " has queries but no keys");
    // (1, H, rows, Dh) views of this sequence's rows: SDPA reads strided inputs.
    const at::Tensor qb = q.slice(0, q0, q1).transpose(0, 1).unsqueeze(0);
    const at::Tensor kb = k.slice(0, k0, k1).transpose(0, 1).unsqueeze(0);
    const at::Tensor vb = v.slice(0, k0, k1).transpose(0, 1).unsqueeze(0);
    std::optional<at::Tensor> mask;
    if (has_bias) {
      // (aq, ak) table rows -> (1, H, aq, ak) additive bias, clamped like the reference.
      const at::Tensor idx = (k_pos->slice(0, k0, k1).unsqueeze(0) - q_pos->slice(0, q0, q1).unsqueeze(1) + off)
                                 .clamp(0, 2 * off);
      mask = dist->index({idx}).permute({2, 0, 1}).unsqueeze(0).to(q.scalar_type());
    }
    const at::Tensor ob = at::scaled_dot_product_attention(qb, kb, vb, mask, 0.0, false, scale);
    out.slice(0, q0, q1).copy_(ob.squeeze(0).transpose(0, 1));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(adaptive_encoder, CPU, m) {
  m.impl("varlen_attention", &varlen_attention_cpu);
}

}  // namespace adaptive_encoder
