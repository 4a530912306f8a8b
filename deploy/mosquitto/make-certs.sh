#!/bin/sh
# A test CA, the broker's certificate and a client certificate, with openssl.
#
#   deploy/mosquitto/make-certs.sh OUT_DIR [NAME ...]
#
# OUT_DIR gets ca.crt / ca.key (the CA), broker.crt / broker.key (for mosquitto's
# listener 8883) and client.crt / client.key (CN gridbid-hub: the bridge's optional
# tls_cert / tls_key). The broker's certificate names localhost and 127.0.0.1, and each
# NAME given (a DNS name, or an IPv4 address: the Pi's LAN address, e.g. 192.168.1.20),
# since clients check the name they connect to against it. Keys are EC P-256, mode 0600.
# The CA is for a test bench or a home LAN: keep ca.key off the Pi once certificates are
# made. Existing files are overwritten.
set -eu
out=${1:?usage: make-certs.sh OUT_DIR [NAME ...]}
shift
mkdir -p "$out"
cd "$out"
umask 077

san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    case $name in
        *[!0-9.]*) san="$san,DNS:$name" ;;
        *) san="$san,IP:$name" ;;
    esac
done
days=825

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=gridbid test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.crt

sign() {  # sign NAME CN EXTENSIONS
    key "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
        -days $days -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
sign broker "gridbid broker" "subjectAltName=$san
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"
sign client gridbid-hub "extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
rm -f ca.srl
chmod 644 ca.crt broker.crt client.crt
echo "made ca.crt, broker.crt/.key (SAN $san), client.crt/.key in $out"
