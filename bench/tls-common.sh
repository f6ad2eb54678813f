# Shared by the TLS benchmarks (tls-compare.sh, tls-callgrind.sh,
# tls-solo.sh): sourced, not run. Needs $d (a scratch directory).

# Build bench target $1 (release) and print its executable.
bench_bin() {
  cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null | python3 -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("target",{}).get("name")==sys.argv[1] and m.get("executable"): print(m["executable"])' "$1" | tail -1
}

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# One CA, an ECDSA P-256 server certificate (localhost, 127.0.0.1) and a
# client certificate with a SPIFFE URI, in $d: ca.pem, server.{pem,key},
# client.{pem,key}.
make_certs() {
  ( cd "$d"
    openssl ecparam -name prime256v1 -genkey -noout -out ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 2 -subj "/CN=bench CA" -out ca.pem
    for who in server client; do
      openssl ecparam -name prime256v1 -genkey -noout -out $who.key
      openssl req -new -key $who.key -subj "/CN=$who" -out $who.csr
    done
    printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" > s.cnf
    printf "subjectAltName=URI:spiffe://bench.example/ns/load/sa/client\nextendedKeyUsage=clientAuth\n" > c.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 -extfile s.cnf -out server.pem
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 -extfile c.cnf -out client.pem
  ) >/dev/null 2>&1
  chmod 644 "$d"/*
}

# The backend every proxy forwards to: one nginx worker on port $1
# answering "200 ok"; config in $d/backend.conf (run it yourself).
backend_conf() {
  cat > "$d/backend.conf" <<NGX
worker_processes 1; daemon off; pid $d/be.pid; error_log $d/be.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $d/cb; proxy_temp_path $d/pt; fastcgi_temp_path $d/ft; uwsgi_temp_path $d/ut; scgi_temp_path $d/st;
  server { listen 127.0.0.1:$1; location / { return 200 "ok\n"; } } }
NGX
}
