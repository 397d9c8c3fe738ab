#!/usr/bin/env bash
# The test command (README, .ci/run): installs and starts what the tests need
# on a fresh Debian machine, then runs pytest with any arguments given.
#
#   bash tests/run.sh [PYTEST_ARGS...]
#
# As root it installs Debian packages (docker.io, debootstrap, python3-venv,
# chromium, docker-registry, podman, rootlesskit, iproute2, openssh-server,
# openssl and their helpers), starts dockerd if no engine
# answers and creates an ordinary user in the docker group and a data group for
# the non-root and rootless Podman tests. The test virtualenv, built with Debian's
# Python so that that user can run it too, and the image build caches live in
# $DOCKERKERNEL_TEST_CACHE; reruns reuse them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" = 0 ]; then
    default_cache=/var/cache/dockerkernel-test
else
    default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/dockerkernel-test
fi
export DOCKERKERNEL_TEST_CACHE=${DOCKERKERNEL_TEST_CACHE:-$default_cache}
venv=${DOCKERKERNEL_TEST_VENV:-$DOCKERKERNEL_TEST_CACHE/venv}
export DOCKERKERNEL_TEST_USER=${DOCKERKERNEL_TEST_USER:-dktester}

log() { printf '[run] %s\n' "$*" >&2; }
as_root() {
    if [ "$(id -u)" != 0 ]; then
        log "$1 is needed: run this script as root once, or set it up yourself."
        exit 1
    fi
}

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v chromium >/dev/null || missing+=(chromium)  # for the JupyterLab tests, with Playwright
command -v docker-registry >/dev/null || missing+=(docker-registry)  # a real registry on loopback
# Rootless Podman, run by the test user through its Docker-compatible socket.
command -v podman >/dev/null || missing+=(podman)
[ -x /usr/libexec/podman/catatonit ] || command -v catatonit >/dev/null || missing+=(catatonit)
command -v newuidmap >/dev/null || missing+=(uidmap)
command -v slirp4netns >/dev/null || missing+=(slirp4netns)
command -v rootlesskit >/dev/null || missing+=(rootlesskit)  # rootless Docker (docker.io's dockerd-rootless.sh)
command -v ip >/dev/null || missing+=(iproute2)  # the simulated GPU host's network namespace
command -v nsenter >/dev/null || missing+=(util-linux)
# The remote test host: sshd beside its dockerd, and TLS certificates made with openssl.
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    as_root "the Debian packages ${missing[*]}"
    log "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    as_root "a running Docker engine"
    log "starting dockerd"
    # Not in this run's TMPDIR, which may be a private folder that goes with the run.
    nohup env -u TMPDIR dockerd >/var/log/dockerd-tests.log 2>&1 &
    if ! timeout 60 bash -c 'until docker info >/dev/null 2>&1; do sleep 0.2; done'; then
        tail -20 /var/log/dockerd-tests.log >&2
        log "dockerd did not come up"
        exit 1
    fi
fi

if [ "$(id -u)" = 0 ]; then
    id -u "$DOCKERKERNEL_TEST_USER" >/dev/null 2>&1 || useradd --create-home "$DOCKERKERNEL_TEST_USER"
    usermod -aG docker "$DOCKERKERNEL_TEST_USER"
    # A group that only the test user is in, for datasets readable through a group.
    groupadd -f dockerkernel-data
    usermod -aG dockerkernel-data "$DOCKERKERNEL_TEST_USER"
    # Subordinate ids, for its rootless Podman.
    grep -q "^$DOCKERKERNEL_TEST_USER:" /etc/subuid 2>/dev/null \
        || usermod --add-subuids 100000-165535 --add-subgids 100000-165535 "$DOCKERKERNEL_TEST_USER"
fi

mkdir -p "$DOCKERKERNEL_TEST_CACHE"
if [ ! -x "$venv/bin/python" ]; then
    log "creating the test virtualenv in $venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
fi
log "installing dockerkernel and its test requirements"
"$venv/bin/pip" install -q ".[test]" 2> >(grep -v "is ignored: it is neither" >&2)

PATH="$venv/bin:$PATH" bash tests/images/build.sh

log "running the tests"
# pytest (not python -m pytest), so that the installed package is tested, not the source tree.
"$venv/bin/pytest" -p no:cacheprovider -rs "$@"
if [ $# -eq 0 ]; then
    # A short run of the performance benchmark, as a smoke test: its figures are printed,
    # never asserted (these machines are noisy); it fails only if a measure cannot be made.
    log "a short benchmark run"
    "$venv/bin/python" benchmarks/performance.py --quick 2> >(grep -v "without encryption" >&2)
    "$venv/bin/python" benchmarks/server_start.py --quick 2> >(grep -v "without encryption" >&2)
fi
