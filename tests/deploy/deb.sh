#!/usr/bin/env bash
# The Debian package: builds the .deb with CPack in the shipped configuration (failpoints
# off), checks its metadata (dpkg-deb -I: name, version, Depends from dpkg-shlibdeps) and file
# list (dpkg-deb -c: binary, libexec helpers, unit, sysusers/tmpfiles, example config, the
# README the unit's Documentation= names), runs lintian against tests/deploy/lintian-allowed.txt,
# then installs it with apt into a container made from the debootstrap'd Debian 12 base
# (tests/deploy/base.sh, with systemd added), runs `dagster-sqs-worker --version`, checks the
# user and directories postinst made and `systemd-analyze verify` of the installed unit, and
# purges it. Without podman the install part is skipped loudly (a failure under CI=true), or
# runs on this machine itself with DSW_DEB_INSTALL_HOST=1 (root only).
#   tests/deploy/deb.sh [BUILD_DIR]   (default build-deb/; configured and built if needed)
# Exit status: 0 passed, 1 failed, 77 the install part was skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
bdir=$(realpath -m "${1:-$here/build-deb}") # absolute: podman -v needs it
t_start=$SECONDS
fail() { echo "deb: FAIL: $*" >&2; exit 1; }
log() { echo "deb: $*"; }

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
# podman, runc and debootstrap for the install in a Debian 12 container (tests/deploy/base.sh).
for p in dpkg-shlibdeps:dpkg-dev lintian:lintian podman:podman runc:runc debootstrap:debootstrap; do
    command -v "${p%%:*}" >/dev/null || need+=("${p#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi

# ---- build -------------------------------------------------------------------------------
t0=$SECONDS
cmake -S . -B "$bdir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr \
    -DDSW_FAILPOINTS=OFF -DDSW_WERROR=ON -DCMAKE_SKIP_INSTALL_ALL_DEPENDENCY=ON >/dev/null
grep -q '^DSW_FAILPOINTS:BOOL=OFF' "$bdir/CMakeCache.txt" || fail "$bdir is not a failpoints-off build"
cmake --build "$bdir" -j"${JOBS:-2}" --target dagster-sqs-worker dsw-exec >/dev/null
rm -f "$bdir"/dagster-sqs-worker_*.deb
(cd "$bdir" && cpack -G DEB >"$bdir/cpack.log" 2>&1) || { tail -n 20 "$bdir/cpack.log" >&2; fail cpack; }
version=$(sed -nE 's/^project\(dagster-sqs-worker VERSION ([0-9.]+).*/\1/p' CMakeLists.txt)
arch=$(dpkg --print-architecture)
deb=$bdir/dagster-sqs-worker_${version}_${arch}.deb
[ -s "$deb" ] || fail "no $deb"
log "built $(basename "$deb") ($(stat -c %s "$deb") bytes) in $((SECONDS - t0)) s"

# ---- metadata ----------------------------------------------------------------------------
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = dagster-sqs-worker ] || fail "Package: $(field Package)"
[ "$(field Version)" = "$version" ] || fail "Version: $(field Version)"
[ "$(field Architecture)" = "$arch" ] || fail "Architecture: $(field Architecture)"
[ -n "$(field Maintainer)" ] || fail "no Maintainer"
depends=$(field Depends)
for lib in libc6 libuv1 libcurl4 libjansson4 libpq5 libssl3 passwd procps; do
    grep -qE "(^|, )$lib( |,|$)" <<<"$depends" || fail "Depends lacks $lib: $depends"
done
info=$(dpkg-deb -I "$deb")
for script in postinst prerm postrm; do
    grep -qE "^ +[0-9]+ bytes, +[0-9]+ lines +\\* +$script " <<<"$info" || fail "no executable $script"
done
log "metadata: $(field Package) $(field Version) $(field Architecture); Depends: $depends"

# ---- files -------------------------------------------------------------------------------
dpkg-deb -c "$deb" >"$bdir/deb-files.txt"
files=$(awk '{ print $1, $2, $6 }' "$bdir/deb-files.txt")
want=(
    "-rwxr-xr-x root/root ./usr/bin/dagster-sqs-worker"
    "-rwxr-xr-x root/root ./usr/libexec/dagster-sqs-worker/dsw-exec"
    "-rwxr-xr-x root/root ./usr/libexec/dagster-sqs-worker/dsw-warm-runner.py"
    "-rw-r--r-- root/root ./usr/lib/systemd/system/dagster-sqs-worker.service"
    "-rw-r--r-- root/root ./usr/lib/sysusers.d/dagster-sqs-worker.conf"
    "-rw-r--r-- root/root ./usr/lib/tmpfiles.d/dagster-sqs-worker.conf"
    "-rw-r--r-- root/root ./usr/share/doc/dagster-sqs-worker/README.md"
    "-rw-r--r-- root/root ./usr/share/doc/dagster-sqs-worker/changelog.gz"
    "-rw-r--r-- root/root ./usr/share/doc/dagster-sqs-worker/copyright"
    "-rw-r--r-- root/root ./usr/share/doc/dagster-sqs-worker/examples/worker.conf"
)
for w in "${want[@]}"; do
    grep -qxF -- "$w" <<<"$files" || fail "missing or wrong mode/owner: $w"
done
# Nothing outside /usr (the package leaves /etc to the operator and tmpfiles.d), nothing that
# is not owned by root, no test programs.
bad=$(awk '$6 !~ /^\.\/(usr\/.*)?$/ || $2 != "root/root" || $6 ~ /fake_dagster|unit_|integ_/' "$bdir/deb-files.txt")
[ -z "$bad" ] || fail "unexpected entries: $bad"
doc=$(sed -nE 's|^Documentation=file:||p' systemd/dagster-sqs-worker.service)
grep -qxF -- ".$doc" <<<"$(awk '{ print $6 }' "$bdir/deb-files.txt")" || fail "the unit's Documentation= $doc is not in the package"
# The packaged binary is the shipped configuration: no failpoints compiled in (failpoint.c's
# setup message exists only in DSW_FAILPOINTS builds).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp/root"
! grep -qa 'DSW_FAILPOINTS is malformed' "$tmp/root/usr/bin/dagster-sqs-worker" || fail "failpoints are compiled into the package"
cmp -s "$tmp/root/usr/lib/systemd/system/dagster-sqs-worker.service" systemd/dagster-sqs-worker.service ||
    fail "the packaged unit differs from systemd/"
log "files: $(wc -l <"$bdir/deb-files.txt") entries, the $((${#want[@]})) expected ones with their modes"

# ---- lintian -----------------------------------------------------------------------------
lintian --no-tag-display-limit "$deb" >"$bdir/lintian.txt" 2>/dev/null || true
allowed=$(sed -nE 's/^([a-z0-9-]+) #.*/\1/p' tests/deploy/lintian-allowed.txt)
unexpected=$(awk '/^[EWX]: / { print $3 }' "$bdir/lintian.txt" | sort -u | grep -vxF -f <(echo "$allowed") || true)
[ -z "$unexpected" ] || { cat "$bdir/lintian.txt" >&2; fail "lintian tags not in tests/deploy/lintian-allowed.txt: $unexpected"; }
log "lintian: $(grep -cE '^[EW]: ' "$bdir/lintian.txt" || true) tag(s), each explained in tests/deploy/lintian-allowed.txt"

# ---- install, run, purge ------------------------------------------------------------------
# The same steps run in a container from the base, or on this machine.
cat >"$tmp/install.sh" <<'SH'
set -eu
deb=$1
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/tmp/apt.log 2>&1 || { tail -n 20 /tmp/apt.log; exit 1; }
apt-get install -y -qq --no-install-recommends "$deb" >/tmp/apt.log 2>&1 || { tail -n 20 /tmp/apt.log; exit 1; }
v=$(dagster-sqs-worker --version)
echo "installed: $v"
getent passwd dagster-sqs-worker | grep -q ':/var/lib/dagster-sqs-worker:/usr/sbin/nologin$' || { echo "no service user"; exit 1; }
[ "$(stat -c '%a %U %G' /etc/dagster-sqs-worker)" = "750 root dagster-sqs-worker" ] || { echo "bad /etc/dagster-sqs-worker"; exit 1; }
[ -x /usr/libexec/dagster-sqs-worker/dsw-exec ] || { echo "no dsw-exec"; exit 1; }
if command -v systemd-analyze >/dev/null; then
    out=$(systemd-analyze verify --man=no /usr/lib/systemd/system/dagster-sqs-worker.service 2>&1 || true)
    # In a container without a running systemd, verify cannot reach the bus; only messages
    # about the unit file itself count.
    bad=$(printf '%s\n' "$out" | grep -i 'dagster-sqs-worker.service' || true)
    [ -z "$bad" ] || { echo "systemd-analyze verify: $bad"; exit 1; }
    echo "systemd-analyze verify: clean"
fi
dagster-sqs-worker check-config -c /usr/share/doc/dagster-sqs-worker/examples/worker.conf >/dev/null 2>&1 || true
apt-get purge -y -qq dagster-sqs-worker >/tmp/apt.log 2>&1 || { tail -n 20 /tmp/apt.log; exit 1; }
for f in /usr/bin/dagster-sqs-worker /usr/libexec/dagster-sqs-worker /etc/dagster-sqs-worker; do
    [ ! -e "$f" ] || { echo "left after purge: $f"; exit 1; }
done
echo "purged"
SH
t0=$SECONDS
# podman info can fail for a moment while another stage's podman holds its storage lock: ask
# a few times before calling podman absent.
podman_ok() {
    command -v podman >/dev/null && [ "$(id -u)" = 0 ] || return 1
    for _ in 1 2 3 4 5; do
        podman --runtime runc info >/dev/null 2>&1 && return 0
        sleep 3
    done
    podman --runtime runc info 2>&1 | tail -n 3 >&2
    return 1
}
if podman_ok; then
    base=$(bash tests/deploy/base.sh)
    img=localhost/dsw-deb-test:bookworm
    # The base plus systemd (for systemd-sysusers, -tmpfiles and -analyze); cached by podman.
    printf 'FROM %s\nRUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd\n' \
        "$base" >"$tmp/Containerfile"
    podman --runtime runc build --network=host -t "$img" -f "$tmp/Containerfile" "$tmp" >"$tmp/build.log" 2>&1 ||
        { tail -n 20 "$tmp/build.log" >&2; fail "test base image"; }
    # Twice: with systemd (sysusers/tmpfiles, systemd-analyze) and on the bare base (postinst's
    # useradd/install fallbacks).
    out=
    for i in "$img" "$base"; do
        out+="in $i:"$'\n'
        out+=$(podman --runtime runc run --rm --network=host --ulimit nofile=1024:1024 \
            --ulimit nproc=4096:4096 --no-healthcheck -v "$deb:/tmp/pkg.deb:ro" \
            -v "$tmp/install.sh:/tmp/install.sh:ro" "$i" sh /tmp/install.sh /tmp/pkg.deb) ||
            { echo "$out" >&2; fail "install in the container $i"; }
        out+=$'\n'
    done
    where="Debian 12 containers (with and without systemd)"
elif [ "${DSW_DEB_INSTALL_HOST:-0}" = 1 ] && [ "$(id -u)" = 0 ]; then
    ! dpkg-query -W dagster-sqs-worker >/dev/null 2>&1 || fail "dagster-sqs-worker is already installed here"
    cp "$deb" "$tmp/pkg.deb"
    chmod 755 "$tmp"
    out=$(sh "$tmp/install.sh" "$tmp/pkg.deb") || { echo "$out" >&2; fail "install on this machine"; }
    where="this machine"
else
    echo "deb: ======== SKIPPED the install: no podman (set DSW_DEB_INSTALL_HOST=1 as root to install here) ========" >&2
    [ "${CI:-}" != true ] || fail "CI=true: a skipped install is a failure"
    exit 77
fi
echo "$out" | sed 's/^/deb:   /'
log "installed, ran, purged in $where in $((SECONDS - t0)) s"
log "PASS in $((SECONDS - t_start)) s"
