"""Objective metrics of multi-track pianorolls (pure numpy; no torch): Table I's set with the
chroma fixed (:mod:`~ms2dist.metrics.objective`, :mod:`~ms2dist.metrics.tonal`) and the one
note F1 (:mod:`~ms2dist.metrics.f1`)."""

from ms2dist.metrics.f1 import note_counts, note_prf, prf_from_counts
from ms2dist.metrics.objective import (
    compute_all,
    drum_pattern_rate,
    empty_bar_rate,
    notes_per_bar,
    polyphony,
    qualified_note_rate,
    used_pitch_classes,
)
from ms2dist.metrics.rolls import onsets
from ms2dist.metrics.tonal import (
    MAJOR_SCALE,
    best_major_key,
    chroma,
    scale_ratio,
    tonal_centroid,
    tonal_distance,
)

__all__ = ["MAJOR_SCALE", "best_major_key", "chroma", "compute_all", "drum_pattern_rate",
           "empty_bar_rate", "note_counts", "note_prf", "notes_per_bar", "onsets", "polyphony",
           "prf_from_counts", "qualified_note_rate", "scale_ratio", "tonal_centroid",
           "tonal_distance", "used_pitch_classes"]
