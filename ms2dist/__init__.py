"""ms2dist: train MIDI-Sandwich2 at scale (shards, Accelerate, MLflow)."""

__version__ = "0.1.0"

# Track order used everywhere (shards, models, MIDI, metrics); the LPD-5 order.
TRACKS: tuple[str, ...] = ("Drums", "Piano", "Guitar", "Bass", "Strings")

__all__ = ["__version__", "TRACKS"]
