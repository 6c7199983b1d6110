#!/bin/sh
# Builds the capture-decoder fuzzer with clang (libFuzzer + ASan + UBSan)
# into OUT (default build-fuzz/), plus the seed maker.
#
#   tests/fuzz/build.sh [OUT]
#   OUT/fuzz_reader OUT/corpus tests/fuzz/corpus -max_total_time=600
#
# Needs clang (Debian: apt-get install -y clang) and liblz4-dev.
set -eu
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$REPO/build-fuzz}
CC=${CLANG:-clang}
mkdir -p "$OUT"
ver=$(sed -n 's/^format_version *= *\([0-9][0-9]*\).*/\1/p' "$REPO/meson.build")
printf '#pragma once\n#define MT_FORMAT_VERSION %s\n#define MT_VERSION "fuzz"\n' \
    "$ver" > "$OUT/version.h"
# The capture library (every src/*.c and the embedded dictionaries, as
# meson's libmtcapture) and the analysis.
SRC="$(ls "$REPO"/src/*.c) $REPO/reader/analysis.c $REPO/reader/util.c"
for f in "$REPO"/src/dictionaries/*.bin; do
    id=$(basename "$f" | cut -d- -f1)
    python3 "$REPO/tools/embed.py" --binary "$f" "mt_dictionary_$id" "$OUT/dictionary-$id.c"
    SRC="$SRC $OUT/dictionary-$id.c"
done
FLAGS="-g -O1 -std=gnu11 -fno-omit-frame-pointer -I$OUT -I$REPO -I$REPO/src"
$CC $FLAGS -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -o "$OUT/fuzz_reader" "$REPO/tests/fuzz/fuzz_reader.c" $SRC -llz4
# Past the open bug in tests/fuzz/open-bugs/: skips inputs with huge ids.
$CC $FLAGS -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -DMT_FUZZ_SKIP_HUGE_IDS \
    -o "$OUT/fuzz_reader_past_open_bugs" "$REPO/tests/fuzz/fuzz_reader.c" $SRC -llz4
# The same target without libFuzzer, under the sanitizers: replays a corpus.
$CC $FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    -o "$OUT/fuzz_regression" "$REPO/tests/fuzz/regression_driver.c" \
    "$REPO/tests/fuzz/fuzz_reader.c" $SRC -llz4
$CC $FLAGS -o "$OUT/mkseeds" "$REPO/tests/fuzz/mkseeds.c" $SRC -llz4
echo "built $OUT/fuzz_reader $OUT/fuzz_reader_past_open_bugs $OUT/fuzz_regression $OUT/mkseeds"
