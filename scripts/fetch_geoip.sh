#!/usr/bin/env bash
# Fetches the IP-to-country and IP-to-ASN databases that timed's peer
# diversity reads ([p2p.diversity] country_db and asn_db) into DIR:
#
#   DIR/country.mmdb  from @ip-location-db/geo-whois-asn-country-mmdb
#                     (package licence CC0-1.0; built from RIR whois data
#                     of the NRO, CC BY 4.0, and geofeeds)
#   DIR/asn.mmdb      from @ip-location-db/asn (CC BY 4.0: RouteViews,
#                     NRO, DB-IP), shipped as CSV and converted to a
#                     MaxMind DB by scripts/asn_csv_to_mmdb.py
#   DIR/licenses/     the licence and attribution files of both packages
#
# Both packages come from the npm registry: the latest version's tarball
# (dist.tarball) is checked against its dist.integrity (sha512) and
# dist.shasum (sha1) before anything is extracted. The registry is the one
# npm is configured with: $npm_config_registry, else `npm config get
# registry` (npm itself is not needed when the variable is set).
#
# Idempotent: a database whose DIR/<name>.source stamp matches its sha256
# is kept without contacting the registry; --force fetches both again.
# Concurrent runs on one DIR wait for each other (flock, when present).
#
# Usage: scripts/fetch_geoip.sh [--force] DIR
# Needs: curl, tar, gzip, sha1sum, sha256sum, sha512sum, python3.
set -euo pipefail

COUNTRY_PKG="@ip-location-db/geo-whois-asn-country-mmdb"
COUNTRY_FILE="package/geo-whois-asn-country.mmdb"
ASN_PKG="@ip-location-db/asn"
ASN_V4_FILE="package/asn-ipv4.csv"
ASN_V6_FILE="package/asn-ipv6.csv"

SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "fetch_geoip: $*" >&2; }
die() {
    echo "fetch_geoip: error: $*" >&2
    exit 1
}
usage() {
    echo "usage: $0 [--force] DIR" >&2
    exit 2
}

force=0
dir=""
for arg in "$@"; do
    case "$arg" in
    --force) force=1 ;;
    -h | --help) usage ;;
    -*) die "unknown option $arg (usage: $0 [--force] DIR)" ;;
    *)
        [ -z "$dir" ] || usage
        dir="$arg"
        ;;
    esac
done
[ -n "$dir" ] || usage

for tool in curl tar gzip sha1sum sha256sum sha512sum python3; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "$tool is not installed (Debian: apt-get install curl tar gzip coreutils python3)"
done

mkdir -p "$dir" || die "cannot create $dir"
dir="$(cd "$dir" && pwd)"

if command -v flock >/dev/null 2>&1; then
    exec 9>"$dir/.fetch.lock"
    flock 9
fi

work="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# True when DIR/NAME is a MaxMind DB whose sha256 is the one its stamp
# DIR/NAME.source records.
is_current() {
    local name="$1"
    [ -s "$dir/$name" ] && [ -s "$dir/$name.source" ] || return 1
    local want have
    want="$(cut -d' ' -f1 "$dir/$name.source")"
    have="$(sha256sum "$dir/$name" | cut -d' ' -f1)"
    [ "$want" = "$have" ] || return 1
    python3 - "$dir/$name" <<'EOF'
import sys
with open(sys.argv[1], "rb") as f:
    f.seek(0, 2)
    size = f.tell()
    f.seek(max(0, size - 128 * 1024))
    tail = f.read()
sys.exit(0 if b"\xab\xcd\xefMaxMind.com" in tail else 1)
EOF
}

registry=""
# The registry's base URL, from npm's configuration.
registry_url() {
    if [ -z "$registry" ]; then
        registry="${npm_config_registry:-${NPM_CONFIG_REGISTRY:-}}"
        if [ -z "$registry" ] && command -v npm >/dev/null 2>&1; then
            registry="$(npm config get registry 2>/dev/null || true)"
        fi
        [ -n "$registry" ] ||
            die "no npm registry configured: set npm_config_registry to the registry's URL, or install npm"
        registry="${registry%/}"
    fi
    echo "$registry"
}

# Downloads the latest version of package $1 into $2/pkg.tgz, verified, and
# extracts it to $2/package; prints "VERSION LICENSE".
fetch_package() {
    local pkg="$1" into="$2" base
    base="$(registry_url)"
    local meta="$into/packument.json"
    # Scoped names travel with the slash encoded, as npm sends them.
    local url="$base/${pkg/\//%2f}"
    curl -fsSL --retry 3 --connect-timeout 30 --max-time 120 -o "$meta" "$url" ||
        die "cannot read $pkg from the npm registry ($url)"
    local fields
    fields="$(
        python3 - "$meta" <<'EOF'
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
    version = doc["dist-tags"]["latest"]
    meta = doc["versions"][version]
    dist = meta["dist"]
    print(version)
    print(dist["tarball"])
    print(dist.get("integrity", ""))
    print(dist.get("shasum", ""))
    print(str(meta.get("license", "unknown")).replace("\n", " "))
except (ValueError, KeyError, TypeError) as e:
    print(f"unexpected registry answer: {e!r}", file=sys.stderr)
    sys.exit(1)
EOF
    )" || die "cannot parse the registry's metadata of $pkg"
    local version tarball integrity shasum license
    {
        read -r version
        read -r tarball
        read -r integrity
        read -r shasum
        read -r license
    } <<<"$fields"
    [ -n "$integrity" ] || [ -n "$shasum" ] ||
        die "$pkg@$version has neither dist.integrity nor dist.shasum: refusing an unverifiable tarball"

    log "downloading $pkg@$version"
    curl -fsSL --retry 3 --connect-timeout 30 --max-time 900 -o "$into/pkg.tgz" "$tarball" ||
        die "cannot download $pkg@$version ($tarball)"

    if [ -n "$integrity" ]; then
        case "$integrity" in
        sha512-*) ;;
        *) die "$pkg@$version: unsupported dist.integrity $integrity (expected sha512-...)" ;;
        esac
        local got
        got="sha512-$(sha512sum "$into/pkg.tgz" | cut -d' ' -f1 |
            python3 -c 'import base64, sys; print(base64.b64encode(bytes.fromhex(sys.stdin.read().strip())).decode())')"
        [ "$got" = "$integrity" ] ||
            die "$pkg@$version: tarball integrity mismatch: registry says $integrity, download is $got"
    fi
    if [ -n "$shasum" ]; then
        local got1
        got1="$(sha1sum "$into/pkg.tgz" | cut -d' ' -f1)"
        [ "$got1" = "$shasum" ] ||
            die "$pkg@$version: tarball shasum mismatch: registry says $shasum, download is $got1"
    fi
    tar -xzf "$into/pkg.tgz" -C "$into" --no-same-owner --no-same-permissions ||
        die "$pkg@$version: cannot extract the tarball"
    echo "$version $license"
}

# Copies the licence and attribution files of an extracted package.
keep_licenses() {
    local from="$1" to="$dir/licenses/$2"
    mkdir -p "$to"
    local f
    for f in "$from"/package/*LICENSE* "$from"/package/MODIFICATIONS "$from"/package/README.md "$from"/package/package.json; do
        [ -f "$f" ] && cp "$f" "$to/"
    done
    return 0
}

# Moves $1 into place as DIR/$2 and writes its stamp.
install_db() {
    local file="$1" name="$2" source="$3"
    python3 - "$file" <<'EOF' || die "$name: the produced file is not a MaxMind DB"
import sys
with open(sys.argv[1], "rb") as f:
    data = f.read()
sys.exit(0 if b"\xab\xcd\xefMaxMind.com" in data[-128 * 1024:] else 1)
EOF
    mv -f "$file" "$dir/$name"
    echo "$(sha256sum "$dir/$name" | cut -d' ' -f1) $source" >"$dir/$name.source"
    log "$dir/$name: $source, $(wc -c <"$dir/$name") bytes"
}

if [ "$force" -eq 0 ] && is_current country.mmdb; then
    log "$dir/country.mmdb is current ($(cut -d' ' -f2- "$dir/country.mmdb.source"))"
else
    mkdir -p "$work/country"
    info="$(fetch_package "$COUNTRY_PKG" "$work/country")"
    [ -f "$work/country/$COUNTRY_FILE" ] ||
        die "$COUNTRY_PKG ${info%% *} has no $COUNTRY_FILE"
    keep_licenses "$work/country" country
    install_db "$work/country/$COUNTRY_FILE" country.mmdb "$COUNTRY_PKG@${info%% *} licence ${info#* }"
fi

if [ "$force" -eq 0 ] && is_current asn.mmdb; then
    log "$dir/asn.mmdb is current ($(cut -d' ' -f2- "$dir/asn.mmdb.source"))"
else
    mkdir -p "$work/asn"
    info="$(fetch_package "$ASN_PKG" "$work/asn")"
    for f in "$ASN_V4_FILE" "$ASN_V6_FILE"; do
        [ -f "$work/asn/$f" ] || die "$ASN_PKG ${info%% *} has no $f"
    done
    keep_licenses "$work/asn" asn
    python3 "$SCRIPTS/asn_csv_to_mmdb.py" "$work/asn/asn.mmdb" \
        "$work/asn/$ASN_V4_FILE" "$work/asn/$ASN_V6_FILE" \
        "IP to ASN from $ASN_PKG ${info%% *} (RouteViews, NRO, DB-IP; CC BY 4.0)" ||
        die "cannot convert $ASN_PKG ${info%% *} to a MaxMind DB"
    install_db "$work/asn/asn.mmdb" asn.mmdb "$ASN_PKG@${info%% *} licence ${info#* }"
fi
