#!/usr/bin/env bash
# The README's pictures of the generation modes (docs/images/mode_*.png), made by the
# shipped model from a song it never trained on (lpd5_test_small). Rerun after the model
# or the plotting changes:   bash scripts/mode_pictures.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SONG=${SONG:-$(find ../shared/data/lpd5_test_small -name '*.npz' | sort | sed -n 2p)}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
ms() { "$PY" -m ms2dist sample --model pretrained:lpd5 --seed 0 "$@" > /dev/null; }
ms --mode song --bars 16 --form ABAB --n 1 --out "$OUT/song"
ms --mode infill --input "$SONG" --bars 3-4 --tracks Piano,Bass --n 1 --out "$OUT/infill"
ms --mode generate --attribute Drums.density=-2 --n 1 --out "$OUT/sparse"
ms --mode generate --attribute Drums.density=+2 --n 1 --out "$OUT/busy"
ms --mode vary --input "$SONG" --amount 0.3 --n 1 --out "$OUT/vary"
mkdir -p docs/images
cp "$OUT/song/song_000.png" docs/images/mode_song.png
cp "$OUT/infill/input_000.png" docs/images/mode_infill_input.png
cp "$OUT/infill/infill_000.png" docs/images/mode_infill.png
cp "$OUT/sparse/generate_000.png" docs/images/mode_attribute_drums_-2.png
cp "$OUT/busy/generate_000.png" docs/images/mode_attribute_drums_+2.png
cp "$OUT/vary/vary_000.png" docs/images/mode_vary.png
echo "SONG=$SONG"
ls -la docs/images/mode_*.png
