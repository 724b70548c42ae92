"""NeiroSynth engine: FDTD body simulation, voices, MIDI, audio, presets. Imports no Qt."""
