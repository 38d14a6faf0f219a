"""Every Triton kernel compiled ahead of time for sm_80 and sm_90, as the CUDA path launches it, without a GPU.

The launchers run on meta tensors of realistic shapes (GPT-2's and LLaMA-3's vocabularies and heads,
GPT-2 small's parameters, its largest block weight in NF4 and under 8-bit AdamW) with each kernel's `run` replaced by a recorder, so what gets compiled is
exactly what they would launch: the grid, block sizes, num_warps, argument dtypes, and the integer and
alignment specialisations Triton's JIT derives from the arguments (meta tensors have addresses: a view
at an odd offset is misaligned, as on a GPU). Each launch is compiled with `triton.compile` for an
A100 (sm_80) and an H100 (sm_90) target, and the cubin is read by the cuobjdump that Triton's wheel
ships. The checks:
- no register spills (no local memory, no stack);
- at most 64 registers a thread: then at least half of an SM's 2048 threads can be resident (65536
  registers / 64 = 1024 threads), which a memory-bound kernel needs to hide the latency of HBM;
- shared memory within the device's per-block limit.
The compilation runs in a fresh process: the test suite's own Triton is in interpreter mode.
`python tests/kernels/test_aot_compile.py` prints the table (to check another Triton by hand).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import tempfile

import pytest
import torch

TARGETS = {"sm_80": (80, 163 * 1024), "sm_90": (90, 227 * 1024)}  # compute capability, shared memory per block
MAX_REGISTERS = 64
N_TOKENS = 8192
# (name, N, H, V): the output heads of GPT-2 small and of LLaMA-3 8B
HEADS = [("gpt2", N_TOKENS, 768, 50257), ("llama3", N_TOKENS, 4096, 128256)]


def _record_launches(kernels: dict) -> list:
    """Replace each kernel's `run` by a recorder; return the list it appends (kernel name, grid, args, kwargs) to."""
    launches = []
    for name, kernel in kernels.items():
        kernel.run = lambda *args, grid, warmup, _name=name, **kwargs: launches.append((_name, grid, args, kwargs))
    return launches


def _launch_every_kernel() -> None:
    """Call the CUDA path's launchers on meta tensors: the cases the compile test covers."""
    from minift.kernels.adamw8bit import _adamw8bit_triton
    from minift.kernels.fused_adamw import _adamw_triton
    from minift.kernels.fused_cross_entropy import _cross_entropy_triton
    from minift.kernels.fused_linear_cross_entropy import _linear_cross_entropy_chunks, chunk_rows
    from minift.kernels.nf4 import NF4Weight, _dequantize_triton
    from minift.memory import meta_model, model_config
    from minift.memory.spec import RunSpec

    meta = dict(device="meta")
    for dtype in (torch.float32, torch.bfloat16):
        for _, N, H, V in HEADS:
            labels = torch.empty(N, dtype=torch.long, **meta)
            scale = torch.empty((), **meta).expand(N)
            _cross_entropy_triton(torch.empty(N, V, dtype=dtype, **meta), labels, scale, -100)
            hidden, weight = torch.empty(N, H, dtype=dtype, **meta), torch.empty(V, H, dtype=dtype, **meta)
            rows = chunk_rows(N, V, hidden.element_size(), "cuda")
            _linear_cross_entropy_chunks(hidden, weight, None, labels, scale, -100, rows, "triton", (True, True, False))
        # AdamW over GPT-2 small's tensors, all aligned, then one view 4 B off: the launcher's second launch
        params = [p.detach().to(dtype) for p in meta_model(RunSpec(model_config("gpt2"))).parameters()]
        _adamw_triton(params, params, params, params, [1.0] * len(params), lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8,
                      weight_decay=0.01)
        odd = [torch.empty(1 + 768 * 768, dtype=dtype, **meta)[1:]]
        _adamw_triton(odd, odd, odd, odd, [1.0], lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
        # QLoRA: GPT-2 small's largest block weight (c_fc, 768 x 3072) dequantised to fp32 / bf16; 8-bit AdamW over it
        numel = 768 * 3072
        weight = NF4Weight(torch.empty(numel // 2, dtype=torch.uint8, **meta), torch.empty(numel // 64, dtype=torch.int8, **meta),
                           torch.empty(-(-numel // 64 // 256), **meta), torch.empty((), **meta), (768, 3072))
        _dequantize_triton(weight, dtype)
        p = torch.empty(768, 3072, dtype=dtype, **meta)
        state = {"exp_avg": torch.empty(768, 3072, dtype=torch.uint8, **meta), "exp_avg_absmax": torch.empty(numel // 2048, **meta)}
        state |= {"exp_avg_sq": state["exp_avg"], "exp_avg_sq_absmax": state["exp_avg_absmax"]}
        _adamw8bit_triton(p, p, state, step=1, lr=1e-4, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)


def _jit_kernels() -> dict:
    """Every `@triton.jit` function named `*_kernel` in minift.kernels (the launched ones; helpers are inlined)."""
    import triton

    import minift.kernels

    found = {}
    for info in pkgutil.iter_modules(minift.kernels.__path__):
        module = importlib.import_module(f"minift.kernels.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
                found[f"{info.name}.{name}"] = value
    return found


def _resources(cubin: bytes) -> dict:
    """REG, STACK, LOCAL (spilled bytes) and SHARED of a cubin's one function, from cuobjdump -res-usage."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    line = out.split("Function", 1)[1].splitlines()[1]
    return {key.lower(): int(value) for key, value in re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", line)}


def compile_all() -> dict:
    """Compile every distinct recorded launch for every target; return the rows of the table."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernels = _jit_kernels()
    launches = _record_launches(kernels)
    _launch_every_kernel()
    rows, seen = [], set()
    for target_name, (arch, shared_limit) in TARGETS.items():
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        for name, grid, args, kwargs in launches:
            kernel = kernels[name]
            # Triton's own binder: the dtypes and the specialisations (ints equal to 1, multiples of 16,
            # 16-byte-aligned pointers) that a launch with these arguments gets on a GPU.
            binder = create_function_from_signature(kernel.signature, kernel.params, backend)
            bound, specialization, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
            key = (target_name, name, repr(signature), repr(constexprs), repr(attrs), options.num_warps)
            if key in seen:
                continue
            seen.add(key)
            compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
            usage = _resources(compiled.asm["cubin"])
            rows.append(dict(target=target_name, kernel=name, grid=list(grid), num_warps=options.num_warps,
                             signature=" ".join(f"{k}:{v}" for k, v in signature.items() if v != "constexpr"),
                             constexprs=" ".join(f"{kernel.arg_names[i[0]]}={v}" for i, v in constexprs.items()),
                             registers=usage["reg"], spilled=usage["local"] + usage["stack"],
                             shared=compiled.metadata.shared, shared_limit=shared_limit))
    return {"triton": triton.__version__, "kernels": sorted(kernels), "rows": rows}


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    from fresh_process import run_in_fresh_process

    return run_in_fresh_process(__file__, "compile_all")


@pytest.mark.slow  # ~20 compilations, in a fresh process
def test_every_kernel_is_compiled_for_every_target(compiled):
    covered = {(row["target"], row["kernel"]) for row in compiled["rows"]}
    assert compiled["kernels"], "no Triton kernels found"
    assert covered == {(t, k) for t in TARGETS for k in compiled["kernels"]}


@pytest.mark.slow
def test_no_spills_registers_and_shared_memory_within_budget(compiled):
    for row in compiled["rows"]:
        what = f"{row['kernel']} for {row['target']} ({row['num_warps']} warps, {row['constexprs']}, {row['signature']})"
        assert row["spilled"] == 0, f"{what} spills {row['spilled']} bytes"
        assert row["registers"] <= MAX_REGISTERS, f"{what} needs {row['registers']} registers a thread"
        assert row["shared"] <= row["shared_limit"], f"{what} needs {row['shared']} bytes of shared memory"


@pytest.mark.slow
def test_the_launches_cover_the_cases_the_cuda_path_makes(compiled):
    rows = [r for r in compiled["rows"] if r["target"] == "sm_90"]
    cross_entropy = {(r["signature"].split()[0], r["constexprs"]) for r in rows if r["kernel"].endswith("_cross_entropy_kernel")}
    assert cross_entropy >= {("logits_ptr:*fp32", "stride_labels=1 BLOCK_V=16384"), ("logits_ptr:*bf16", "stride_labels=1 BLOCK_V=16384")}
    adamw = {r["constexprs"] for r in rows if r["kernel"].endswith("_adamw_kernel")}
    for dtype in ("fp32", "bf16"):
        for aligned in (True, False):
            assert f"DTYPE={dtype} ALIGNED={aligned} BLOCK_SIZE=1024" in adamw


if __name__ == "__main__":
    result = compile_all()
    print(f"triton {result['triton']}")
    for row in result["rows"]:
        print(f"{row['target']}  {row['kernel']:<44} warps {row['num_warps']:>2}  regs {row['registers']:>3}  "
              f"spilled {row['spilled']}  shared {row['shared']:>6}  {row['constexprs']}")
