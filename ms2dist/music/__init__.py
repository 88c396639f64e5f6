"""Music out: MIDI files (and back), pianoroll pictures, the files of a sample."""

from ms2dist.music.files import DEFAULT_BPM, notes_per_track, write_outputs
from ms2dist.music.midi import DRUM_CHANNEL, PROGRAMS, read_midi, write_midi
from ms2dist.music.pianoroll import plot_pianoroll

__all__ = ["DEFAULT_BPM", "DRUM_CHANNEL", "PROGRAMS", "notes_per_track", "plot_pianoroll",
           "read_midi", "write_midi", "write_outputs"]
