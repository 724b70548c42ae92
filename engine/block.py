"""One block of FDTD work, laid out the way every backend reads it.

A *block* advances a set of voices by ``n_samples`` output samples. Voice ``v`` takes
``steps_per_sample`` FDTD steps per output sample (its oversampling factor, chosen by the
tuning so that its note fits inside the CFL bound). The plan holds four flat arrays that are
uploaded as they are (the GPU backend) or read directly (the float64 reference, the numba
backend):

``records``  (:data:`RECORD_DTYPE`)  per-voice physical parameters, all dimensionless
             (grid units). A voice starts the block on its header's record; an event switches
             it to another record at the exact output sample the event names.
``headers``  (:data:`HEADER_DTYPE`)  one per dispatched voice: its field slot, oversampling,
             first record, its run of events, and where its force and pickups live.
``events``   (:data:`EVENT_DTYPE`)   ``(sample, record)`` pairs, sorted by sample within a voice.
``force``    float32, ``n_samples`` values per voice: the kick added at every FDTD step of that
             output sample (zero-order hold over the substeps).

The output of a block (``pickups``) is float32, per voice two channels (left, right pickup)
of ``n_samples * steps_per_sample`` fine-rate samples each, at ``headers["out_offset"]``:
``pickups[out_offset + ch * n_fine + k]`` is the pickup of channel ``ch`` after step ``k``.

All arrays are allocated once for the largest block; :meth:`BlockPlan.clear` only rewinds the
counters, so building a block allocates nothing on the GPU side.

Public API: ``RECORD_DTYPE``, ``HEADER_DTYPE``, ``EVENT_DTYPE``, ``RECORD_RESET``,
``BlockPlan``, ``FdtdBackend``, ``check_map``, ``check_fields``.
"""

from __future__ import annotations

import struct
from typing import Protocol

import numpy as np

__all__ = [
    "RECORD_DTYPE",
    "HEADER_DTYPE",
    "EVENT_DTYPE",
    "RECORD_RESET",
    "BlockPlan",
    "FdtdBackend",
    "check_map",
    "check_fields",
]

#: Flag bit in ``records["flags"]``: zero the voice's field (both time levels) when the
#: record is applied. Used for a note-on on a fresh or stolen voice.
RECORD_RESET = 1

#: Per-voice parameters of the scheme, in grid units. Mirrors ``struct VoiceRecord`` in
#: ``shaders/fdtd.wgsl`` field by field (80 bytes).
RECORD_DTYPE = np.dtype(
    [
        ("c2", "<f4"),  # C² = (c·Δt/Δx)², the Courant number squared
        ("eta", "<f4"),  # η = 2σ₁Δt/Δx², frequency-dependent loss
        ("gamma_per_d", "<f4"),  # Δt·damping_scale: γ = gamma_per_d·d[i,j] + gamma_add
        ("gamma_add", "<f4"),  # uniform extra γ (release damping)
        ("morph", "<f4"),  # w: s = (1-w)·s_a + w·s_b, same for d
        ("boundary", "<f4"),  # b: ghost cell = b·edge cell (0 clamped, 1 free)
        ("exc_x", "<f4"),  # excitation centre, column coordinate j (grid units)
        ("exc_y", "<f4"),  # excitation centre, row coordinate i (grid units)
        ("exc_inv_2w2", "<f4"),  # 1/(2·width²), width in grid units
        ("exc_norm", "<f4"),  # 1/Σ footprint, so the footprint sums to 1
        ("pick_lx", "<f4"),
        ("pick_ly", "<f4"),
        ("pick_rx", "<f4"),
        ("pick_ry", "<f4"),
        ("map_a", "<u4"),  # resident material-map slot A
        ("map_b", "<u4"),  # resident material-map slot B
        ("flags", "<u4"),  # RECORD_RESET
        ("_pad0", "<u4"),
        ("_pad1", "<u4"),
        ("_pad2", "<u4"),
    ]
)
assert RECORD_DTYPE.itemsize == 80

_RECORD_SIZE = RECORD_DTYPE.itemsize
_RECORD_WORDS = _RECORD_SIZE // 4
_FLAGS_WORD = RECORD_DTYPE.fields["flags"][1] // 4

#: One dispatched voice. Mirrors ``struct VoiceHeader`` in ``shaders/fdtd.wgsl`` (32 bytes).
HEADER_DTYPE = np.dtype(
    [
        ("slot", "<u4"),  # persistent field slot of the voice
        ("steps_per_sample", "<u4"),
        ("n_samples", "<u4"),
        ("record", "<u4"),  # record in force at the start of the block
        ("first_event", "<u4"),
        ("n_events", "<u4"),
        ("out_offset", "<u4"),  # first pickup value of this voice
        ("force_offset", "<u4"),  # first force value of this voice
    ]
)
assert HEADER_DTYPE.itemsize == 32
_HEADER = struct.Struct("<8I")  # the same 32 bytes, for packing a row in one call

#: At output sample ``sample`` (before its first step) switch to ``record``.
EVENT_DTYPE = np.dtype([("sample", "<u4"), ("record", "<u4")])


class BlockPlan:
    """The preallocated description of one block; fill it, hand it to a backend, clear it.

    Arguments:
        max_voices: most voices dispatched in one block.
        block_frames: output samples per block (the same for every voice).
        max_steps_per_sample: largest oversampling factor a voice may use.
        max_events_per_voice: most parameter events one voice may have in one block.

    Not thread-safe: one thread (the render thread) builds and runs plans.
    """

    def __init__(
        self,
        max_voices: int,
        block_frames: int,
        *,
        max_steps_per_sample: int = 16,
        max_events_per_voice: int = 32,
    ) -> None:
        if max_voices < 1 or block_frames < 1 or max_steps_per_sample < 1:
            raise ValueError(
                f"max_voices={max_voices}, block_frames={block_frames} and "
                f"max_steps_per_sample={max_steps_per_sample} must all be >= 1"
            )
        self.max_voices = max_voices
        self.block_frames = block_frames
        self.max_steps_per_sample = max_steps_per_sample
        self.max_events_per_voice = max_events_per_voice
        self.max_records = max_voices * (1 + max_events_per_voice)
        self.records = np.zeros(self.max_records, RECORD_DTYPE)
        self._record_bytes = memoryview(self.records.view(np.uint8))
        self._record_words = self.records.view(np.uint32)
        self.headers = np.zeros(max_voices, HEADER_DTYPE)
        self._header_bytes = memoryview(self.headers.view(np.uint8))
        self.events = np.zeros(max(1, max_voices * max_events_per_voice), EVENT_DTYPE)
        self.force = np.zeros(max_voices * block_frames, np.float32)
        # which voice rows of `force` hold only zeros (a silent voice skips re-zeroing its row)
        self._force_zero = [True] * max_voices
        #: Most pickup values one block can produce.
        self.max_out = max_voices * 2 * block_frames * max_steps_per_sample
        self.clear()

    @classmethod
    def sized_for(cls, backend: "FdtdBackend") -> "BlockPlan":
        """A plan as large as ``backend``'s largest block."""
        return cls(
            backend.max_voices,
            backend.block_frames,
            max_steps_per_sample=backend.max_steps_per_sample,
            max_events_per_voice=backend.max_events_per_voice,
        )

    def clear(self) -> None:
        """Forget the block's voices, records and events (keeps the arrays)."""
        self.n_voices = 0
        self.n_records = 0
        self.n_events = 0
        self.out_size = 0

    def add_record(self, record: np.void | np.ndarray | bytes, flags: int | None = None) -> int:
        """Copy one :data:`RECORD_DTYPE` record (or its ``tobytes()``) into the plan, with
        ``flags`` in place of its own if given; returns its index."""
        i = self.n_records
        if i >= self.max_records:
            raise ValueError(f"more than {self.max_records} records in one block")
        if isinstance(record, bytes):
            # a structured element's assignment costs ~0.3 µs, its copy ~10 µs; bytes ~0.1 µs
            self._record_bytes[i * _RECORD_SIZE : (i + 1) * _RECORD_SIZE] = record
        else:
            self.records[i] = record
        if flags is not None:
            self._record_words[i * _RECORD_WORDS + _FLAGS_WORD] = flags
        self.n_records += 1
        return i

    def add_voice(
        self,
        slot: int,
        steps_per_sample: int,
        record: int,
        force: np.ndarray | None = None,
        events: list[tuple[int, int]] | None = None,
    ) -> int:
        """Dispatch the voice in field ``slot`` for this block; returns its index in the plan.

        Arguments:
            slot: the voice's persistent field slot in the backend.
            steps_per_sample: FDTD steps per output sample (1..max_steps_per_sample).
            record: index (from :meth:`add_record`) of the parameters at the block start.
            force: ``block_frames`` kicks, one per output sample; ``None`` means silence.
            events: ``(sample, record)`` pairs sorted by sample, ``0 <= sample < block_frames``.
        """
        if self.n_voices >= self.max_voices:
            raise ValueError(f"more than max_voices={self.max_voices} voices in one block")
        if not 1 <= steps_per_sample <= self.max_steps_per_sample:
            raise ValueError(
                f"steps_per_sample={steps_per_sample} outside 1..{self.max_steps_per_sample}"
            )
        if not 0 <= record < self.n_records:
            raise ValueError(f"record={record} was not added to this block")
        events = events or []
        if len(events) > self.max_events_per_voice:
            raise ValueError(
                f"{len(events)} events for one voice; at most {self.max_events_per_voice} a block"
            )
        v = self.n_voices
        # packed into the header's bytes: a structured-row assignment costs ~4× as much
        _HEADER.pack_into(
            self._header_bytes,
            v * _HEADER.size,
            slot,
            steps_per_sample,
            self.block_frames,
            record,
            self.n_events,
            len(events),
            self.out_size,
            v * self.block_frames,
        )
        last = 0
        for sample, rec in events:
            if not (last <= sample < self.block_frames) or not 0 <= rec < self.n_records:
                raise ValueError(
                    f"event (sample={sample}, record={rec}) out of order or out of range "
                    f"(block_frames={self.block_frames}, records={self.n_records})"
                )
            self.events[self.n_events] = (sample, rec)
            self.n_events += 1
            last = sample
        if force is not None:
            self.force[v * self.block_frames : (v + 1) * self.block_frames] = force
            self._force_zero[v] = False
        elif not self._force_zero[v]:
            self.force[v * self.block_frames : (v + 1) * self.block_frames] = 0.0
            self._force_zero[v] = True
        self.out_size += 2 * self.block_frames * steps_per_sample
        self.n_voices += 1
        return v

    def voice_pickups(self, pickups: np.ndarray, v: int) -> np.ndarray:
        """View of voice ``v``'s fine-rate output, shape ``(2, n_samples * steps_per_sample)``."""
        h = self.headers[v]
        n_fine = int(h["n_samples"]) * int(h["steps_per_sample"])
        off = int(h["out_offset"])
        return pickups[off : off + 2 * n_fine].reshape(2, n_fine)


def check_fields(grid_n: int, max_voices: int, slot: int, fields: np.ndarray) -> None:
    """What every backend's ``write_fields`` checks: the slot, the shape ``(2, N, N)``, finiteness."""
    if not 0 <= slot < max_voices:
        raise ValueError(f"voice slot {slot} outside 0..{max_voices - 1}")
    if np.shape(fields) != (2, grid_n, grid_n):
        raise ValueError(f"fields have shape {np.shape(fields)}; expected (2, {grid_n}, {grid_n})")
    if not np.all(np.isfinite(fields)):
        raise ValueError("fields contain NaN or Inf")


def check_map(
    grid_n: int, n_map_slots: int, slot: int, stiffness: np.ndarray, damping_per_s: np.ndarray
) -> None:
    """What every backend's ``upload_map`` checks first: the slot, the shapes, finiteness.

    Raises:
        ValueError: naming the slot or the array and what is wrong with it.
    """
    if not 0 <= slot < n_map_slots:
        raise ValueError(f"map slot {slot} outside 0..{n_map_slots - 1}")
    for name, arr in (("stiffness", stiffness), ("damping_per_s", damping_per_s)):
        if np.shape(arr) != (grid_n, grid_n):
            raise ValueError(
                f"{name} has shape {np.shape(arr)}; this engine needs ({grid_n}, {grid_n})"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or Inf")


class FdtdBackend(Protocol):
    """What the voice layer needs from a simulation backend (GPU, float64 reference, numba).

    Every method is called from one thread (the render thread).
    """

    grid_n: int
    max_voices: int
    n_map_slots: int
    block_frames: int
    max_steps_per_sample: int
    max_events_per_voice: int

    def new_plan(self) -> BlockPlan:
        """A :class:`BlockPlan` sized for this backend (``BlockPlan.sized_for(self)``)."""
        ...

    def upload_map(self, slot: int, stiffness: np.ndarray, damping_per_s: np.ndarray) -> None:
        """Make a material map resident in ``slot`` (done when a preset loads, never per block)."""
        ...

    def run(self, plan: BlockPlan) -> np.ndarray:
        """Advance the plan's voices by one block; returns the fine-rate pickups (read-only view)."""
        ...

    def read_fields(self, slot: int) -> np.ndarray:
        """The voice's two time levels ``(u^{n-1}, u^n)`` as float arrays ``(2, N, N)``."""
        ...

    def write_fields(self, slot: int, fields: np.ndarray) -> None:
        """Set the voice's ``(u^{n-1}, u^n)``: restart from a checkpoint (the adjoint pass
        replays the forward run block by block from saved states)."""
        ...
