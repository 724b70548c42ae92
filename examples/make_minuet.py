"""Write examples/minuet_in_g.mid: Minuet in G major, BWV Anh. 114 (Christian Petzold).

The composition is in the public domain. This sequencing (the note data, the
velocities, the pedalling, the tempo map and this script) is dedicated to the
public domain under CC0 1.0: https://creativecommons.org/publicdomain/zero/1.0/

What the file contains (it doubles as a test file for engine.midifile):
  * type 1, 480 ticks per quarter note, 3/4, G major, 100 bpm;
  * track 0: tempo map, with a ritardando (one tempo change per beat) over the
    last two bars;
  * track 1 "Right hand": channel 0, the first 16 bars of the melody (no
    repeat), program change 0, note_off messages with release velocity, one
    short pitch bend up and back on the final note;
  * track 2 "Left hand": channel 1, a simple bass line in half and quarter
    notes (after the original left hand), program change 32, note_on with
    velocity 0 as note-off, sustain pedal (CC64) down after each downbeat and
    up just before the next bar.
Velocities lie in 60..100, notes in MIDI 43 (G2) .. 83 (B5).

Run:  python examples/make_minuet.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import mido

TPB = 480  # ticks per quarter note
BAR = 3 * TPB
Q, H, DH, E = TPB, 2 * TPB, 3 * TPB, TPB // 2  # quarter, half, dotted half, eighth
BPM = 100
# Ritardando over bars 15-16: one tempo per beat (bpm).
RITARDANDO_BPM = (96, 92, 87, 82, 76, 70)

_NOTE_INDEX = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def midi_note(name: str) -> int:
    """'F#4' -> 66 (C4 = 60)."""
    letter, rest = name[0], name[1:]
    shift = 0
    while rest and rest[0] in "#b":
        shift += 1 if rest[0] == "#" else -1
        rest = rest[1:]
    return 12 * (int(rest) + 1) + _NOTE_INDEX[letter] + shift


# (note, length in ticks), one list per bar.
MELODY: list[list[tuple[str, int]]] = [
    [("D5", Q), ("G4", E), ("A4", E), ("B4", E), ("C5", E)],  # 1
    [("D5", Q), ("G4", Q), ("G4", Q)],  # 2
    [("E5", Q), ("C5", E), ("D5", E), ("E5", E), ("F#5", E)],  # 3
    [("G5", Q), ("G4", Q), ("G4", Q)],  # 4
    [("C5", Q), ("D5", E), ("C5", E), ("B4", E), ("A4", E)],  # 5
    [("B4", Q), ("C5", E), ("B4", E), ("A4", E), ("G4", E)],  # 6
    [("F#4", Q), ("G4", E), ("A4", E), ("B4", E), ("G4", E)],  # 7
    [("A4", DH)],  # 8
    [("D5", Q), ("G4", E), ("A4", E), ("B4", E), ("C5", E)],  # 9
    [("D5", Q), ("G4", Q), ("G4", Q)],  # 10
    [("E5", Q), ("C5", E), ("D5", E), ("E5", E), ("F#5", E)],  # 11
    [("G5", Q), ("G4", Q), ("G4", Q)],  # 12
    [("C5", Q), ("D5", E), ("C5", E), ("B4", E), ("A4", E)],  # 13
    [("B4", Q), ("C5", E), ("B4", E), ("A4", E), ("G4", E)],  # 14
    [("A4", Q), ("B4", E), ("A4", E), ("G4", E), ("F#4", E)],  # 15
    [("G4", DH)],  # 16
]

BASS: list[list[tuple[str, int]]] = [
    [("G3", H), ("A3", Q)],  # 1
    [("B3", DH)],  # 2
    [("C4", DH)],  # 3
    [("B3", DH)],  # 4
    [("A3", DH)],  # 5
    [("G3", DH)],  # 6
    [("D4", Q), ("B3", Q), ("G3", Q)],  # 7
    [("D4", Q), ("D3", Q), ("C4", Q)],  # 8
    [("B3", H), ("A3", Q)],  # 9
    [("B3", H), ("G3", Q)],  # 10
    [("C4", DH)],  # 11
    [("B3", H), ("G3", Q)],  # 12
    [("A3", H), ("F#3", Q)],  # 13
    [("G3", H), ("B3", Q)],  # 14
    [("C4", Q), ("D4", Q), ("D3", Q)],  # 15
    [("G3", H), ("G2", Q)],  # 16
]

# Order at equal ticks: note-offs and pedal-up before anything new starts.
_OFF, _ON = 0, 1


def melody_velocity(bar: int, pos: int, length: int) -> int:
    """A phrase shape: downbeats louder, eighths lighter, a swell to bar 4/12."""
    phrase_swell = (0, 4, 8, 12, 6, 3, 1, 0)[bar % 8]
    if pos == 0:
        base = 84
    elif length < Q:
        base = 66 + (pos // E) * 2  # rising eighths
    else:
        base = 72
    return max(60, min(100, base + phrase_swell))


def bass_velocity(pos: int) -> int:
    return 72 if pos == 0 else 62


def voice_events(
    bars: list[list[tuple[str, int]]], channel: int, velocity, off_style: str
) -> list[tuple[int, int, mido.Message]]:
    """(tick, order, message) for one voice; notes are slightly detached."""
    out: list[tuple[int, int, mido.Message]] = []
    for b, bar in enumerate(bars):
        pos = 0
        for name, length in bar:
            note = midi_note(name)
            start = b * BAR + pos
            last = b == len(bars) - 1
            gate = length if last else length - (24 if length < H else 12)
            vel = velocity(b, pos, length) if channel == 0 else velocity(pos)
            out.append((start, _ON, mido.Message("note_on", channel=channel, note=note, velocity=vel)))
            if off_style == "note_off":
                off = mido.Message("note_off", channel=channel, note=note, velocity=64)
            else:
                off = mido.Message("note_on", channel=channel, note=note, velocity=0)
            out.append((start + gate, _OFF, off))
            pos += length
        assert pos == BAR, f"bar {b + 1} of channel {channel} has {pos} ticks, not {BAR}"
    return out


def to_track(name: str, head: list[mido.Message], timed: list[tuple[int, int, mido.Message]]) -> mido.MidiTrack:
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("track_name", name=name, time=0))
    for msg in head:
        track.append(msg.copy(time=0))
    now = 0
    for tick, _order, msg in sorted(timed, key=lambda t: (t[0], t[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


def build() -> mido.MidiFile:
    n_bars = len(MELODY)
    end = n_bars * BAR

    # Track 0: tempo map.
    tempo_timed: list[tuple[int, int, mido.Message]] = [
        (0, _ON, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(BPM)))
    ]
    for i, bpm in enumerate(RITARDANDO_BPM):
        tempo_timed.append((14 * BAR + i * Q, _ON, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))))
    tempo_head = [
        mido.MetaMessage(
            "time_signature", numerator=3, denominator=4, clocks_per_click=24, notated_32nd_notes_per_beat=8
        ),
        mido.MetaMessage("key_signature", key="G"),
        mido.MetaMessage("text", text="Sequencing CC0 1.0; composition public domain (Petzold, BWV Anh. 114)"),
    ]
    tempo_track = to_track("Minuet in G major, BWV Anh. 114", tempo_head, tempo_timed)
    tempo_track[-1] = tempo_track[-1].copy(time=end - sum(m.time for m in tempo_track))

    # Track 1: melody, channel 0, with a pitch bend on the last note.
    melody = voice_events(MELODY, 0, melody_velocity, "note_off")
    last_start = (n_bars - 1) * BAR
    bend_curve = (0, 1024, 2048, 3072, 2048, 1024, 0)  # up to +3072/8192 and back
    for i, pitch in enumerate(bend_curve):
        melody.append((last_start + Q + i * 40, _ON, mido.Message("pitchwheel", channel=0, pitch=pitch)))
    right = to_track("Right hand", [mido.Message("program_change", channel=0, program=0)], melody)

    # Track 2: bass, channel 1, sustain pedal per bar.
    bass = voice_events(BASS, 1, bass_velocity, "note_on0")
    for b in range(n_bars):
        bass.append((b * BAR + 20, _ON, mido.Message("control_change", channel=1, control=64, value=127)))
        bass.append(((b + 1) * BAR - 10, _OFF, mido.Message("control_change", channel=1, control=64, value=0)))
    left = to_track("Left hand", [mido.Message("program_change", channel=1, program=32)], bass)

    return mido.MidiFile(type=1, ticks_per_beat=TPB, tracks=[tempo_track, right, left])


def main() -> int:
    out = Path(__file__).resolve().parent / "minuet_in_g.mid"
    build().save(out)
    sys.path.insert(0, str(out.parent.parent))
    from engine.midifile import read_midi_file

    score = read_midi_file(out, 48_000)
    notes = [e.note for e in score.events if e.kind == "note_on"]
    print(
        f"wrote {out}: {score.n_tracks} tracks, {score.n_notes} notes "
        f"(MIDI {min(notes)}..{max(notes)}), {score.duration_s:.3f} s, {len(score.events)} events"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
