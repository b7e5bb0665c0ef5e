#!/usr/bin/env bash
# Install the host packages scope-recorder needs, idempotently and quietly.
#
#   scripts/host-setup.sh          what recording, replay and the demo need
#   scripts/host-setup.sh --test   plus what the test suite drives (PostgreSQL, iptables, ...)
#
# Prints nothing when everything is present. Without root or without apt it says what
# to install and exits 0, so that `make` goes on with what it can.
set -u

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
packages=(python3-bpfcc libbpfcc "linux-headers-$arch" graphviz iproute2)
# The C modules (eventlog/_native.c, eventlog/_scan.c) are compiled by `pip install`.
packages+=(gcc libc6-dev python3-dev libsqlite3-dev)
# Sanitizer runtimes: make test runs the C modules built with ASan and UBSan too.
if (( want_test )); then packages+=(libasan8 libubsan1); fi
if (( want_test )); then
    packages+=(postgresql iptables conntrack bpftool)
    # The browser test of scope-replay serve: Debian's own headless Chromium and its driver.
    packages+=(chromium chromium-driver)
    # The container tests: podman's API service, Debian's runc (crun refuses hybrid cgroup
    # hosts), and busybox-static to build an image locally (nothing is pulled).
    packages+=(podman runc busybox-static)
fi
if ! "${PYTHON:-python3}" -c 'import ensurepip, venv' 2>/dev/null; then
    packages+=(python3-venv)
fi

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for pkg in "${packages[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
done

if (( ${#missing[@]} )); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "host-setup: installing ${missing[*]}"
        log=$(mktemp)
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            echo "host-setup: apt-get failed; continuing without: ${missing[*]}" >&2
        fi
        rm -f "$log"
    else
        echo "host-setup: missing packages: ${missing[*]}" >&2
        echo "host-setup: as root run: apt-get install ${missing[*]}" >&2
        echo "host-setup: continuing; eBPF capture falls back to /proc mode without bcc" >&2
    fi
fi

# bcc compiles its programs against kernel headers found through /lib/modules/<release>.
# Hosts often run a newer kernel than any packaged headers; Debian's newest headers work for
# the tracepoint programs (struct offsets come from BTF at run time, not from these headers).
release=$(uname -r)
moddir="/lib/modules/$release"
if [[ ! -e "$moddir/build" ]]; then
    build=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n 1)
    if [[ -n "$build" && -d "${build%-"$arch"}-common" ]]; then
        if [[ $(id -u) -eq 0 ]]; then
            mkdir -p "$moddir"
            ln -sfn "$build" "$moddir/build"
            ln -sfn "${build%-"$arch"}-common" "$moddir/source"
            echo "host-setup: linked $moddir/build -> $build"
        else
            echo "host-setup: as root run: ln -s $build $moddir/build" >&2
        fi
    else
        echo "host-setup: no kernel headers under /usr/src; bcc cannot compile programs" >&2
    fi
fi
exit 0
