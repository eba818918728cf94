#!/bin/sh
# Writes the seed corpus of each fuzz target into fuzz/corpus/<target>/ (idempotent; the seeds
# and the corpus the fuzzer grows next to them stay out of git), from the files they are made of:
#   request_parser  every example frame of protocol/examples (requests and server messages)
#   frame_decoder   each example frame behind its 4-byte length header, whole and in pieces,
#                   and all the request examples as one stream
#   config_parser   config.toml and a few small documents
set -eu
cd "$(dirname "$0")"
root=..
corpus=corpus

# The 4 bytes of a big-endian u32, written with printf's octal escapes (POSIX sh has no \x).
be32() {
    printf "\\$(printf %03o $(($1 >> 24 & 255)))\\$(printf %03o $(($1 >> 16 & 255)))"
    printf "\\$(printf %03o $(($1 >> 8 & 255)))\\$(printf %03o $(($1 & 255)))"
}

# A frame: the header, then the body.
frame() {
    be32 "$(wc -c <"$1")"
    cat "$1"
}

mkdir -p "$corpus/request_parser" "$corpus/frame_decoder" "$corpus/config_parser" "$corpus/stored_value"

# frame_decoder input: [piece size (0 = all at once)] [limit - 1, big-endian u16] [stream].
for f in "$root"/protocol/examples/*/*.json; do
    name=$(basename "$(dirname "$f")")-$(basename "$f" .json)
    cp "$f" "$corpus/request_parser/seed-$name"
    { printf '\000\377\377'; frame "$f"; } >"$corpus/frame_decoder/seed-$name"
    { printf '\007\001\000'; frame "$f"; } >"$corpus/frame_decoder/seed-$name-pieces"
done
{
    printf '\000\377\377'
    for f in "$root"/protocol/examples/requests/*.json; do frame "$f"; done
} >"$corpus/frame_decoder/seed-all-requests"

cp "$root/config.toml" "$corpus/config_parser/seed-config.toml"
: >"$corpus/config_parser/seed-empty"
printf 'listen = "[::1]:7300"\nmax_frame_bytes = 4096\n[tokens]\nadmin = "a"\n' \
    >"$corpus/config_parser/seed-small"

for t in request_parser frame_decoder config_parser; do
    echo "$t: $(ls "$corpus/$t" | wc -l) files in fuzz/$corpus/$t"
done

# Stored values: an audit entry in format 1 (seq 5, its time, kind denied, record R1), the same
# entry as a one-entry block, a final record as the store reads it back (its state: flags final
# and split, processed by 1042, version 1, 1042 revoked; then its body: call C1, campaign c), and a
# record as an older server wrote it (JSON).
entry='\001\005\0302026-12-02T06:34:06.123Z\004\001\002R1'
printf "$entry" >"$corpus/stored_value/seed-entry"
printf "\261\001\037$entry" >"$corpus/stored_value/seed-block"
printf '\001\003\000\001\0041042\0302026-12-02T06:34:06.123Z\000\000\001\001\0041042\000\000\001\002C1\001c\000\000\000\000' \
    >"$corpus/stored_value/seed-split-record"
printf '{"call":"C1","campaign":"c","chain_n":1,"phone":null,"data":{},"chain":[],"context":{"fields":{}},"version":1,"final_":{"outcome":"processed","at":"2026-12-02T06:34:06.123Z"},"holders":{},"orphaned_since":null}' >"$corpus/stored_value/seed-json-record"
