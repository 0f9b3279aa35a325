"""The Triton kernels compile for a Hopper GPU (sm_90) on this CPU machine (AOT, nothing runs).

A cheap guard that GPU-only code paths do not rot where CI has no GPU: the interpreter runs
the kernels' semantics, this checks that the compiler accepts them, that the attention
kernel's bf16/fp16 dots become Hopper warpgroup MMAs (wgmma), and that the row copy and the
fused add + LayerNorm are vectorized (16-byte loads and stores) for aligned rows. It runs in a subprocess
without TRITON_INTERPRET: the interpreter patches triton.language in its own process.
"""
import json
import os
import subprocess
import sys

SCRIPT = r'''
import json
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile as triton_compile
from adaptive_encoder.kernels.attention import _varlen_attn_kernel
from adaptive_encoder.kernels.gather import _copy_rows_kernel
from adaptive_encoder.kernels.norm import _add_layer_norm_kernel
from adaptive_encoder.kernels.plan import _plan_count_kernel, _plan_fill_kernel

def ptx(fn, signature, constexprs, attrs=None):
    signature = {**signature, **{k: "constexpr" for k in constexprs}}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton_compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]

out = {}
for dt in ("bf16", "fp16"):
    for bias in (False, True):
        out["attention_" + dt + ("_bias" if bias else "")] = ptx(_varlen_attn_kernel,
            {"q_ptr": "*" + dt, "k_ptr": "*" + dt, "v_ptr": "*" + dt, "o_ptr": "*" + dt,
             "cu_q_ptr": "*i64", "cu_k_ptr": "*i64", "qk_scale": "fp32", "H": "i32",
             "stride_q": "i32", "stride_k": "i32", "stride_v": "i32", "bias_ptr": "*" + dt, "q_pos_ptr": "*i64", "k_pos_ptr": "*i64", "bias_off": "i64"},
            {"HEAD_DIM": 64, "BLOCK_M": 64, "BLOCK_N": 64, "UPCAST": False, "HAS_BIAS": bias, "DOT_PRECISION": "tf32"})
for prec in ("ieee", "tf32"):  # float32: IEEE by default (torch's float32 matmuls), TF32 only when allowed
    out["attention_fp32_" + prec] = ptx(_varlen_attn_kernel,
        {"q_ptr": "*fp32", "k_ptr": "*fp32", "v_ptr": "*fp32", "o_ptr": "*fp32",
         "cu_q_ptr": "*i64", "cu_k_ptr": "*i64", "qk_scale": "fp32", "H": "i32",
         "stride_q": "i32", "stride_k": "i32", "stride_v": "i32", "bias_ptr": "*fp32", "q_pos_ptr": "*i64", "k_pos_ptr": "*i64", "bias_off": "i64"},
        {"HEAD_DIM": 64, "BLOCK_M": 64, "BLOCK_N": 64, "UPCAST": False, "HAS_BIAS": False, "DOT_PRECISION": prec})
for has_dst in (False, True):
    out["copy_rows_dst%d" % has_dst] = ptx(_copy_rows_kernel,
        {"dst_ptr": "*bf16", "src_ptr": "*bf16", "dst_rows_ptr": "*i64", "src_rows_ptr": "*i64", "n": "i64", "D": "i64",
         "n_dst": "i64", "n_src": "i64"},
        {"HAS_DST_ROWS": has_dst, "HAS_SRC_ROWS": not has_dst, "BLOCK_R": 8, "BLOCK_D": 1024})
# What Triton's JIT assumes when the hidden size is a multiple of 16 and the tensors 16-byte
# aligned (as for 768 bf16): divisibility 16 of both pointers and of D.
out["copy_rows_aligned"] = ptx(_copy_rows_kernel,
    {"dst_ptr": "*bf16", "src_ptr": "*bf16", "dst_rows_ptr": "*i64", "src_rows_ptr": "*i64", "n": "i64", "D": "i64",
     "n_dst": "i64", "n_src": "i64"},
    {"HAS_DST_ROWS": False, "HAS_SRC_ROWS": True, "BLOCK_R": 8, "BLOCK_D": 1024},
    attrs={(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]], (5,): [["tt.divisibility", 16]]})
sig = {"depths_ptr": "*i64", "mask_ptr": "*u8", "B": "i32", "T": "i32", "L": "i32"}
out["plan_count"] = ptx(_plan_count_kernel, {**sig, "counts_ptr": "*i64"}, {"BLOCK_T": 512})
out["plan_fill"] = ptx(_plan_fill_kernel, {**sig, "offsets_ptr": "*i64", "rows_ptr": "*i64"}, {"BLOCK_T": 512})
# The fused add + LayerNorm, as the JIT sees 768 bf16 rows (16-byte aligned, D a multiple of 16):
# out of place, into rows, and read at the rows it writes (at_rows: a dense layer's last one).
for dt in ("bf16", "fp16", "fp32"):
    for form, has_rows, at_rows in (("rows0", False, False), ("rows1", True, False), ("atrows", True, True)):
        out["add_layer_norm_%s_%s" % (dt, form)] = ptx(_add_layer_norm_kernel,
            {"x_ptr": "*" + dt, "r_ptr": "*" + dt, "w_ptr": "*" + dt, "b_ptr": "*" + dt, "out_ptr": "*" + dt,
             "rows_ptr": "*i64", "n": "i32", "D": "i32", "n_out": "i32", "eps": "fp32"},
            {"HAS_ROWS": has_rows, "AT_ROWS": at_rows, "ROUND_BF16": False, "BLOCK_R": 4, "BLOCK_D": 1024},
            attrs={(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 7)})
print(json.dumps(out))
'''


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ptx = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(ptx) == {"attention_bf16", "attention_fp16", "attention_bf16_bias", "attention_fp16_bias",
                        "attention_fp32_ieee", "attention_fp32_tf32",
                        "copy_rows_dst0", "copy_rows_dst1", "copy_rows_aligned", "plan_count", "plan_fill"} | {
                           f"add_layer_norm_{dt}_{form}" for dt in ("bf16", "fp16", "fp32")
                           for form in ("rows0", "rows1", "atrows")}
    # The H200 run (2026-11-26) measured 1.3e-3 error from TF32 dots on float32 inputs: the
    # default float32 kernel must have no TF32 tensor-core instruction, the opt-in one must.
    assert "tf32" not in ptx["attention_fp32_ieee"]
    assert "tf32" in ptx["attention_fp32_tf32"]
    for dt, ptx_type in (("bf16", "bf16"), ("fp16", "f16")):
        for suffix in ("", "_bias"):
            assert f"wgmma.mma_async.sync.aligned.m64n64k16.f32.{ptx_type}.{ptx_type}" in ptx[f"attention_{dt}{suffix}"]
    for name, code in ptx.items():
        assert ".target sm_90" in code and "st.global" in code, name
    # The row copy moves 16 bytes per load and store (8 bf16) when rows are aligned: the
    # vectorized copy the bandwidth target needs (without the hints it moves 2 bytes at a time).
    assert "ld.global.v4.b32" in ptx["copy_rows_aligned"] and "st.global.v4.b32" in ptx["copy_rows_aligned"]
    # The fused add + LayerNorm reads and writes 768 bf16 rows 16 bytes at a time as well.
    for name in ("add_layer_norm_bf16_rows0", "add_layer_norm_bf16_rows1", "add_layer_norm_bf16_atrows"):
        assert "ld.global.v4.b32" in ptx[name] and "st.global.v4.b32" in ptx[name], name
