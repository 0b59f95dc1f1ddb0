#!/bin/sh
# Regenerates the TEST-ONLY certificates (100 years): a CA, a node
# certificate for 127.0.0.1-4 and localhost, a client certificate for
# mutual TLS. The CA key is thrown away. Never use these outside tests.
set -e
cd "$(dirname "$0")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
  -days 36500 -subj "/CN=tower-cql testkit CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
for who in node client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $who.key -out $who.csr -subj "/CN=testkit $who"
  ext=ext; [ $who = client ] && ext=client
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 36500 -extfile san.cnf -extensions $ext
  openssl pkcs8 -topk8 -nocrypt -in $who.key -out $who.key.pk8 && mv $who.key.pk8 $who.key
done
rm -f ./*.csr ca.srl ca.key
