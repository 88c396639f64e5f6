"""The shard format and its readers: manifest, blocks, writer, packer, training and
evaluation streams, batch unpacking (see docs/architecture.md)."""

from ms2dist.dataset.batch import unpack_phrases
from ms2dist.dataset.blocks import CorruptShardError, corrupt_skipped, iter_shard_blocks
from ms2dist.dataset.eval_stream import EvalLoader, eval_loader
from ms2dist.dataset.load import split_phrases
from ms2dist.dataset.manifest import SPLITS, SplitInfo, assign_split, parse_split, read_split
from ms2dist.dataset.packer import PackResult, PackUsageError, pack
from ms2dist.dataset.train_stream import TrainLoader, train_loader

__all__ = ["CorruptShardError", "EvalLoader", "PackResult", "PackUsageError", "SPLITS",
           "SplitInfo", "TrainLoader", "assign_split", "corrupt_skipped", "eval_loader",
           "iter_shard_blocks", "pack", "parse_split", "read_split", "split_phrases",
           "train_loader", "unpack_phrases"]
