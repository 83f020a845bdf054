#!/bin/sh
# The one-shot `hsm_credentials` service of docker-compose.yml (runs as root, before the
# others). Makes the HSM link's private CA and its two certificates once, in $CA_DIR — the
# only place the CA key lives, mounted by no running service — then gives each service only
# what it needs, owned by the user it runs as:
#   $HSM_TLS_DIR      hsm.pem, hsm.key, ca.pem        for hsm_stub (user $HSM_USER)
#   $CARDSVC_TLS_DIR  client.pem, client.key, ca.pem  for cardsvc  (user $CARDSVC_USER)
# Existing files are kept; a server certificate that does not name $HSM_HOST is issued again.
set -eu
CA_DIR="${CA_DIR:-/tls/ca}"
HSM_TLS_DIR="${HSM_TLS_DIR:-/tls/hsm}"
CARDSVC_TLS_DIR="${CARDSVC_TLS_DIR:-/tls/cardsvc}"
HSM_USER="${HSM_USER:-hsm}"
CARDSVC_USER="${CARDSVC_USER:-cardsvc}"
HSM_HOST="${HSM_HOST:-hsm_stub}"
PYTHON="${PYTHON:-python}"

"$PYTHON" -m hsm_stub make-credentials --out "$CA_DIR" --host "$HSM_HOST"

give() {
  dir=$1 owner=$2
  shift 2
  install -d -o "$owner" -g "$owner" -m 0700 "$dir"
  for name in "$@"; do
    case "$name" in *.key) mode=0600 ;; *) mode=0644 ;; esac
    install -o "$owner" -g "$owner" -m "$mode" "$CA_DIR/$name" "$dir/$name"
  done
}
give "$HSM_TLS_DIR" "$HSM_USER" hsm.pem hsm.key ca.pem
give "$CARDSVC_TLS_DIR" "$CARDSVC_USER" client.pem client.key ca.pem
echo "HSM link credentials: hsm_stub's in $HSM_TLS_DIR, cardsvc's in $CARDSVC_TLS_DIR"
