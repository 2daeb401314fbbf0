#!/usr/bin/env bash
# Prepares a Debian 12 machine for Knowledge Agent and builds it: installs every build and
# runtime dependency from Debian's packages, builds pgvector from Debian's own source package
# when the server lacks it, and builds build/release/knowledge-agent. Idempotent.
# Runs as root, or as a user with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_MAJOR=${PG_MAJOR:-15}
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
export DEBIAN_FRONTEND=noninteractive

packages=(
  build-essential cmake pkg-config dpkg-dev ca-certificates openssl util-linux clang-format
  "postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" libpq-dev
  libcurl4-openssl-dev libssl-dev libyaml-cpp-dev nlohmann-json3-dev libsimdjson-dev libspdlog-dev libfmt-dev
  libcli11-dev libcpp-httplib-dev libstemmer-dev prometheus-cpp-dev curl
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-19 libclang-rt-19-dev  # the libFuzzer targets (fuzz/, KA_FUZZ): g++ has no libFuzzer
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
apt_updated=0
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  apt_updated=1
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# pgvector: bookworm has no package, so build trixie's source package against this server.
pg_config="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
if [ ! -f "$("$pg_config" --sharedir)/extension/vector.control" ]; then
  sources=/etc/apt/sources.list.d/knowledge-agent-pgvector-src.sources
  if [ ! -f "$sources" ]; then
    # Reuse the archive this machine already uses; its address is never written here.
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    if [ -z "$uri" ]; then
      echo "setup: cannot find the Debian archive URI in /etc/apt/sources.list.d/debian.sources" >&2
      exit 1
    fi
    printf 'Types: deb-src\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$uri" | "${SUDO[@]}" tee "$sources" >/dev/null
    apt_updated=0
  fi
  [ "$apt_updated" -eq 1 ] || "${SUDO[@]}" apt-get update -qq
  work=$(mktemp -d)
  chmod 755 "$work"  # apt's download sandbox user must be able to write here
  (
    cd "$work"
    apt-get source -qq --download-only pgvector 2>&1 | grep -v "unsandboxed" || true
    dpkg-source -x --no-check ./pgvector_*.dsc src >/dev/null
    make -s -C src -j"$(nproc)" PG_CONFIG="$pg_config" >/dev/null
    "${SUDO[@]}" make -s -C src install PG_CONFIG="$pg_config" >/dev/null
  )
  rm -rf "$work"
  echo "setup: installed pgvector $(awk -F"'" '/default_version/ {print $2}' "$("$pg_config" --sharedir)/extension/vector.control")"
fi

if [ "${KA_SETUP_SKIP_BUILD:-0}" != 1 ]; then
  cmake -S . -B build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF >/dev/null
  cmake --build build/release -j"$(nproc)" --target knowledge-agent
fi
