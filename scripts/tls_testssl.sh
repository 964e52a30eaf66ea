#!/usr/bin/env bash
# Runs testssl.sh against a c10m TLS client listener on loopback and counts its findings by
# severity. The certificate is made for the run (a throwaway CA and an ECDSA P-256 server
# certificate valid 90 days for localhost and 127.0.0.1) and the CA is handed to testssl, so
# the chain of trust is checked as a real deployment's would be.
#
#   scripts/tls_testssl.sh [--rsa]      --rsa: an RSA-2048 certificate instead
#   TESTSSL_OUT=DIR scripts/tls_testssl.sh   also keeps testssl's text and JSON output in DIR
# Needs openssl and testssl.sh (`apt-get install testssl.sh`; installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

KEYTYPE=ec
[[ "${1:-}" == "--rsa" ]] && KEYTYPE=rsa
command -v testssl >/dev/null || { apt-get update -qq && apt-get install -y -qq testssl.sh >/dev/null; }
command -v openssl >/dev/null || { echo "tls_testssl.sh: openssl is needed"; exit 1; }

cargo build --release -q -p c10m
TMP=$(mktemp -d)
SERVER=
cleanup() { [[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

newkey() {
  if [[ $KEYTYPE == rsa ]]; then openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1"
  else openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; fi 2>/dev/null
}
newkey "$TMP/ca.key"
openssl req -x509 -new -key "$TMP/ca.key" -sha256 -days 90 -subj "/CN=c10m testssl CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$TMP/ca.pem" 2>/dev/null
newkey "$TMP/server.key"
openssl req -new -key "$TMP/server.key" -subj "/CN=localhost" -out "$TMP/server.csr" 2>/dev/null
usage=digitalSignature
[[ $KEYTYPE == rsa ]] && usage="digitalSignature,keyEncipherment"
# A public CA's certificate names where to check revocation; so does this one (testssl rates
# a certificate without a CRL or OCSP URI HIGH). Nothing serves the URL: only its presence counts.
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,%s\nextendedKeyUsage=serverAuth\ncrlDistributionPoints=URI:http://127.0.0.1:9/c10m-test.crl\n' \
  "$usage" >"$TMP/ext.cnf"
openssl x509 -req -in "$TMP/server.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
  -days 90 -sha256 -extfile "$TMP/ext.cnf" -out "$TMP/server.pem" 2>/dev/null

target/release/c10m serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 --shards 1 --no-pin \
  --tls-cert "$TMP/server.pem" --tls-key "$TMP/server.key" >"$TMP/out" 2>"$TMP/err" &
SERVER=$!
for _ in $(seq 200); do grep -q '^c10m listening' "$TMP/out" && break; sleep 0.1; done
PORT=$(sed -nE 's/.*clients=127.0.0.1:([0-9]+).*/\1/p' "$TMP/out")
[[ -n "$PORT" ]] || { cat "$TMP/err"; exit 1; }

testssl --quiet --color 0 --warnings off --add-ca "$TMP/ca.pem" --jsonfile "$TMP/testssl.json" \
  "https://localhost:$PORT/" >"$TMP/testssl.txt" 2>&1 || true
if [[ -n "${TESTSSL_OUT:-}" ]]; then
  mkdir -p "$TESTSSL_OUT" && cp "$TMP/testssl.json" "$TMP/testssl.txt" "$TESTSSL_OUT/"
fi
python3 - "$TMP/testssl.json" <<'EOF'
import collections, json, sys
findings = json.load(open(sys.argv[1]))
count = collections.Counter(f["severity"] for f in findings)
order = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "OK", "DEBUG"]
print("testssl findings by severity: " + ", ".join(f"{s} {count.get(s, 0)}" for s in order))
for f in findings:
    if f["severity"] in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN"):
        print(f'  {f["severity"]:8} {f["id"]}: {f["finding"]}')
EOF
