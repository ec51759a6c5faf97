#!/usr/bin/env bash
# The main job: a complete mailvm on loopback (lab Postfix on 127.0.0.1:2525
# filtering through mailvm), then two sample messages through it.  The samples
# are made by mailvm itself (mailvm/lab/samples.py): nothing outside the tree is read.
set -euo pipefail
cd "$(dirname "$0")/.."
MVCTL=.venv/bin/mvctl
$MVCTL lab start
echo
echo ">> a clean message:"
$MVCTL lab send --sample clean --to alice@example.com || true
echo ">> EICAR in a zip (rejected by the default policy):"
$MVCTL lab send --sample eicar-zip --to alice@example.com || true
sleep 1
echo
$MVCTL lab inbox
echo
echo "The lab keeps running. Try:  $MVCTL lab send FILE.eml --to someone@quarantine.example"
echo "                             $MVCTL lab send --sample eicar-zip --to someone@quarantine.example"
echo "                             $MVCTL lab inbox;  $MVCTL lab stop"
