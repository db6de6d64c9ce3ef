#!/usr/bin/env bash
# Keyward with nothing but curl: encrypt, decrypt, sign, verify and read a
# secret through the Connect protocol (one JSON POST per call, bytes as base64),
# over mutual TLS with a SERVICE identity.
#
# Needs bash, curl and base64. Run it from the repository root while
# `npm start` is running: the defaults are that server's development files.
#
#   KEYWARD_URL          https://127.0.0.1:8443
#   KEYWARD_CA           .keyward/pki/ca.crt          CA the server's certificate chains to
#   KEYWARD_CERT         .keyward/pki/service.crt     client certificate
#   KEYWARD_KEY          .keyward/pki/service.key     its private key
#   KEYWARD_ENCRYPT_KEY  keys/demo                    a key of purpose ENCRYPT_DECRYPT
#   KEYWARD_SIGN_KEY     keys/demo-signing            a key of purpose SIGN_VERIFY
#   KEYWARD_SECRET       secrets/demo/dev/api-token   a secret with an ENABLED version
#
# README's "Try it with buf curl" creates these keys and this secret.
# Exit status 0 when every call succeeds and its answer checks out, else 1.
set -euo pipefail

url=${KEYWARD_URL:-https://127.0.0.1:8443}
ca=${KEYWARD_CA:-.keyward/pki/ca.crt}
cert=${KEYWARD_CERT:-.keyward/pki/service.crt}
key=${KEYWARD_KEY:-.keyward/pki/service.key}
encrypt_key=${KEYWARD_ENCRYPT_KEY:-keys/demo}
sign_key=${KEYWARD_SIGN_KEY:-keys/demo-signing}
secret=${KEYWARD_SECRET:-secrets/demo/dev/api-token}

fail() {
  echo "curl.sh: $*" >&2
  exit 1
}

for file in "$ca" "$cert" "$key"; do
  [ -r "$file" ] || fail "cannot read $file (run from the repository root after npm start, or set KEYWARD_CA, KEYWARD_CERT, KEYWARD_KEY)"
done

b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
# The size in bytes of base64 data.
decoded_size() { printf '%s' "$1" | base64 -d | wc -c | tr -d ' '; }

# POSTs the JSON request $2 to the RPC $1 (`Service/Method`) and leaves the
# JSON answer in $answer. Connect answers a failed call with a non-200 status
# and {"code": "...", "message": "..."}, which ends the script.
call() {
  local rpc=$1 body=$2 status
  answer=$(curl -sS --max-time 30 --cacert "$ca" --cert "$cert" --key "$key" \
    -H 'content-type: application/json' -H 'connect-protocol-version: 1' \
    --data-binary "$body" -w '\n%{http_code}' "$url/keyward.v1.$rpc") || fail "${rpc#*/}: no answer from $url"
  status=${answer##*$'\n'}
  answer=${answer%$'\n'*}
  [ "$status" = 200 ] || fail "${rpc#*/} failed: HTTP $status $(field code): $(field message)"
}

# A string field of $answer. The values read here (base64, resource names) hold
# no quotes or escapes, and Connect writes its JSON on one line.
field() { sed -n 's/.*"'"$1"'": *"\([^"]*\)".*/\1/p' <<<"$answer"; }

message="hello from examples/curl.sh"
context="order-42" # associated data: authenticated, not encrypted, needed again to decrypt

call CryptoService/Encrypt "{\"name\":\"$encrypt_key\",\"plaintext\":\"$(b64 "$message")\",\"associatedData\":\"$(b64 "$context")\"}"
ciphertext=$(field ciphertext)
[ -n "$ciphertext" ] || fail "Encrypt answered without a ciphertext"
echo "encrypt  $(field keyVersion): ${#message} bytes -> $(decoded_size "$ciphertext") bytes of ciphertext"

# Decrypt names the key, not a version: the version is inside the ciphertext.
call CryptoService/Decrypt "{\"name\":\"${encrypt_key%%/versions/*}\",\"ciphertext\":\"$ciphertext\",\"associatedData\":\"$(b64 "$context")\"}"
[ "$(field plaintext)" = "$(b64 "$message")" ] || fail "Decrypt returned other bytes than were encrypted"
echo "decrypt  $(field keyVersion): round trip ok"

call CryptoService/Sign "{\"name\":\"$sign_key\",\"message\":\"$(b64 "$message")\"}"
signature=$(field signature)
signed_by=$(field keyVersion)
[ -n "$signature" ] || fail "Sign answered without a signature"
echo "sign     $signed_by: $(decoded_size "$signature") bytes of signature"

# Verify with the version that signed, so it still works after a rotation.
call CryptoService/Verify "{\"name\":\"$signed_by\",\"message\":\"$(b64 "$message")\",\"signature\":\"$signature\"}"
# protobuf JSON leaves false out: a bad signature answers without "valid".
grep -q '"valid": *true' <<<"$answer" || fail "Verify: the signature is not valid"
echo "verify   $signed_by: valid"

case $secret in
*/versions/*) version=$secret ;;
*) version=$secret/versions/latest ;;
esac
call SecretsService/AccessSecretVersion "{\"name\":\"$version\"}"
data=$(field data)
[ -n "$data" ] || fail "AccessSecretVersion answered without a value"
echo "access   $(field name): $(decoded_size "$data") bytes (value not shown)"
