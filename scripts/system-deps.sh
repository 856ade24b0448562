#!/usr/bin/env bash
# System packages the tests use as real parts, installed with apt when missing
# (CI and fresh machines run as root):
#   postgresql  - server binaries for the throwaway clusters of the HA-store tests
#   softhsm2    - the PKCS#11 token that the envelope-encryption KEK is tested against
#   openssl     - the independent verifier of issued certificates
#   swtpm, swtpm-tools, tpm2-tools, libtss2-dev, pkg-config
#               - a software TPM for the device-identity path (and the headers tpm2-pytss builds with)
#   faketime    - runs a server in the future to prove expired certificates are refused
#   nats-server - the physical-floor fan-out baseline of the fan-out benchmark (bench/fanout.py)
#   chromium    - the browser the console's Playwright tests drive (tests/server/console)
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
{ [ -f /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null; } || need+=(softhsm2)
command -v openssl >/dev/null || need+=(openssl)
command -v swtpm >/dev/null || need+=(swtpm)
command -v swtpm_setup >/dev/null || need+=(swtpm-tools)
command -v tpm2_startup >/dev/null || need+=(tpm2-tools)
[ -f /usr/include/tss2/tss2_esys.h ] || need+=(libtss2-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v faketime >/dev/null || need+=(faketime)
command -v nats-server >/dev/null || need+=(nats-server)
command -v nft >/dev/null || need+=(nftables)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${need[*]} (install them with apt-get as root)" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
