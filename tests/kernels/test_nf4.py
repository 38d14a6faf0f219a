"""NF4 (minift.kernels.nf4): the codes against their derivation and the paper, the round trip, the Triton
kernel against the PyTorch reference (in Triton's interpreter on CPU, tests/conftest.py), the linear
layer's gradients, and torchao's NF4Tensor as a peer."""

import pytest
import torch
from kernel_backends import BACKENDS, DEVICE, requires_triton

from minift.kernels.nf4 import (
    BLOCK, NF4_CODES, SCALE_BLOCK, dequantize_launch_config, dequantize_nf4, nf4_linear, nf4_nbytes,
    normal_float_codes, quantize_nf4,
)

# The NF4 values printed in the QLoRA paper's appendix (bitsandbytes' create_normal_map), to 16 digits.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
# Shapes: GPT-2's c_attn (768 x 2304: 108 full groups of scales), the tiny model's 32 x 96 (48 blocks:
# one partial group), a single block, and 65 blocks (one group plus a scale past it).
SHAPES = [(768, 2304), (96, 32), (BLOCK,), (65, BLOCK)]
# The interpreter is slow: for the kernel, 192 x 768 (2304 blocks, 9 groups) stands in for GPT-2's size.
KERNEL_SHAPES = [(192, 768), *SHAPES[1:]]


def _weight(shape, dtype=torch.float32):
    return (torch.randn(shape) * 0.02).to(DEVICE, dtype)  # GPT-2's init scale


def test_codes_are_the_derivation_and_the_published_values():
    # The published values come from float32 probabilities (bitsandbytes' torch.linspace) and a rounded
    # offset (0.9677083); ours from float64 and the exact delta: ~1e-7 apart, a few fp32 ulps of 1.
    torch.testing.assert_close(NF4_CODES, torch.tensor(PUBLISHED_NF4), rtol=0, atol=3e-7)
    assert torch.equal(NF4_CODES, normal_float_codes(4))
    assert (NF4_CODES == 0).sum() == 1 and NF4_CODES[7] == 0  # an exact zero: 7 negative, 8 positive levels
    assert NF4_CODES.min() == -1 and NF4_CODES.max() == 1 and (NF4_CODES.diff() > 0).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_error_is_within_half_a_code_gap(shape):
    """|w - w'| <= (half the widest gap between neighbouring codes) * block absmax, plus the scale's
    double-quantisation error, over |code| <= 1: half an int8 step, absmax_g |s - mu| / 256, except for the
    group's largest positive scale, which lands on 128 and is clamped to 127: a whole step, absmax_g / 128."""
    w = _weight(shape)
    q = quantize_nf4(w)
    back = dequantize_nf4(q, backend="torch")
    assert back.shape == w.shape and back.dtype == torch.float32
    blocks = w.reshape(-1, BLOCK)
    absmax = blocks.abs().amax(1)
    dq_step = (absmax - absmax.mean()).abs().max() / 128
    bound = NF4_CODES.diff().max() / 2 * absmax[:, None] + dq_step + 1e-7
    assert ((back.reshape(-1, BLOCK) - blocks).abs() <= bound).all()
    # the block's absmax itself maps to code +-1, so it comes back up to the scale's error only
    top = blocks.abs().argmax(1)
    rows = torch.arange(blocks.shape[0])
    assert ((back.reshape(-1, BLOCK)[rows, top].abs() - absmax).abs() <= dq_step + 1e-7).all()


def test_packing_layout_and_sizes():
    w = torch.tensor([NF4_CODES[3].item(), NF4_CODES[12].item()] * (BLOCK // 2))  # absmax 1: codes exactly
    w[-1] = 1.0  # code 15
    q = quantize_nf4(w)
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == BLOCK // 2
    assert q.packed[0] == (3 << 4 | 12) and q.packed[-1] == (3 << 4 | 15)  # first element in the high nibble
    big = quantize_nf4(_weight((768, 2304)))
    assert big.nbytes == nf4_nbytes(768 * 2304) == 768 * 2304 // 2 + 27648 + 4 * 108 + 4
    # 4 + 8/64 + 32/(64 * 256) = 4.1270 bits, plus one fp32 mean per tensor
    assert big.bits_per_parameter == pytest.approx(4 + 8 / 64 + 32 / (BLOCK * SCALE_BLOCK) + 32 / (768 * 2304))


def test_zero_block_and_bad_input():
    w = torch.zeros(2 * BLOCK)
    w[BLOCK:] = torch.randn(BLOCK)
    back = dequantize_nf4(quantize_nf4(w), backend="torch")
    assert torch.equal(back[:BLOCK], torch.zeros(BLOCK))  # index 7 is exactly 0, whatever the scale
    with pytest.raises(ValueError, match=r"multiple of 64.*\(3, 7\)"):
        quantize_nf4(torch.randn(3, 7))
    with pytest.raises(ValueError, match="floating-point"):
        quantize_nf4(torch.ones(BLOCK, dtype=torch.int32))


@requires_triton
@pytest.mark.parametrize("shape", KERNEL_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_matches_reference(shape, dtype):
    """The kernel's math is the reference's op for op (div_rn, one multiply), so fp32 is bit for bit.
    bf16/fp16: both round the same fp32 value once; Triton's interpreter truncates to bf16 where torch
    rounds to nearest, so bf16 may differ by one ulp (2**-7 relative)."""
    q = quantize_nf4(_weight(shape))
    ref = dequantize_nf4(q, dtype, backend="torch")
    out = dequantize_nf4(q, dtype, backend="triton")
    assert out.dtype == dtype and out.shape == ref.shape
    if dtype == torch.bfloat16:
        torch.testing.assert_close(out, ref, rtol=2**-7, atol=0)
    else:
        assert torch.equal(out, ref)


def test_launch_config_covers_every_byte():
    for numel in (BLOCK, 768 * 2304, 1024 * 4096 + BLOCK):
        config = dequantize_launch_config(numel)
        assert config["grid"][0] * config["BLOCK_BYTES"] >= numel // 2 > (config["grid"][0] - 1) * config["BLOCK_BYTES"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_forward_and_input_gradient(backend):
    """Against F.linear on the dequantised weight: same forward, same dL/dx, and no weight gradient."""
    w = _weight((96, 64))
    q = quantize_nf4(w)
    dense = dequantize_nf4(q, backend="torch").requires_grad_()
    bias = torch.randn(96, device=DEVICE)
    x = torch.randn(3, 5, 64, device=DEVICE, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y = nf4_linear(x, q, bias, backend=backend)
    y_ref = torch.nn.functional.linear(x_ref, dense, bias)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)  # the same fp32 weight, the same matmul
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=0)
    assert all(t.grad is None for t in (q.packed, q.scales, q.factors, q.mean))


def test_matches_torchao_nf4tensor():
    """torchao's NF4Tensor (the test extra's peer) runs the same algorithm with its codes rounded to 4
    decimals (-0.0911 for -0.091050: 5.0e-5 off at most). So the double-quantised scales agree bit for bit;
    code indices agree except where w / absmax lies within that rounding of a midpoint between two codes;
    where indices agree the dequantised values differ by at most (code rounding) * |scale| plus an fp32 ulp."""
    nf4_tensor = pytest.importorskip("torchao.quantization.quantize_.workflows.nf4.nf4_tensor")
    w = _weight((768, 2304)).cpu()
    ours, theirs = quantize_nf4(w), nf4_tensor.to_nf4(w, BLOCK, SCALE_BLOCK)
    assert torch.equal(ours.scales, theirs.quantized_scalers)
    assert torch.equal(ours.factors, theirs.quantization_factor)
    assert torch.equal(ours.mean, theirs.scaler_mean)
    rounding = (theirs.nf4 - NF4_CODES).abs().max().item()
    assert rounding <= 5.1e-5

    def unpack(packed):
        return torch.stack([packed >> 4, packed & 15], 1).flatten().long()

    index, their_index = unpack(ours.packed), unpack(theirs.quantized_data)
    scaled = (w.reshape(-1, BLOCK) / w.reshape(-1, BLOCK).abs().amax(1, keepdim=True)).flatten()
    midpoints = (NF4_CODES[1:] + NF4_CODES[:-1]) / 2
    near_midpoint = (scaled[:, None] - midpoints).abs().amin(1) < rounding
    differ = index != their_index
    assert differ.any() and not (differ & ~near_midpoint).any()  # a few ties, and only ties
    back, their_back = dequantize_nf4(ours, backend="torch").flatten(), theirs.get_original_weight().flatten()
    scale = back.reshape(-1, BLOCK).abs().amax(1).repeat_interleave(BLOCK)
    assert ((back - their_back).abs()[~differ] <= rounding * scale[~differ] + 1e-9).all()


def test_matches_bitsandbytes_nf4():
    """bitsandbytes (the test extra's second peer, 0.50 runs its 4-bit ops on CPU) quantises the same
    way: its NF4 table equals ours to fp32 rounding, the code indices and their packing (first element in
    the high nibble) are identical. Its double quantisation differs (an 8-bit dynamic map over the
    centred scales, ours linear int8 as torchao), so the dequantised weights differ by at most the two
    scale errors: ours <= absmax_g / 128 (test_round_trip...), its <= 0.00703 absmax_g (the largest
    half-gap of the signed dynamic map), over |code| <= 1."""
    functional = pytest.importorskip("bitsandbytes.functional")
    w = _weight((512, 256)).cpu()
    packed, state = functional.quantize_4bit(w, blocksize=BLOCK, quant_type="nf4", compress_statistics=True)
    ours = quantize_nf4(w)
    torch.testing.assert_close(state.code.float(), NF4_CODES, rtol=0, atol=3e-7)
    assert torch.equal(packed.flatten(), ours.packed)
    absmax = w.reshape(-1, BLOCK).abs().amax(1)
    group = (absmax - absmax.mean()).abs().max()
    difference = (functional.dequantize_4bit(packed, state) - dequantize_nf4(ours)).abs()
    assert (difference <= group * (1 / 128 + 0.00703) + 1e-7).all()
