#!/usr/bin/env bash
# The main job: a complete mailvm on loopback (lab Postfix on 127.0.0.1:2525
# filtering through mailvm), then two sample messages through it.
set -euo pipefail
cd "$(dirname "$0")/.."
MVCTL=.venv/bin/mvctl
CORPUS=${MAILVM_CORPUS:-../shared/corpus}
$MVCTL lab start
echo
echo ">> a clean message:"
$MVCTL lab send "$CORPUS/apache-spamassassin-tdata/t/data/nice/001" --to alice@example.com || true
echo ">> EICAR in a zip (rejected by the default policy):"
tmp=$(mktemp --suffix=.eml)
.venv/bin/python - "$CORPUS/eicar/eicar_com.zip" > "$tmp" <<'PY'
import sys, email.message
m = email.message.EmailMessage()
m["From"] = "sender@lab.test"; m["To"] = "alice@example.com"; m["Subject"] = "invoice"
m.set_content("Please see the attached invoice.")
m.add_attachment(open(sys.argv[1], "rb").read(), maintype="application", subtype="zip", filename="invoice.zip")
sys.stdout.write(m.as_string())
PY
$MVCTL lab send "$tmp" --to alice@example.com || true
rm -f "$tmp"
sleep 1
echo
$MVCTL lab inbox
echo
echo "The lab keeps running. Try:  $MVCTL lab send FILE.eml --to someone@quarantine.example"
echo "                             $MVCTL lab inbox;  $MVCTL lab stop"
