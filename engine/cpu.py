r"""The CPU backend: the FDTD scheme JIT-compiled with numba, the voices spread over the cores.

The equation and its discretisation are those of :mod:`engine.reference` (which has the
derivation; ``shaders/fdtd.wgsl`` is the GPU kernel). Per cell, with ``L`` the 5-point
Laplacian in grid units (the ghost cell outside an edge holds ``b·u_edge``), ``γ = d·Δt`` and
``a = 2/(1+γ)``:

    u⁺ = a·u + (1−a)·u⁻ + (C²s/(1+γ))·Lu + (ηs/(1+γ))·(Lu − Lu⁻) + footprint·kick/(1+γ)

``Lu⁻`` is the previous step's ``Lu``, carried from step to step (at the block start it is the
Laplacian of ``u⁻``; a RESET zeroes it with the field). :class:`CpuFdtd` runs a
:class:`~engine.block.BlockPlan` as :class:`~engine.reference.ReferenceFdtd` does — the
header's record at the block start, each event's record before the first step of its output
sample, bilinear pickups after every step, the same fine-rate pickup layout — and implements
:class:`~engine.block.FdtdBackend` like :class:`~engine.fdtd.GpuFdtd`.

Why numba: a voice is a 64×64 stencil advanced tens of thousands of times a second; numpy pays
about a microsecond of interpreter and temporary-array overhead per operation (the reference
takes ~20 µs a step), while the compiled loop is about half a nanosecond of vector code per
cell. The kernel is plain loops over cells compiled with ``fastmath=False`` (the loops
vectorise without it: they have no reductions), once per dtype from the same source:

* ``np.float32`` — the real-time backend where no GPU is usable; over thousands of steps its
  pickups stay within ~1e-6 (relative L2) of the float64 reference and ~4e-6 of
  :class:`~engine.fdtd.GpuFdtd` (which is ~3e-6 from the reference: the coefficients here are
  computed in float64, then rounded);
* ``np.float64`` — a fast twin of the reference (~5e-15 apart), for training and for tests
  that need many steps. Its pickups come back as float64, like the reference's; float32
  pickups come back as float32, like the GPU's.

How the loop is made fast (each measured on a 2-core x86 machine; the notes at
``_layout`` say more): rows padded to a multiple of one SIMD vector and aligned so no load
straddles a cache line; the boundary in a per-cell coefficient instead of ghost cells that
must be rewritten every step; unsigned indices (numba's negative-index wrap-around stops LLVM
from vectorising); two kick-free steps fused in one sweep over the rows; the force footprint
only in the steps that have a kick; flush-to-zero while a block runs (a wave front spreading
over a silent grid is full of subnormal floats, which made a struck block 3× slower).

Threading: ``prange`` over groups of voices, one group a thread: voices longest first (most
steps), each to the least loaded thread, so that mixed oversampling factors balance. The
number of threads is numba's: ``NUMBA_NUM_THREADS`` (default: the number of cores) or
``numba.set_num_threads(k)`` called on the render thread; this module sets neither. A single
voice runs on one core. The block kernel releases the GIL (``nogil=True``), so the audio
callback, MIDI input and the GUI keep running while the render thread computes a block.

Compilation and the cache: the kernels compile on first use (about 10 s per dtype) with
``cache=True``, which writes the machine code beside this file in ``__pycache__``; later
processes load it in well under a second. Where that directory is read-only (an installed
package), set ``NUMBA_CACHE_DIR`` to a writable directory before numba is imported. Call
:func:`warm_up` at start-up, off the audio thread, so that the first block does not pay for
compiling or loading.

Memory: every array (fields, maps, coefficients, ``Lu⁻``, pickups) is allocated in
``__init__``; :meth:`CpuFdtd.run` only makes views of the plan and calls the kernel, so a
block allocates nothing of grid size.

Public API: ``CpuFdtd``, ``warm_up``.
"""

from __future__ import annotations

import logging
import math
import platform
import time

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .block import RECORD_DTYPE, RECORD_RESET, BlockPlan, check_fields, check_map

__all__ = ["CpuFdtd", "warm_up"]

log = logging.getLogger(__name__)

# Column of each field in the plain views of the plan's structured arrays.
_R_C2, _R_ETA, _R_GPD, _R_GADD, _R_MORPH, _R_B = 0, 1, 2, 3, 4, 5
_R_EX, _R_EY, _R_EK, _R_ENORM, _R_LX, _R_LY, _R_RX, _R_RY = 6, 7, 8, 9, 10, 11, 12, 13
_R_MAPA, _R_MAPB, _R_FLAGS = 14, 15, 16
_H_SLOT, _H_OS, _H_NS, _H_REC, _H_EV0, _H_NEV, _H_OUT, _H_FORCE = 0, 1, 2, 3, 4, 5, 6, 7
_RECORD_WORDS = RECORD_DTYPE.itemsize // 4

# Error codes of the kernel's plan check (code, voice): see CpuFdtd._raise.
_OK = 0
_BAD_SLOT = 1
_BAD_OS = 2
_BAD_RECORD = 3
_BAD_EVENTS = 4
_BAD_FORCE = 5
_BAD_OUT = 6
_BAD_MAP = 7
_DUP_SLOT = 8
_BAD_SAMPLES = 9


# Subnormal floats: the front of a wave spreading over a silent grid carries values that
# fall below 1e-38, and float32 arithmetic on them takes microcode assists on x86 (a block
# with a fresh strike ran 3× slower). Every voice task sets flush-to-zero and
# denormals-are-zero in the thread's MXCSR and restores it after. Values under 1.2e-38
# (float32) or 2.2e-308 (float64) become 0; nothing audible or measurable changes.
_FTZ_DAZ = np.uint32(0x8040)

if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86"):

    @intrinsic
    def _get_fp_mode(typingctx):
        def codegen(context, builder, signature, args):
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            fnty = ir.FunctionType(ir.VoidType(), [slot.type])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.stmxcsr")
            builder.call(fn, [slot])
            return builder.load(slot)

        return types.uint32(), codegen

    @intrinsic
    def _set_fp_mode(typingctx, value):
        def codegen(context, builder, signature, args):
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], slot)
            fnty = ir.FunctionType(ir.VoidType(), [slot.type])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.ldmxcsr")
            builder.call(fn, [slot])
            return context.get_dummy_value()

        return types.void(types.uint32), codegen

else:  # other processors keep their default floating-point mode

    @njit(cache=True)
    def _get_fp_mode():
        return np.uint32(0)

    @njit(cache=True)
    def _set_fp_mode(value):
        pass


# Layout of the per-voice arrays (fields, coefficients, Lu⁻): the N×N grid inside a border of
# zeros, rows ``pitch`` values apart, cell (i, j) at ``base + i·pitch + j``. The pitch is a
# multiple of one SIMD vector (32 bytes) and every array starts 64-byte aligned, so each row's
# N cells start on a vector boundary and no load straddles a cache line (25 % faster than a
# dense N+2 pitch). The values around and between the rows are never written: they stay 0.
#
# The boundary goes into a per-cell coefficient instead of ghost cells (writing ghost cells
# before every step cost 15 %): with zeros around the grid the 5-point sum misses
# ``m·b·u`` on a cell with ``m`` neighbours outside (1 on an edge, 2 in a corner, else 0), so
# ``Lu = L'u + mb·u`` with ``mb = m·b`` stored per cell. (Folding ``mb`` into the update's
# coefficients instead saves one multiply-add but breaks the exact cancellation that keeps a
# free, undamped body's uniform mode neutral in float32: it drifted 2.5× in 250k steps.)


def _layout(grid_n: int, itemsize: int) -> tuple[int, int, int]:
    """``(pitch, base, size)`` of one padded per-voice array, in values."""
    lanes = 32 // itemsize
    pitch = -(-(grid_n + 2) // lanes) * lanes
    base = pitch + lanes  # one zero row above; the row's left neighbour (a zero) at lanes - 1
    line = 64 // itemsize
    size = -(-((grid_n + 3) * pitch) // line) * line
    return pitch, base, size


def _aligned_zeros(shape: tuple[int, ...], dtype: np.dtype, align: int = 64) -> np.ndarray:
    """A C-contiguous zeroed array whose data starts on an ``align``-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + nbytes].view(dtype).reshape(shape)


@njit(cache=True, fastmath=False)
def _apply_record(r, recf, reci, maps, n, pitch, base, ca, cm, ck, cf, wexp):
    """Per-cell coefficients of record ``r`` (computed in float64, stored in the dtype).

    ``ca = a = 2/(1+γ)``, ``cm = m·b`` (see the layout notes), ``ck = s/(1+γ)``,
    ``cf = footprint/(1+γ)``; the reference's ``C²s/(1+γ)`` and ``ηs/(1+γ)`` are ``C²·ck``
    and ``η·ck``.
    """
    w = np.float64(recf[r, _R_MORPH])
    b = np.float64(recf[r, _R_B])
    gpd = np.float64(recf[r, _R_GPD])
    gadd = np.float64(recf[r, _R_GADD])
    ex = np.float64(recf[r, _R_EX])
    ey = np.float64(recf[r, _R_EY])
    ek = np.float64(recf[r, _R_EK])
    enorm = np.float64(recf[r, _R_ENORM])
    ma = maps[reci[r, _R_MAPA - _R_MAPA]]
    mb = maps[reci[r, _R_MAPB - _R_MAPA]]
    # The Gaussian footprint is separable: 2N exponentials instead of N².
    for k in range(n):
        dx = k - ex
        dy = k - ey
        wexp[0, k] = math.exp(-(dx * dx) * ek)
        wexp[1, k] = math.exp(-(dy * dy) * ek)
    w1 = 1.0 - w
    for i in range(n):
        fy = wexp[1, i] * enorm
        src = i * n
        dst = base + i * pitch
        for j in range(n):
            s = np.float64(ma[0, src + j]) * w1 + np.float64(mb[0, src + j]) * w
            d = np.float64(ma[1, src + j]) * w1 + np.float64(mb[1, src + j]) * w
            inv = 1.0 / (1.0 + (gpd * d + gadd))
            ca[dst + j] = 2.0 * inv
            cm[dst + j] = ((i == 0) + (i == n - 1) + (j == 0) + (j == n - 1)) * b
            ck[dst + j] = s * inv
            cf[dst + j] = fy * wexp[0, j] * inv


@njit(cache=True, fastmath=False)
def _laplacian_into(u, lu_out, cm, n, pitch, base, one):
    """``lu_out = L u`` (the boundary in ``cm``)."""
    mfour = -(one + one + one + one)
    up = np.uint64(pitch)
    o = np.uint64(1)
    nu = np.uint64(n)
    for i in range(n):
        r0 = np.uint64(base) + np.uint64(i) * up
        for c in range(r0, r0 + nu):
            uc = u[c]
            lu = (((mfour * uc + u[c - up]) + u[c + up]) + u[c - o]) + u[c + o]
            lu_out[c] = lu + cm[c] * uc


@njit(cache=True, fastmath=False)
def _step(cur, prev, lup, ca, cm, ck, cf, n, pitch, base, c2e, eta, kick, one):
    """One step: ``prev`` (u⁻) is overwritten with u⁺ and ``lup`` (Lu⁻) with this step's Lu.

    u⁺ = u⁻ + a·(u − u⁻) + k·((C²+η)·Lu − η·Lu⁻) + f·kick, which is the reference's
    a·u + (1−a)·u⁻ + (C²s/(1+γ))·Lu + (ηs/(1+γ))·(Lu − Lu⁻) + F/(1+γ) in fewer operations
    (and exact for a uniform field). The loops run row by row over aligned rows; the cell
    index is unsigned so that numba emits no negative-index wrap-around, which would keep
    LLVM from vectorising them.
    """
    up = np.uint64(pitch)
    o = np.uint64(1)
    nu = np.uint64(n)
    mfour = -(one + one + one + one)
    if kick != 0:
        for i in range(n):
            r0 = np.uint64(base) + np.uint64(i) * up
            for c in range(r0, r0 + nu):
                u = cur[c]
                lu = (((mfour * u + cur[c - up]) + cur[c + up]) + cur[c - o]) + cur[c + o]
                lu = lu + cm[c] * u
                p = prev[c]
                prev[c] = (p + ca[c] * (u - p) + ck[c] * (c2e * lu - eta * lup[c])) + cf[c] * kick
                lup[c] = lu
    else:
        for i in range(n):
            r0 = np.uint64(base) + np.uint64(i) * up
            for c in range(r0, r0 + nu):
                u = cur[c]
                lu = (((mfour * u + cur[c - up]) + cur[c + up]) + cur[c - o]) + cur[c + o]
                lu = lu + cm[c] * u
                p = prev[c]
                prev[c] = p + ca[c] * (u - p) + ck[c] * (c2e * lu - eta * lup[c])
                lup[c] = lu


@njit(cache=True, fastmath=False)
def _step_pair(cur, prev, lup, ca, cm, ck, n, pitch, base, c2e, eta, one):
    """Two kick-free steps in one sweep: ``prev`` ends as u⁺, ``cur`` as u⁺⁺, ``lup`` Lu⁺.

    The second step trails the first by one row (its row i needs rows i−1..i+1 of u⁺, and the
    first step needs row i−1 of u, which the second overwrites, only until its row i): each
    row of the seven arrays comes from L2 once for two steps, 10–15 % faster than two calls
    of :func:`_step`, with the same arithmetic.
    """
    up = np.uint64(pitch)
    o = np.uint64(1)
    nu = np.uint64(n)
    mfour = -(one + one + one + one)
    for i in range(n + 1):
        if i < n:
            r0 = np.uint64(base) + np.uint64(i) * up
            for c in range(r0, r0 + nu):
                u = cur[c]
                lu = (((mfour * u + cur[c - up]) + cur[c + up]) + cur[c - o]) + cur[c + o]
                lu = lu + cm[c] * u
                p = prev[c]
                prev[c] = p + ca[c] * (u - p) + ck[c] * (c2e * lu - eta * lup[c])
                lup[c] = lu
        if i > 0:
            r0 = np.uint64(base) + np.uint64(i - 1) * up
            for c in range(r0, r0 + nu):
                u = prev[c]
                lu = (((mfour * u + prev[c - up]) + prev[c + up]) + prev[c - o]) + prev[c + o]
                lu = lu + cm[c] * u
                p = cur[c]
                cur[c] = p + ca[c] * (u - p) + ck[c] * (c2e * lu - eta * lup[c])
                lup[c] = lu


@njit(cache=True, fastmath=False, inline="always")
def _bilinear(u, n, pitch, base, x, y):
    """``u`` at column ``x``, row ``y`` in grid units; as engine.reference.bilinear.

    A position outside the grid is clamped to it (the reference would wrap a negative one),
    so no read leaves the array.
    """
    j0 = min(max(int(math.floor(x)), 0), n - 1)
    i0 = min(max(int(math.floor(y)), 0), n - 1)
    fx = x - j0
    fy = y - i0
    j1 = min(j0 + 1, n - 1)
    i1 = min(i0 + 1, n - 1)
    r0 = base + i0 * pitch
    r1 = base + i1 * pitch
    top = (1 - fx) * np.float64(u[r0 + j0]) + fx * np.float64(u[r0 + j1])
    bottom = (1 - fx) * np.float64(u[r1 + j0]) + fx * np.float64(u[r1 + j1])
    return (1 - fy) * top + fy * bottom


@njit(cache=True, fastmath=False)
def _run_voice(
    v, headers, recf, reci, events, force, maps, fields, coefs, lup, wexp, out, n, pitch, base, one
):  # fmt: skip
    slot = np.int64(headers[v, _H_SLOT])
    os_ = np.int64(headers[v, _H_OS])
    n_samples = np.int64(headers[v, _H_NS])
    ev0 = np.int64(headers[v, _H_EV0])
    n_ev = np.int64(headers[v, _H_NEV])
    out0 = np.int64(headers[v, _H_OUT])
    f0 = np.int64(headers[v, _H_FORCE])
    n_fine = n_samples * os_
    size = fields.shape[2]
    zero = one - one
    ca = coefs[v, 0]
    cm = coefs[v, 1]
    ck = coefs[v, 2]
    cf = coefs[v, 3]
    lp = lup[v]
    we = wexp[v]
    lev0 = fields[slot, 0]
    lev1 = fields[slot, 1]

    r = np.int64(headers[v, _H_REC])
    _apply_record(r, recf, reci, maps, n, pitch, base, ca, cm, ck, cf, we)
    if reci[r, _R_FLAGS - _R_MAPA] & RECORD_RESET:
        for c in range(size):
            lev0[c] = zero
            lev1[c] = zero
    c2e = (recf[r, _R_C2] + zero) + (recf[r, _R_ETA] + zero)
    eta = recf[r, _R_ETA] + zero
    _laplacian_into(lev0, lp, cm, n, pitch, base, one)
    plx = np.float64(recf[r, _R_LX])
    ply = np.float64(recf[r, _R_LY])
    prx = np.float64(recf[r, _R_RX])
    pry = np.float64(recf[r, _R_RY])

    prev = lev0
    cur = lev1
    ev = 0
    k = 0
    s = 0
    sub = 0  # substep within output sample s
    while s < n_samples:
        if sub == 0:
            while ev < n_ev and np.int64(events[ev0 + ev, 0]) == s:
                r = np.int64(events[ev0 + ev, 1])
                _apply_record(r, recf, reci, maps, n, pitch, base, ca, cm, ck, cf, we)
                if reci[r, _R_FLAGS - _R_MAPA] & RECORD_RESET:
                    for c in range(size):
                        lev0[c] = zero
                        lev1[c] = zero
                        lp[c] = zero
                c2e = (recf[r, _R_C2] + zero) + (recf[r, _R_ETA] + zero)
                eta = recf[r, _R_ETA] + zero
                plx = np.float64(recf[r, _R_LX])
                ply = np.float64(recf[r, _R_LY])
                prx = np.float64(recf[r, _R_RX])
                pry = np.float64(recf[r, _R_RY])
                ev += 1
        kick = force[f0 + s] + zero
        # The step after this one, and whether the two can run as one sweep: no record
        # change between them and no kick in either (a strike is a few ms of a note).
        s2 = s
        sub2 = sub + 1
        if sub2 == os_:
            s2 = s + 1
            sub2 = 0
        pair = kick == 0 and s2 < n_samples and force[f0 + s2] == 0
        if pair and sub2 == 0 and ev < n_ev and np.int64(events[ev0 + ev, 0]) == s2:
            pair = False
        if pair:
            _step_pair(cur, prev, lp, ca, cm, ck, n, pitch, base, c2e, eta, one)
            out[out0 + k] = _bilinear(prev, n, pitch, base, plx, ply)
            out[out0 + n_fine + k] = _bilinear(prev, n, pitch, base, prx, pry)
            out[out0 + k + 1] = _bilinear(cur, n, pitch, base, plx, ply)
            out[out0 + n_fine + k + 1] = _bilinear(cur, n, pitch, base, prx, pry)
            k += 2
            s = s2
            sub = sub2 + 1
            if sub == os_:
                s += 1
                sub = 0
        else:
            _step(cur, prev, lp, ca, cm, ck, cf, n, pitch, base, c2e, eta, kick, one)
            cur, prev = prev, cur
            out[out0 + k] = _bilinear(cur, n, pitch, base, plx, ply)
            out[out0 + n_fine + k] = _bilinear(cur, n, pitch, base, prx, pry)
            k += 1
            s = s2
            sub = sub2
    if n_fine % 2 == 1:
        # The levels swapped an odd number of times (a pair of steps swaps them twice, that
        # is not at all): u⁻ sits in lev1 and u in lev0.
        for c in range(size):
            t = lev0[c]
            lev0[c] = lev1[c]
            lev1[c] = t


@njit(cache=True, fastmath=False, inline="always")
def _cost(headers, v):
    return np.int64(headers[v, _H_OS]) * np.int64(headers[v, _H_NS]) + 1


@njit(cache=True, parallel=True, fastmath=False, nogil=True)
def _run_block(
    n_voices, n_records, n_events, headers, recf, reci, events, force, maps, fields, coefs, lup,
    wexp, order, bin_of, grouped, bins, n_threads, out, n, pitch, base, max_os, one,
):  # fmt: skip
    """Check the plan (returns ``(code, voice)`` on a bad one), then run its voices."""
    n_slots = maps.shape[0]
    for v in range(n_voices):
        slot = np.int64(headers[v, _H_SLOT])
        os_ = np.int64(headers[v, _H_OS])
        ns = np.int64(headers[v, _H_NS])
        if slot >= fields.shape[0]:
            return _BAD_SLOT, v
        if os_ < 1 or os_ > max_os:
            return _BAD_OS, v
        if ns < 0 or ns > force.shape[0]:
            return _BAD_SAMPLES, v
        r = np.int64(headers[v, _H_REC])
        if r >= n_records:
            return _BAD_RECORD, v
        if reci[r, 0] >= n_slots or reci[r, 1] >= n_slots:
            return _BAD_MAP, v
        e0 = np.int64(headers[v, _H_EV0])
        ne = np.int64(headers[v, _H_NEV])
        if e0 + ne > n_events:
            return _BAD_EVENTS, v
        for e in range(e0, e0 + ne):
            r = np.int64(events[e, 1])
            if r >= n_records:
                return _BAD_RECORD, v
            if reci[r, 0] >= n_slots or reci[r, 1] >= n_slots:
                return _BAD_MAP, v
        if np.int64(headers[v, _H_FORCE]) + ns > force.shape[0]:
            return _BAD_FORCE, v
        if np.int64(headers[v, _H_OUT]) + 2 * ns * os_ > out.shape[0]:
            return _BAD_OUT, v
        for w in range(v):
            if np.int64(headers[w, _H_SLOT]) == slot:
                return _DUP_SLOT, v
    # Longest voices first (insertion sort, stable), each to the least loaded thread (LPT);
    # then prange hands each thread its own run of voices.
    for v in range(n_voices):
        order[v] = v
    for v in range(1, n_voices):
        x = order[v]
        w = v - 1
        while w >= 0 and _cost(headers, order[w]) < _cost(headers, x):
            order[w + 1] = order[w]
            w -= 1
        order[w + 1] = x
    n_bins = min(max(n_threads, 1), n_voices, bins.shape[1] - 1)
    load = bins[0]
    start = bins[1]
    for t in range(n_bins + 1):
        load[t] = 0
        start[t] = 0
    for k in range(n_voices):
        v = order[k]
        best = 0
        for t in range(1, n_bins):
            if load[t] < load[best]:
                best = t
        load[best] += _cost(headers, v)
        bin_of[v] = best
        start[best + 1] += 1
    for t in range(n_bins):
        start[t + 1] += start[t]
        load[t] = start[t]  # reused as the fill cursor
    for k in range(n_voices):
        v = order[k]
        t = bin_of[v]
        grouped[load[t]] = v
        load[t] += 1
    for t in prange(n_bins):
        fp_mode = _get_fp_mode()
        _set_fp_mode(fp_mode | _FTZ_DAZ)
        for k in range(start[t], start[t + 1]):
            _run_voice(
                grouped[k], headers, recf, reci, events, force, maps, fields, coefs, lup, wexp,
                out, n, pitch, base, one,
            )  # fmt: skip
        _set_fp_mode(fp_mode)
    return _OK, 0


class CpuFdtd:
    """Multi-voice FDTD on the CPU cores (numba). Implements :class:`~engine.block.FdtdBackend`.

    Arguments:
        grid_n: cells per side (64 for playing, 32 for coarse training); at least 2.
        max_voices: voices (field slots) kept; also the most voices per block.
        block_frames: output samples per block.
        n_map_slots: resident material maps.
        max_steps_per_sample: largest oversampling factor of a voice.
        max_events_per_voice: most parameter events a voice may have in one block.
        dtype: ``np.float32`` (real time, the GPU's precision) or ``np.float64`` (the
            reference's precision), for the fields, coefficients and pickups alike.

    Raises:
        ValueError: inconsistent sizes or an unsupported dtype.

    All methods must be called from one thread (the render thread). The first :meth:`run` of
    each dtype in a process compiles or loads the kernel; call :func:`warm_up` first.
    """

    def __init__(
        self,
        grid_n: int = 64,
        max_voices: int = 64,
        block_frames: int = 256,
        *,
        n_map_slots: int = 4,
        max_steps_per_sample: int = 16,
        max_events_per_voice: int = 32,
        dtype: type[np.floating] | np.dtype = np.float32,
    ) -> None:
        dt = np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype={dt}; CpuFdtd runs float32 or float64")
        if grid_n < 2 or max_voices < 1 or block_frames < 1 or n_map_slots < 1:
            raise ValueError(
                f"grid_n={grid_n} must be >= 2 and max_voices={max_voices}, "
                f"block_frames={block_frames}, n_map_slots={n_map_slots} >= 1"
            )
        self.grid_n = grid_n
        self.max_voices = max_voices
        self.block_frames = block_frames
        self.n_map_slots = n_map_slots
        self.max_steps_per_sample = max_steps_per_sample
        self.max_events_per_voice = max_events_per_voice
        self.dtype = dt
        plan = self.new_plan()  # validates max_steps_per_sample
        nn = grid_n * grid_n
        self._pitch, self._base, padded = _layout(grid_n, dt.itemsize)
        self._one = dt.type(1.0)
        #: Voice fields ``[slot][u⁻, u][padded cell]`` (see _layout).
        self._fields = _aligned_zeros((max_voices, 2, padded), dt)
        # A map slot that was never uploaded is a uniform unit-stiffness, undamped body
        # (as on the GPU).
        self._maps = np.zeros((n_map_slots, 2, nn), dt)
        self._maps[:, 0] = 1.0
        # Per dispatched voice (plan index), padded: a, m·b, s/(1+γ), footprint/(1+γ) (see
        # _apply_record); Lu⁻; the footprint's separable exponentials.
        self._coefs = _aligned_zeros((max_voices, 4, padded), dt)
        self._lup = _aligned_zeros((max_voices, padded), dt)
        self._wexp = np.zeros((max_voices, 2, grid_n), np.float64)
        # Scheduling scratch: voices by cost, their thread, voices grouped by thread, and
        # (load, start) per thread, for up to numba's largest thread count.
        self._order = np.zeros(max_voices, np.int64)
        self._bin_of = np.zeros(max_voices, np.int64)
        self._grouped = np.zeros(max_voices, np.int64)
        self._bins = np.zeros((2, numba.config.NUMBA_NUM_THREADS + 1), np.int64)
        self._out = np.zeros(plan.max_out, dt)

    def new_plan(self) -> BlockPlan:
        """A :class:`~engine.block.BlockPlan` sized for this backend."""
        return BlockPlan.sized_for(self)

    def upload_map(self, slot: int, stiffness: np.ndarray, damping_per_s: np.ndarray) -> None:
        """Make a material map resident in ``slot``; arrays are ``(grid_n, grid_n)``."""
        check_map(self.grid_n, self.n_map_slots, slot, stiffness, damping_per_s)
        self._maps[slot, 0] = np.reshape(stiffness, -1)
        self._maps[slot, 1] = np.reshape(damping_per_s, -1)

    def run(self, plan: BlockPlan) -> np.ndarray:
        """Advance the plan's voices by one block; returns their fine-rate pickups.

        A view of ``plan.out_size`` values in the :class:`~engine.block.BlockPlan` layout, in
        this backend's dtype (float32 like :class:`~engine.fdtd.GpuFdtd`, float64 like
        :class:`~engine.reference.ReferenceFdtd`), valid until the next call.

        Raises:
            ValueError: the plan does not fit this backend (field slot, map slot, record or
                event index, oversampling or output out of range, two voices on one slot).
        """
        nv = plan.n_voices
        if nv == 0:
            return self._out[:0]
        if nv > self.max_voices:
            raise ValueError(
                f"{nv} voices in the plan; this backend runs at most {self.max_voices}"
            )
        words = plan.records.view(np.uint32).reshape(-1, _RECORD_WORDS)
        code, v = _run_block(
            nv,
            plan.n_records,
            plan.n_events,
            plan.headers.view(np.uint32).reshape(-1, 8),
            plan.records.view(np.float32).reshape(-1, _RECORD_WORDS),
            words[:, _R_MAPA:],
            plan.events.view(np.uint32).reshape(-1, 2),
            plan.force,
            self._maps,
            self._fields,
            self._coefs,
            self._lup,
            self._wexp,
            self._order,
            self._bin_of,
            self._grouped,
            self._bins,
            numba.get_num_threads(),
            self._out,
            self.grid_n,
            self._pitch,
            self._base,
            self.max_steps_per_sample,
            self._one,
        )
        if code != _OK:
            self._raise(plan, code, v)
        return self._out[: plan.out_size]

    def _raise(self, plan: BlockPlan, code: int, v: int) -> None:
        h = plan.headers[v]
        what = {
            _BAD_SLOT: f"field slot {int(h['slot'])} outside 0..{self.max_voices - 1}",
            _BAD_OS: f"steps_per_sample={int(h['steps_per_sample'])} out of range",
            _BAD_SAMPLES: f"n_samples={int(h['n_samples'])} larger than the plan's force",
            _BAD_RECORD: f"a record index not below n_records={plan.n_records}",
            _BAD_MAP: f"a record names a map slot outside 0..{self.n_map_slots - 1}",
            _BAD_EVENTS: f"events beyond n_events={plan.n_events}",
            _BAD_FORCE: "force beyond the plan's force array",
            _BAD_OUT: f"pickups beyond this backend's {self._out.size} values",
            _DUP_SLOT: f"field slot {int(h['slot'])} dispatched twice in one block",
        }[code]
        raise ValueError(f"plan voice {v}: {what}")

    def warm_up(self) -> float:
        """Compile (or load from the cache) this backend's kernel; seconds it took.

        Call before real-time use, off the audio thread: a first compile takes ~10 s.
        """
        return warm_up((self.dtype,))

    def write_fields(self, slot: int, fields: np.ndarray) -> None:
        """Set the voice's ``(u^{n-1}, u^n)`` (``(2, N, N)``) before the next block."""
        check_fields(self.grid_n, self.max_voices, slot, fields)
        n, pitch, base = self.grid_n, self._pitch, self._base
        grid = self._fields[slot, :, base : base + n * pitch].reshape(2, n, pitch)
        grid[:, :, :n] = fields

    def read_fields(self, slot: int) -> np.ndarray:
        """The voice's ``(u^{n-1}, u^n)`` after the last block, ``(2, N, N)`` in this dtype."""
        n, pitch, base = self.grid_n, self._pitch, self._base
        grid = self._fields[slot, :, base : base + n * pitch].reshape(2, n, pitch)
        return grid[:, :, :n].copy()


def warm_up(dtypes: tuple = (np.float32, np.float64)) -> float:
    """Compile (or load from the cache) the kernels of ``dtypes`` by running a tiny plan.

    Call at start-up off the audio thread; returns the seconds it took.
    """
    t0 = time.perf_counter()
    for dt in dtypes:
        be = CpuFdtd(
            4, 1, 2, n_map_slots=1, max_steps_per_sample=2, max_events_per_voice=1, dtype=dt
        )
        plan = be.new_plan()
        rec = np.zeros((), RECORD_DTYPE)
        rec["c2"] = 0.1
        rec["exc_x"] = rec["exc_y"] = 1.5
        rec["exc_inv_2w2"] = 0.5
        rec["exc_norm"] = 0.25
        rec["flags"] = RECORD_RESET
        r = plan.add_record(rec)
        plan.add_voice(0, 2, r, np.ones(2, np.float32), events=[(1, r)])
        be.run(plan)
    elapsed = time.perf_counter() - t0
    names = ", ".join(np.dtype(d).name for d in dtypes)
    log.info("numba FDTD kernels (%s) ready in %.2f s", names, elapsed)
    return elapsed
