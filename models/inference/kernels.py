"""Compiled (numba) kernels of the integer runtimes: LIF, requantization, event-driven conv. numpy only, no torch.

The torch runtime (:mod:`models.inference.runtime`) calls the batch-major ones (its integer Detect head
:func:`requant_kernel`), the torch-free one (:mod:`models.inference.numpy_runtime`) the channel-last ones (its Detect
head :func:`im2col_cl_kernel`, :func:`depthwise_cl_kernel` and :func:`requant_cl_kernel`), on numpy arrays; they
release the GIL. The integer arithmetic is described in :mod:`models.inference.export`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@njit(cache=True, nogil=True)
def lif_kernel(x: np.ndarray, mult: np.ndarray, bias: np.ndarray, shift: np.ndarray, codes: np.ndarray,
                spikes: np.ndarray, one: int, leak_shift: int, low: int, high: int, half: int, step_shift: int,
                hard: bool) -> None:  # pragma: no cover - compiled
    # x [T, B, C, P] (float32 accumulators or int64 Q(F) currents); codes [B, C, P] int8, updated in place;
    # spikes [T, B, C, P] float32 out. Branch-free inner loop over positions, so LLVM vectorizes it.
    steps, batch, channels, positions = x.shape
    level = np.empty(positions, dtype=np.int64)
    for b in range(batch):
        for c in range(channels):
            m, r, s = mult[c], bias[c], shift[c]
            for p in range(positions):
                level[p] = codes[b, c, p]
            for t in range(steps):
                _lif_step(x[t, b, c], spikes[t, b, c], level, m, r, s, one, leak_shift, low, high, half, step_shift,
                          hard)
            for p in range(positions):
                codes[b, c, p] = level[p]

@njit(cache=True, nogil=True, inline="always")
def _lif_step(xt: np.ndarray, st: np.ndarray, level: np.ndarray, m: int, r: int, s: int, one: int, leak_shift: int,
              low: int, high: int, half: int, step_shift: int, hard: bool) -> None:  # pragma: no cover - compiled
    # one time step of one channel's neurons: xt [P] input, st [P] spikes out, level [P] int64 codes updated in place
    for p in range(xt.shape[0]):
        u = (np.int64(xt[p]) * m + r) >> s
        if leak_shift >= 0:
            u += level[p] << leak_shift
        fired = u > one
        st[p] = np.float32(fired)
        if not hard:
            u -= one * fired
        code = (min(max(u, low), high) + half) >> step_shift
        level[p] = 0 if (hard and fired) else code


@njit(cache=True, nogil=True)
def scatter_conv_kernel(x: np.ndarray, weight: np.ndarray, stride: int, padding: int,
                         out: np.ndarray) -> None:  # pragma: no cover - compiled
    # Event-driven conv for sparse integer input: x [N, Cin, H, W] float32, weight [Cout, Cin, k, k] float32
    # (integer codes), out [N, Cout, h, w] float32 zeroed by the caller; each non-zero input adds its weights to the
    # outputs it reaches. Same integers as the GEMM (exact below 2^24).
    for n in range(x.shape[0]):
        for ci in range(x.shape[1]):
            for y in range(x.shape[2]):
                for xx in range(x.shape[3]):
                    if x[n, ci, y, xx] != 0:
                        _scatter_input(x[n, ci, y, xx], n, ci, y, xx, weight, stride, padding, out)


@njit(cache=True, nogil=True)
def scatter_bytes_kernel(x: np.ndarray, weight: np.ndarray, stride: int, padding: int,
                          out: np.ndarray) -> None:  # pragma: no cover - compiled
    # scatter_conv_kernel for uint8 counts x [N, Cin, H, W] (contiguous, size a multiple of 8): the scan for
    # non-zero inputs, which dominates at event densities (< 1 %), reads 8 counts per uint64 word.
    channels, rows, cols = x.shape[1], x.shape[2], x.shape[3]
    flat = x.ravel()
    words = flat.view(np.uint64)
    for i in range(words.size):
        if words[i] == 0:
            continue
        for j in range(8 * i, 8 * i + 8):
            if flat[j] == 0:
                continue
            xx, r = j % cols, j // cols
            y, r = r % rows, r // rows
            ci, n = r % channels, r // channels
            _scatter_input(np.float32(flat[j]), n, ci, y, xx, weight, stride, padding, out)


@njit(cache=True, nogil=True, inline="always")
def _scatter_input(v: float, n: int, ci: int, y: int, xx: int, weight: np.ndarray, stride: int, padding: int,
                   out: np.ndarray) -> None:  # pragma: no cover - compiled
    # one non-zero input x[n, ci, y, xx] = v adds v × its weights to every output it reaches
    cout, k = weight.shape[0], weight.shape[2]
    height, width = out.shape[2], out.shape[3]
    for ky in range(k):
        oy = y + padding - ky
        if oy < 0 or oy % stride or oy // stride >= height:
            continue
        for kx in range(k):
            ox = xx + padding - kx
            if ox < 0 or ox % stride or ox // stride >= width:
                continue
            for co in range(cout):
                out[n, co, oy // stride, ox // stride] += v * weight[co, ci, ky, kx]


@njit(cache=True, nogil=True)
def map_kernel(x: np.ndarray, mult: np.ndarray, bias: np.ndarray, shift: np.ndarray,
                out: np.ndarray) -> None:  # pragma: no cover - compiled
    # x [N, C, P] float32 accumulators → out [N, C, P] int64 Q(F) currents
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            m, r, s = mult[c], bias[c], shift[c]
            xc, oc = x[n, c], out[n, c]
            for p in range(x.shape[2]):
                oc[p] = (np.int64(xc[p]) * m + r) >> s


@njit(cache=True, nogil=True)
def requant_kernel(acc: np.ndarray, multiplier: np.ndarray, bias: np.ndarray, shift: np.ndarray, table: np.ndarray,
                   luts: np.ndarray, top: int, out: np.ndarray) -> None:  # pragma: no cover - compiled
    # acc [N, C, P] float32 integer accumulators → out [N, C, P] float32 activation codes: channel c's
    # pre-activation code z = clamp((acc·M + R) >> s, -top, top) (rounded half up: R holds the half), and its output
    # code luts[table[c], z + top]
    for n in range(acc.shape[0]):
        for c in range(acc.shape[1]):
            m, r, s, lut = multiplier[c], bias[c], shift[c], luts[table[c]]
            a, o = acc[n, c], out[n, c]
            for p in range(acc.shape[2]):
                z = (np.int64(a[p]) * m + r) >> s
                o[p] = lut[min(max(z, -top), top) + top]


# ----------------------------------------------------------------------------- kernels of the torch-free runtime
# Its activations are channel-last, [N, h, w, A] with the channels padded to A, a multiple of LANES (zeros there):
# a pixel's uint8 spikes are whole uint64 words, its accumulators whole vectors of the event-driven convs' adds.

LANES = 8  # channel padding; float32 lanes of one vector add (an AVX2 register)


@intrinsic
def _add_lanes(typingctx: Any, out: Any, out_index: Any, src: Any, src_index: Any,
               scale: Any) -> tuple[Any, Any]:  # pragma: no cover - compiled
    # out[out_index : out_index + LANES] += scale · src[src_index : ...] on 1-D float32 arrays, as one LANES-wide
    # vector operation: LLVM's loop vectorizer cannot see that so short a loop does not alias, and numba turns its SLP
    # vectorizer off (numba#8705), so a plain loop runs scalar or through runtime alias checks.
    sig = types.none(out, out_index, src, src_index, scale)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        vector = ir.VectorType(ir.FloatType(), LANES)
        pointers = []
        for array_type, array, index in ((signature.args[0], args[0], args[1]), (signature.args[2], args[2], args[3])):
            data = context.make_array(array_type)(context, builder, array).data
            pointers.append(builder.bitcast(builder.gep(data, [index]), vector.as_pointer()))
        factor = context.cast(builder, args[4], signature.args[4], types.float32)
        splat = builder.insert_element(ir.Constant(vector, ir.Undefined), factor, ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(splat, ir.Constant(vector, ir.Undefined), ir.Constant(
            ir.VectorType(ir.IntType(32), LANES), [0] * LANES))
        total = builder.fadd(builder.load(pointers[0], align=4),
                             builder.fmul(builder.load(pointers[1], align=4), splat))
        builder.store(total, pointers[0], align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _trailing_zeros(typingctx: Any, word: Any) -> tuple[Any, Any]:  # pragma: no cover - compiled
    # the index of the lowest set bit of a non-zero uint64 (one instruction: llvm.cttz)
    sig = types.int64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        cttz = builder.module.declare_intrinsic("llvm.cttz", [i64], ir.FunctionType(i64, [i64, ir.IntType(1)]))
        return builder.call(cttz, [args[0], ir.Constant(ir.IntType(1), 1)])

    return sig, codegen


@njit(cache=True, nogil=True)
def _taps(size: int, out_size: int, k: int, stride: int, padding: int) -> np.ndarray:  # pragma: no cover - compiled
    # [size, k] int64: the output coordinate that input coordinate i reaches through kernel tap j, or -1 (no division
    # left in the convs' inner loops)
    taps = np.full((size, k), -1, dtype=np.int64)
    for i in range(size):
        for j in range(k):
            o = i + padding - j
            if o >= 0 and o % stride == 0 and o // stride < out_size:
                taps[i, j] = o // stride
    return taps


@njit(cache=True, nogil=True, inline="always")
def _scatter(value: float, n: int, ci: int, y: int, xx: int, taps_y: np.ndarray, taps_x: np.ndarray,
             weight: np.ndarray, out: np.ndarray, height: int, width: int,
             padded: int) -> None:  # pragma: no cover - compiled
    # one non-zero input (n, ci, y, xx) adds value × its weights to every output it reaches; weight and out are the
    # flat [Cin, k, k, A] and [N, h, w, A] arrays, A = padded (a multiple of LANES)
    k = taps_y.shape[1]
    for ky in range(k):
        oy = taps_y[y, ky]
        if oy < 0:
            continue
        for kx in range(k):
            ox = taps_x[xx, kx]
            if ox < 0:
                continue
            o = ((n * height + oy) * width + ox) * padded
            w = ((ci * k + ky) * k + kx) * padded
            for v in range(0, padded, LANES):
                _add_lanes(out, o + v, weight, w + v, value)


@njit(cache=True, nogil=True)
def conv_spikes_kernel(x: np.ndarray, weight: np.ndarray, stride: int, padding: int,
                       out: np.ndarray) -> None:  # pragma: no cover - compiled
    # Event-driven conv of channel-last 0/1 spikes x [N, H, W, S] uint8 (contiguous, S a multiple of 8): weight
    # [S, k, k, A] float32 codes (A a multiple of LANES), out [N, h, w, A] float32 zeroed by the caller. A pixel's
    # channels are read 8 per uint64 word and each spike found by its bit, then its weight vectors are added where
    # it lands: work ∝ spikes. The same integers as the GEMM (exact below 2^24).
    batch, rows, cols, channels = x.shape
    k, padded = weight.shape[1], weight.shape[3]
    height, width = out.shape[1], out.shape[2]
    taps_y, taps_x = _taps(rows, height, k, stride, padding), _taps(cols, width, k, stride, padding)
    words = x.reshape(-1).view(np.uint64)
    per_pixel = channels // 8
    flat_weight, flat_out = weight.reshape(-1), out.reshape(-1)
    for n in range(batch):
        for y in range(rows):
            for xx in range(cols):
                first = ((n * rows + y) * cols + xx) * per_pixel
                for i in range(per_pixel):
                    word = words[first + i]
                    while word:
                        ci = 8 * i + (_trailing_zeros(word) >> 3)  # a spike is a 1 byte: its set bit is bit 8·j
                        word &= word - np.uint64(1)
                        _scatter(1.0, n, ci, y, xx, taps_y, taps_x, flat_weight, flat_out, height, width, padded)


@njit(cache=True, nogil=True)
def conv_counts_kernel(x: np.ndarray, weight: np.ndarray, stride: int, padding: int,
                       out: np.ndarray) -> None:  # pragma: no cover - compiled
    # Event-driven conv of sparse uint8 counts x [N, Cin, H, W] (the histogram's layout, contiguous, size a multiple
    # of 8) into a channel-last out [N, h, w, A] float32 zeroed by the caller; weight [Cin, k, k, A] float32 codes.
    # The scan, which dominates at event densities (< 1 %), tests 8 counts per uint64 word.
    channels, rows, cols = x.shape[1:]
    k, padded = weight.shape[1], weight.shape[3]
    height, width = out.shape[1], out.shape[2]
    taps_y, taps_x = _taps(rows, height, k, stride, padding), _taps(cols, width, k, stride, padding)
    flat = x.reshape(-1)
    words = flat.view(np.uint64)
    flat_weight, flat_out = weight.reshape(-1), out.reshape(-1)
    for i in range(words.size):
        word = words[i]
        while word:
            j = 8 * i + (_trailing_zeros(word) >> 3)
            word &= ~(np.uint64(0xFF) << np.uint64(8 * (j - 8 * i)))  # this count done: clear its byte
            xx, r = j % cols, j // cols
            y, r = r % rows, r // rows
            _scatter(np.float32(flat[j]), r // channels, r % channels, y, xx, taps_y, taps_x, flat_weight, flat_out,
                     height, width, padded)


@njit(cache=True, nogil=True)
def im2col_cl_kernel(x: np.ndarray, k: int, stride: int, padding: int,
                     cols: np.ndarray) -> None:  # pragma: no cover - compiled
    # x [N, H, W, C] (uint8 spikes or counts) → cols [N·h·w, k·k·C] float32, zero where the window leaves the input:
    # the GEMM operand of a conv in the channel-last layout (row (n, y, x), column (ky, kx, c)).
    batch, rows, width, channels = x.shape
    out_h = (rows + 2 * padding - k) // stride + 1
    out_w = (width + 2 * padding - k) // stride + 1
    r = 0
    for n in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                row = cols[r]
                for ky in range(k):
                    iy = oy * stride + ky - padding
                    for kx in range(k):
                        ix = ox * stride + kx - padding
                        dst = row[(ky * k + kx) * channels:(ky * k + kx + 1) * channels]
                        if iy < 0 or iy >= rows or ix < 0 or ix >= width:
                            dst[:] = 0.0
                        else:
                            src = x[n, iy, ix]
                            for c in range(channels):
                                dst[c] = np.float32(src[c])
                r += 1


@njit(cache=True, nogil=True)
def lif_cl_kernel(x: np.ndarray, mult: np.ndarray, bias: np.ndarray, shift: np.ndarray, codes: np.ndarray,
                  spikes: np.ndarray, one: int, leak_shift: int, low: int, high: int, half: int, step_shift: int,
                  hard: bool) -> None:  # pragma: no cover - compiled
    # lif_kernel in the channel-last layout: x [T, B, P·A] (a frame's pixels of A padded channels: float32
    # accumulators or int64 Q(F) currents); mult, bias, shift [L] int64: the C per-channel constants padded with
    # zeros to A and repeated over L/A pixels; codes [B, C, P] int8 (the state's layout), updated in place; spikes
    # [T, B, P·A] uint8 out (0 in the padding, whose constants give a current of 0). The same integers. The
    # membranes of L/A pixels at a time stay in a local array over the T steps, and its loop is one long
    # branch-free run (it vectorizes, whatever the channel count).
    steps, batch, size = x.shape
    channels, positions = codes.shape[1], codes.shape[2]
    padded, block = size // positions, mult.shape[0]
    level = np.empty(block, dtype=np.int64)
    for b in range(batch):
        for start in range(0, size, block):
            n, first = min(block, size - start), start // padded
            level[:] = 0
            for c in range(channels):
                for p in range(n // padded):
                    level[p * padded + c] = codes[b, c, first + p]
            for t in range(steps):
                xt, st = x[t, b, start:start + n], spikes[t, b, start:start + n]
                for j in range(n):
                    u = (np.int64(xt[j]) * mult[j] + bias[j]) >> shift[j]
                    if leak_shift >= 0:
                        u += level[j] << leak_shift
                    fired = u > one
                    st[j] = fired
                    if not hard:
                        u -= one * fired
                    code = (min(max(u, low), high) + half) >> step_shift
                    level[j] = 0 if (hard and fired) else code
            for c in range(channels):
                for p in range(n // padded):
                    codes[b, c, first + p] = level[p * padded + c]


@njit(cache=True, nogil=True)
def map_cl_kernel(x: np.ndarray, mult: np.ndarray, bias: np.ndarray, shift: np.ndarray,
                  out: np.ndarray) -> None:  # pragma: no cover - compiled
    # channel-last x [N, A] float32 accumulators → out [N, A] int64 Q(F) currents of the first C = len(mult)
    # channels, zero in the padding channels
    channels = mult.shape[0]
    for n in range(x.shape[0]):
        xn, on = x[n], out[n]
        for c in range(channels):
            on[c] = (np.int64(xn[c]) * mult[c] + bias[c]) >> shift[c]
        on[channels:] = 0


# ------------------------------------------------------------------------- kernels of the torch-free Detect head
# Its activations are channel-last too, [P, C] rows of positions (b, y, x), unpadded; its GEMMs are BLAS's.


@njit(cache=True, nogil=True)
def depthwise_cl_kernel(x: np.ndarray, weight: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    # depthwise 3×3 conv, stride 1, padding 1, of channel-last x [B, h, w, C] (any strides: a column slice of a wider
    # activation): weight [9, C] float32, taps (ky, kx) row-major; out [B, h, w, C] float32. Taps summed in order.
    batch, rows, cols, channels = x.shape
    for b in range(batch):
        for y in range(rows):
            for xx in range(cols):
                o = out[b, y, xx]
                o[:] = 0.0
                for ky in range(3):
                    iy = y + ky - 1
                    if iy < 0 or iy >= rows:
                        continue
                    for kx in range(3):
                        ix = xx + kx - 1
                        if ix < 0 or ix >= cols:
                            continue
                        src, w = x[b, iy, ix], weight[ky * 3 + kx]
                        for c in range(channels):
                            o[c] += src[c] * w[c]


@njit(cache=True, nogil=True)
def requant_cl_kernel(acc: np.ndarray, multiplier: np.ndarray, bias: np.ndarray, shift: np.ndarray,
                      table: np.ndarray, luts: np.ndarray, top: int, out: np.ndarray) -> None:  # pragma: no cover
    # requant_kernel in the channel-last layout: acc [P, C] float32 integer accumulators (any strides) → out [P, C]
    # float32 codes (may be acc itself: each value is read before it is written)
    for p in range(acc.shape[0]):
        a, o = acc[p], out[p]
        for c in range(acc.shape[1]):
            z = (np.int64(a[c]) * multiplier[c] + bias[c]) >> shift[c]
            o[c] = luts[table[c], min(max(z, -top), top) + top]
