"""Compiled (numba) kernels of the integer runtimes: LIF, requantization, event-driven conv. numpy only, no torch.

Both the torch runtime (:mod:`models.inference.runtime`) and the torch-free one
(:mod:`models.inference.numpy_runtime`) call these on numpy arrays; they release the GIL. The integer arithmetic is
described in :mod:`models.inference.export`.
"""

from __future__ import annotations

import numpy as np
from numba import njit


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


# ------------------------------------------------------------------- channel-major kernels of the torch-free runtime


@njit(cache=True, nogil=True)
def lif_cm_kernel(x: np.ndarray, mult: np.ndarray, bias: np.ndarray, shift: np.ndarray, codes: np.ndarray,
                  spikes: np.ndarray, one: int, leak_shift: int, low: int, high: int, half: int, step_shift: int,
                  hard: bool) -> None:  # pragma: no cover - compiled
    # lif_kernel in the channel-major layout: x [C, T, B, P] (float32 accumulators or int64 Q(F) currents); codes
    # [B, C, P] int8 (the state's layout), updated in place; spikes [C, T, B, P] float32 out. Same integers.
    channels, steps, batch, positions = x.shape
    level = np.empty(positions, dtype=np.int64)
    for c in range(channels):
        m, r, s = mult[c], bias[c], shift[c]
        for b in range(batch):
            for p in range(positions):
                level[p] = codes[b, c, p]
            for t in range(steps):
                _lif_step(x[c, t, b], spikes[c, t, b], level, m, r, s, one, leak_shift, low, high, half, step_shift,
                          hard)
            for p in range(positions):
                codes[b, c, p] = level[p]


@njit(cache=True, nogil=True)
def im2col_kernel(x: np.ndarray, k: int, stride: int, padding: int,
                  cols: np.ndarray) -> None:  # pragma: no cover - compiled
    # x [C, N, H, W] (float32 spikes or rates, uint8 counts) → cols [C·k·k, N·h·w] float32, zero where the window
    # leaves the input: the GEMM operand of a conv in the channel-major layout (row (c, ky, kx), column (n, y, x)).
    # The valid output columns of each tap are computed once, so the copy loop has no branch (it vectorizes).
    channels, batch, rows, width = x.shape
    out_h = (rows + 2 * padding - k) // stride + 1
    out_w = (width + 2 * padding - k) // stride + 1
    for kx in range(k):
        # output columns ox with 0 <= ox·stride + kx - padding < width
        lo = max(0, -((kx - padding) // stride))
        hi = min(out_w, (width - 1 - kx + padding) // stride + 1)
        for c in range(channels):
            for ky in range(k):
                row = cols[(c * k + ky) * k + kx]
                for n in range(batch):
                    for oy in range(out_h):
                        iy = oy * stride + ky - padding
                        out = row[(n * out_h + oy) * out_w:(n * out_h + oy + 1) * out_w]
                        if iy < 0 or iy >= rows:
                            out[:] = 0.0
                            continue
                        src = x[c, n, iy]
                        out[:lo] = 0.0
                        out[hi:] = 0.0
                        offset = kx - padding
                        for ox in range(lo, hi):
                            out[ox] = np.float32(src[ox * stride + offset])


@njit(cache=True, nogil=True)
def scatter_bytes_cm_kernel(x: np.ndarray, weight: np.ndarray, stride: int, padding: int,
                            out: np.ndarray) -> None:  # pragma: no cover - compiled
    # scatter_bytes_kernel with a channel-major output: x [N, Cin, H, W] uint8 counts (contiguous, size a multiple of
    # 8), weight [Cin, k, k, Cout] float32 (integer codes, Cout innermost), out [Cout, N, h, w] float32 zeroed by the
    # caller. Each non-zero count adds count × its weights to the outputs it reaches; 8 counts tested per word.
    channels, rows, cols = x.shape[1], x.shape[2], x.shape[3]
    cout, k = weight.shape[3], weight.shape[1]
    height, width = out.shape[2], out.shape[3]
    flat = x.ravel()
    words = flat.view(np.uint64)
    for i in range(words.size):
        if words[i] == 0:
            continue
        for j in range(8 * i, 8 * i + 8):
            if flat[j] == 0:
                continue
            v = np.float32(flat[j])
            xx, r = j % cols, j // cols
            y, r = r % rows, r // rows
            ci, n = r % channels, r // channels
            for ky in range(k):
                oy = y + padding - ky
                if oy < 0 or oy % stride or oy // stride >= height:
                    continue
                for kx in range(k):
                    ox = xx + padding - kx
                    if ox < 0 or ox % stride or ox // stride >= width:
                        continue
                    w = weight[ci, ky, kx]
                    for co in range(cout):
                        out[co, n, oy // stride, ox // stride] += v * w[co]


@njit(cache=True, nogil=True)
def scatter_spikes_kernel(x: np.ndarray, weight: np.ndarray, stride: int, padding: int,
                          out: np.ndarray) -> None:  # pragma: no cover - compiled
    # Event-driven conv of channel-major sparse spikes x [Cin, N, H, W] float32 (0/1): weight [Cin, k, k, Cout]
    # float32 codes, out [N, h, w, Cout] float32 zeroed by the caller (channels innermost, so each spike adds
    # contiguous weight vectors). The same integers as the GEMM (exact below 2^24).
    channels, batch, rows, cols = x.shape
    cout, k = weight.shape[3], weight.shape[1]
    height, width = out.shape[1], out.shape[2]
    for ci in range(channels):
        for n in range(batch):
            for y in range(rows):
                src = x[ci, n, y]
                for xx in range(cols):
                    v = src[xx]
                    if v == 0:
                        continue
                    for ky in range(k):
                        oy = y + padding - ky
                        if oy < 0 or oy % stride or oy // stride >= height:
                            continue
                        for kx in range(k):
                            ox = xx + padding - kx
                            if ox < 0 or ox % stride or ox // stride >= width:
                                continue
                            w, o = weight[ci, ky, kx], out[n, oy // stride, ox // stride]
                            for co in range(cout):
                                o[co] += v * w[co]
