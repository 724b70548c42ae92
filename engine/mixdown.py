r"""Voice outputs to the stereo mix: decimation, pickup velocity, the output matrix, the sum.

A block's FDTD pass returns, per voice, two pickups at the fine rate (``steps`` FDTD steps per
output sample). Per voice and output sample ``n`` this stage computes

* **decimation** — for ``steps > 1`` the fine-rate pickups go through the voice's low-pass
  (a cascade of biquads ``sos[steps]``, transposed direct form II as
  :func:`scipy.signal.sosfilt`) and every ``steps``-th output is kept:
  ``y[n] = H(x)[n·steps + steps − 1]``; for ``steps = 1``, ``y[n] = x[n]``;
* **pickup velocity** — ``dy[n] = y[n] − y[n−1]``;
* **output coefficients** ``c = [c_u, c_d, a11, a12, a21, a22]``, ramped linearly to a new
  target over ``ramp`` samples (``c ← c + (target − c)/left`` each sample) or set at once;
* **the voice's stereo output** ``m = c_u·y + c_d·dy``,
  ``out_L = a11·m_L + a12·m_R``, ``out_R = a21·m_L + a22·m_R``, summed into the mix.

The summed mix then goes through the **master bus** (:func:`master_bus`): a DC blocker per
channel, ``y[n] = x[n] − x[n−1] + r·y[n−1]`` (a free body can drift), and a soft limiter,
linear up to ``knee`` and ``sign(y)·(knee + (1−knee)·0.999·tanh((|y|−knee)/(1−knee)))`` above,
so the output never reaches full scale.

At a *reset* offset (a note that restarts the voice's field) the filter state and ``y[n−1]``
are zeroed before sample ``n``; a voice whose oversampling differs from its filter state's
starts the block with a zeroed filter. A voice whose pickups are not finite contributes
nothing and keeps its state (the synth silences it).

The state lives in arrays indexed by the voice's slot (allocated once by the caller):
``zi (slots, 2, sections, 2)``, ``zi_steps (slots,)``, ``y_prev (slots, 2)``,
``coef_now``/``coef_target (slots, 6)``, ``coef_left (slots,)``.

:func:`mix_voices` is the real-time kernel (numba, one compiled loop over all voices, GIL
released); :func:`mix_voices_reference` the float64 numpy/scipy twin it is tested against
(``tests/test_mixdown.py``). Why compiled: per voice and block the numpy version makes a few
dozen small array calls (~100 µs a voice a block in CPython), which at 32 voices was most of a
128-frame block's budget; the loop does the same work in a few µs. Each voice's two
channels go through the filter together: an IIR cascade is one long dependency chain per
channel, and two chains side by side keep the core busy (~27% faster than one channel after
the other). Voices are not spread over threads: on two cores, numba's parallel loop made
the mix slower, not faster.

Public API: ``MixInput``, ``MixState``, ``mix_voices``, ``mix_voices_reference``,
``master_bus``, ``master_bus_reference``, ``decimation_sos``, ``warm_up``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.signal
from numba import njit

__all__ = [
    "MixInput",
    "MixState",
    "mix_voices",
    "mix_voices_reference",
    "master_bus",
    "master_bus_reference",
    "decimation_sos",
    "warm_up",
]

#: Largest oversampling factor with a decimation filter.
MAX_STEPS = 16


def decimation_sos(max_steps: int = MAX_STEPS) -> np.ndarray:
    """``(max_steps + 1, sections, 6)`` second-order sections: row ``k`` low-passes a signal
    oversampled ``k`` times (10th-order elliptic, 0.1 dB ripple to 0.45·fs, 90 dB stop);
    rows 0 and 1 are pass-through."""
    rows = [scipy.signal.ellip(10, 0.1, 90, 0.9 / k, output="sos") for k in range(2, max_steps + 1)]
    sos = np.zeros((max_steps + 1, rows[0].shape[0], 6))
    sos[:2, :, 0] = 1.0
    sos[:2, :, 3] = 1.0
    for k, row in enumerate(rows, start=2):
        sos[k] = row
    return sos


@dataclass
class MixInput:
    """One block's voices, in the order the backend returned them (all arrays preallocated).

    ``n`` voices: ``slots[:n]`` their state slots, ``offsets[:n]`` where each voice's pickups
    start in the block's output (``2 × n_frames·steps`` values, left then right),
    ``steps[:n]``. Resets of voice ``v``: ``reset_at[reset_first[v]:reset_first[v+1]]``
    (sorted output samples). Coefficient changes of voice ``v``, in order:
    ``change_at``/``change_ramp``/``change_coef`` over ``change_first[v]:change_first[v+1]``.
    """

    slots: np.ndarray  # int64
    offsets: np.ndarray  # int64
    steps: np.ndarray  # int64
    reset_first: np.ndarray  # int64, n + 1
    reset_at: np.ndarray  # int64
    change_first: np.ndarray  # int64, n + 1
    change_at: np.ndarray  # int64
    change_ramp: np.ndarray  # int64
    change_coef: np.ndarray  # float64 (k, 6)
    n: int = 0

    @classmethod
    def allocate(cls, max_voices: int, max_changes: int) -> "MixInput":
        i64 = lambda k: np.zeros(k, np.int64)  # noqa: E731
        return cls(
            i64(max_voices),
            i64(max_voices),
            i64(max_voices),
            i64(max_voices + 1),
            i64(max_changes),
            i64(max_voices + 1),
            i64(max_changes),
            i64(max_changes),
            np.zeros((max_changes, 6)),
        )


@dataclass
class MixState:
    """Per-slot state of the output stage (see the module docstring)."""

    zi: np.ndarray
    zi_steps: np.ndarray
    y_prev: np.ndarray
    coef_now: np.ndarray
    coef_target: np.ndarray
    coef_left: np.ndarray
    scratch: np.ndarray  # (slots, max_frames, 2): each voice's output before the sum

    @classmethod
    def allocate(cls, slots: int, sections: int, max_frames: int = 1024) -> "MixState":
        return cls(
            np.zeros((slots, 2, sections, 2)),
            np.zeros(slots, np.int64),
            np.zeros((slots, 2)),
            np.zeros((slots, 6)),
            np.zeros((slots, 6)),
            np.zeros(slots, np.int64),
            np.zeros((slots, max_frames, 2)),
        )

    def clear(self, slot: int) -> None:
        """Forget the voice's filter and last output (a fresh note on the slot)."""
        self.zi[slot] = 0.0
        self.y_prev[slot] = 0.0


def mix_voices(
    pickups: np.ndarray,
    inp: MixInput,
    state: MixState,
    sos: np.ndarray,
    n_frames: int,
    mix: np.ndarray,
    peak: np.ndarray,
    finite: np.ndarray,
) -> None:
    """Mix the block's voices into ``mix (n_frames, 2)`` (overwritten); per voice its peak
    ``|out|`` into ``peak[:n]`` and whether its pickups were finite into ``finite[:n]``."""
    if n_frames > state.scratch.shape[1]:
        raise ValueError(
            f"{n_frames}-frame block; this MixState was allocated for {state.scratch.shape[1]}"
        )
    _mix_kernel(
        pickups,
        inp.n,
        inp.slots,
        inp.offsets,
        inp.steps,
        inp.reset_first,
        inp.reset_at,
        inp.change_first,
        inp.change_at,
        inp.change_ramp,
        inp.change_coef,
        state.zi,
        state.zi_steps,
        state.y_prev,
        state.coef_now,
        state.coef_target,
        state.coef_left,
        sos,
        n_frames,
        state.scratch,
        mix,
        peak,
        finite,
    )


@njit(cache=True, nogil=True, fastmath=False, inline="always")
def _biquad_pair(sos, k_steps, zi, s, sec, xl, xr):
    """One section of both channels' cascades (two independent dependency chains)."""
    b0 = sos[k_steps, sec, 0]
    b1 = sos[k_steps, sec, 1]
    b2 = sos[k_steps, sec, 2]
    a1 = sos[k_steps, sec, 4]
    a2 = sos[k_steps, sec, 5]
    yl = b0 * xl + zi[s, 0, sec, 0]
    yr = b0 * xr + zi[s, 1, sec, 0]
    zi[s, 0, sec, 0] = b1 * xl - a1 * yl + zi[s, 0, sec, 1]
    zi[s, 1, sec, 0] = b1 * xr - a1 * yr + zi[s, 1, sec, 1]
    zi[s, 0, sec, 1] = b2 * xl - a2 * yl
    zi[s, 1, sec, 1] = b2 * xr - a2 * yr
    return yl, yr


@njit(cache=True, nogil=True, fastmath=False)
def _mix_kernel(
    pickups, n, slots, offsets, steps, reset_first, reset_at, change_first, change_at,
    change_ramp, change_coef, zi, zi_steps, y_prev, coef_now, coef_target, coef_left, sos,
    n_frames, scratch, mix, peak, finite,
):  # fmt: skip
    n_sections = zi.shape[2]
    # each voice into its own scratch row, summed at the end (a non-finite voice is left out)
    for v in range(n):
        s = slots[v]
        k_steps = steps[v]
        n_fine = n_frames * k_steps
        off = offsets[v]
        ok = True
        for i in range(2 * n_fine):
            if not np.isfinite(pickups[off + i]):
                ok = False
                break
        finite[v] = ok
        peak[v] = 0.0
        if not ok:
            continue
        if zi_steps[s] != k_steps:
            zi[s, :, :, :] = 0.0
            zi_steps[s] = k_steps
        r = reset_first[v]
        r_end = reset_first[v + 1]
        c = change_first[v]
        c_end = change_first[v + 1]
        pk = 0.0
        for t in range(n_frames):
            while r < r_end and reset_at[r] == t:
                zi[s, :, :, :] = 0.0
                y_prev[s, 0] = 0.0
                y_prev[s, 1] = 0.0
                r += 1
            while c < c_end and change_at[c] == t:
                for q in range(6):
                    coef_target[s, q] = change_coef[c, q]
                coef_left[s] = change_ramp[c]
                if change_ramp[c] <= 0:
                    for q in range(6):
                        coef_now[s, q] = change_coef[c, q]
                c += 1
            left = coef_left[s]
            if left > 0:
                for q in range(6):
                    coef_now[s, q] += (coef_target[s, q] - coef_now[s, q]) / left
                coef_left[s] = left - 1
                if left == 1:
                    for q in range(6):
                        coef_now[s, q] = coef_target[s, q]
            base = off + t * k_steps
            if k_steps == 1:
                yl = np.float64(pickups[base])
                yr = np.float64(pickups[base + n_fine])
            else:
                yl = 0.0
                yr = 0.0
                for k in range(k_steps):
                    yl = np.float64(pickups[base + k])
                    yr = np.float64(pickups[base + n_fine + k])
                    for sec in range(n_sections):
                        yl, yr = _biquad_pair(sos, k_steps, zi, s, sec, yl, yr)
            ml = coef_now[s, 0] * yl + coef_now[s, 1] * (yl - y_prev[s, 0])
            mr = coef_now[s, 0] * yr + coef_now[s, 1] * (yr - y_prev[s, 1])
            y_prev[s, 0] = yl
            y_prev[s, 1] = yr
            out_l = coef_now[s, 2] * ml + coef_now[s, 3] * mr
            out_r = coef_now[s, 4] * ml + coef_now[s, 5] * mr
            scratch[v, t, 0] = out_l
            scratch[v, t, 1] = out_r
            pk = max(pk, abs(out_l), abs(out_r))
        peak[v] = pk
    mix[:n_frames, :] = 0.0
    for v in range(n):
        if finite[v]:
            for t in range(n_frames):
                mix[t, 0] += scratch[v, t, 0]
                mix[t, 1] += scratch[v, t, 1]


def mix_voices_reference(
    pickups: np.ndarray,
    inp: MixInput,
    state: MixState,
    sos: np.ndarray,
    n_frames: int,
    mix: np.ndarray,
    peak: np.ndarray,
    finite: np.ndarray,
) -> None:
    """The float64 numpy/scipy twin of :func:`mix_voices` (same arguments, same effects)."""
    mix[:] = 0.0
    for v in range(inp.n):
        s = int(inp.slots[v])
        steps = int(inp.steps[v])
        n_fine = n_frames * steps
        off = int(inp.offsets[v])
        fine = pickups[off : off + 2 * n_fine].astype(np.float64).reshape(2, n_fine)
        finite[v] = bool(np.all(np.isfinite(fine)))
        peak[v] = 0.0
        if not finite[v]:
            continue
        if state.zi_steps[s] != steps:
            state.zi[s] = 0.0
            state.zi_steps[s] = steps
        resets = [int(r) for r in inp.reset_at[inp.reset_first[v] : inp.reset_first[v + 1]]]
        bounds = sorted({0, n_frames, *resets})
        y = np.empty((2, n_frames))
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a in resets:
                state.zi[s] = 0.0
            if steps > 1:
                seg, zi = scipy.signal.sosfilt(
                    sos[steps], fine[:, a * steps : b * steps], axis=1,
                    zi=np.moveaxis(state.zi[s], 1, 0),  # (sections, 2 channels, 2)
                )  # fmt: skip
                state.zi[s] = np.moveaxis(zi, 0, 1)
                y[:, a:b] = seg[:, steps - 1 :: steps]
            else:
                y[:, a:b] = fine[:, a:b]
        prev = np.concatenate([state.y_prev[s][:, None], y[:, :-1]], axis=1)
        for r in resets:
            prev[:, r] = 0.0
        dy = y - prev
        state.y_prev[s] = y[:, -1]
        c = _coef_track_reference(state, s, inp, v, n_frames)
        m = c[0] * y + c[1] * dy
        out = np.stack([c[2] * m[0] + c[3] * m[1], c[4] * m[0] + c[5] * m[1]], axis=1)
        mix += out
        peak[v] = float(np.max(np.abs(out)))


def _coef_track_reference(
    state: MixState, s: int, inp: MixInput, v: int, n_frames: int
) -> np.ndarray:
    """Per-sample coefficients ``(6, n_frames)``: linear ramps between the changes."""
    out = np.empty((6, n_frames))
    first, last = int(inp.change_first[v]), int(inp.change_first[v + 1])
    changes = [
        (int(inp.change_at[i]), inp.change_coef[i].copy(), int(inp.change_ramp[i]))
        for i in range(first, last)
    ]
    pos = 0
    for at, target, ramp in [*changes, (n_frames, None, 0)]:
        if at > pos:
            k = min(at - pos, int(state.coef_left[s]))
            now, tgt = state.coef_now[s].copy(), state.coef_target[s].copy()
            if k > 0:
                frac = np.arange(1, k + 1) / state.coef_left[s]
                out[:, pos : pos + k] = now[:, None] + (tgt - now)[:, None] * frac
                state.coef_left[s] -= k
                state.coef_now[s] = tgt if state.coef_left[s] == 0 else out[:, pos + k - 1]
            out[:, pos + k : at] = state.coef_now[s][:, None]
            pos = at
        if target is not None:
            state.coef_target[s] = target
            state.coef_left[s] = ramp
            if ramp <= 0:
                state.coef_now[s] = target
    return out


@njit(cache=True, nogil=True, fastmath=False)
def master_bus(mix, dc_x, dc_y, r, knee, out):  # pragma: no cover - compiled
    """DC-block and soft-limit ``mix (frames, 2)`` float64 into ``out`` (float32, same shape);
    ``dc_x``/``dc_y`` (2,) carry each channel's last input and output to the next block."""
    head = 1.0 - knee
    for ch in range(2):
        x_prev = dc_x[ch]
        y_prev = dc_y[ch]
        for t in range(mix.shape[0]):
            x = mix[t, ch]
            y = x - x_prev + r * y_prev
            x_prev = x
            y_prev = y
            a = abs(y)
            if a > knee:
                a = knee + head * np.tanh((a - knee) / head) * 0.999
                y = a if y > 0 else -a
            out[t, ch] = y
        dc_x[ch] = x_prev
        dc_y[ch] = y_prev


def master_bus_reference(
    mix: np.ndarray, dc_x: np.ndarray, dc_y: np.ndarray, r: float, knee: float, out: np.ndarray
) -> None:
    """The numpy/scipy twin of :func:`master_bus`."""
    y = np.empty_like(mix)
    for ch in range(2):
        zi = np.array([r * dc_y[ch] - dc_x[ch]])
        y[:, ch], _ = scipy.signal.lfilter([1.0, -1.0], [1.0, -r], mix[:, ch], zi=zi)
        dc_x[ch], dc_y[ch] = mix[-1, ch], y[-1, ch]
    over = np.abs(y) > knee
    head = 1.0 - knee
    y[over] = np.sign(y[over]) * (knee + head * np.tanh((np.abs(y[over]) - knee) / head) * 0.999)
    out[:] = y


def warm_up() -> None:
    """Compile (or load from numba's cache) both kernels now, on a one-voice block, so that
    the first note of a live performance does not wait for the compiler (~1.5 s cold)."""
    sos = decimation_sos(2)
    inp = MixInput.allocate(1, 1)
    inp.n, inp.steps[0] = 1, 2
    state = MixState.allocate(1, sos.shape[1], max_frames=4)
    mix = np.zeros((4, 2))
    mix_voices(np.zeros(16, np.float32), inp, state, sos, 4, mix, np.zeros(1), np.zeros(1, bool))
    master_bus(mix, np.zeros(2), np.zeros(2), 0.999, 0.8, np.zeros((4, 2), np.float32))
