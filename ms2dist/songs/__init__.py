"""Songs: the LPD-5 Song, the LPD and MIDI readers, the LPD-5 rule, phrase cutting, the
bundled corpus (see docs/architecture.md)."""

from ms2dist.songs.files import (
    FORMATS,
    MIDI_SUFFIXES,
    collect_inputs,
    detect_format,
    file_phrases,
    load_song,
)
from ms2dist.songs.lpd import read_lpd_npz
from ms2dist.songs.midi import read_midi_song
from ms2dist.songs.phrases import PhraseConfig, notes_phrases, phrases_of_song, roll_phrases
from ms2dist.songs.song import RejectError, Song, lpd5_track, merge_to_lpd5, song_id_for

__all__ = ["FORMATS", "MIDI_SUFFIXES", "PhraseConfig", "RejectError", "Song", "collect_inputs",
           "detect_format", "file_phrases", "load_song", "lpd5_track", "merge_to_lpd5",
           "notes_phrases", "phrases_of_song", "read_lpd_npz", "read_midi_song", "roll_phrases",
           "song_id_for"]
