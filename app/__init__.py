"""NeiroSynth desktop application (Qt). Reads the engine; the engine never imports it."""
