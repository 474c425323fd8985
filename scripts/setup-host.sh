#!/bin/sh
# Install what p2pdma-testbed needs on a Debian host: the system packages and a
# Python virtual environment (.venv) with the package installed editable.
# Idempotent; `make` runs it once (stamps: .venv/.installed, .venv/.installed-test).
set -eu
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# `make boot` (no argument): only what booting a guest needs — QEMU, the image build
# (mmdebstrap, mke2fs, zstd, depmod) and the venv.  The rest is for `make test` and the
# tools (`setup-host.sh test`): each command that needs one of those names the package
# when it is missing (testbed.util.procs.find_tool), so the split only makes the first
# `make boot` fetch less (chromium, the compilers and the arm64 emulator are most of it).
PKGS="qemu-system-x86 qemu-utils mmdebstrap e2fsprogs zstd kmod openssh-client python3-venv python3-pip"
if [ "${1:-}" = test ]; then
    # graphviz draws topology.svg; chromium (headless) is how the tests check that report.html
    # really renders; fonts-dejavu-core is the font both use.
    PKGS="$PKGS graphviz chromium fonts-dejavu-core"
    # gdb: `testbed boot --gdb` (and its CI test); the kernel build tools (testbed.kernel.build's
    # BUILD_PACKAGES): `testbed kernel build` and `testbed bisect` (CI bisects a tree make rejects)
    PKGS="$PKGS gdb build-essential flex bison bc libelf-dev libssl-dev dwarves"
    # ccache: profile kernel builds (testbed kernel build --profile) reuse objects across build
    # directories and rebuilds; xz-utils unpacks linux-source-X.Y (testbed kernel source debian)
    PKGS="$PKGS ccache xz-utils"
    # universal-ctags: --coverage maps kernel functions to their source lines (testbed.coverage.ctags)
    PKGS="$PKGS universal-ctags"
    # the kernel's selftests (kselftest:* workloads, testbed.kernel.selftests): vfio's library
    # links libuuid, iommu's iommufd test libcap
    PKGS="$PKGS uuid-dev libcap-dev"
    # arm64 guests (machine: {arch: aarch64}): QEMU's arm system emulator, the UEFI firmware a
    # topology with an expander host bridge boots through, the cross compiler of arm64 profile
    # kernels (testbed kernel build --arch aarch64)
    PKGS="$PKGS qemu-system-arm qemu-efi-aarch64 gcc-aarch64-linux-gnu"
fi
# the QEMU packages this mode wants from backports on bookworm
QEMU_PKGS="qemu-system-x86"
[ "${1:-}" = test ] && QEMU_PKGS="$QEMU_PKGS qemu-system-arm"

. /etc/os-release
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# QEMU must be new enough for the testbed's NVMe options; bookworm's 7.2 works,
# bookworm-backports' 10.0 is what the project is tested with.
want_backports=""
if [ "${VERSION_CODENAME:-}" = bookworm ]; then
    for q in $QEMU_PKGS; do
        if ! dpkg-query -W -f='${Version}' "$q" 2>/dev/null | grep -q bpo; then
            want_backports=yes
        fi
    done
fi
PY=${PYTHON:-python3}
# Debian's pip (23.x on bookworm) installs editable from pyproject.toml: no upgrade (it
# cost seconds of every fresh `make boot`).  `setup-host.sh test` adds the test tools
# (pytest-xdist, hypothesis, mypy), which `make boot` does not need.
PIP=".venv/bin/python -m pip install -q --disable-pip-version-check"
EXTRAS=""
[ "${1:-}" = test ] && EXTRAS="[test]"
python_env() {
    if [ ! -x .venv/bin/python ]; then
        "$PY" -m venv .venv
    fi
    # The testbed's bytecode, written once: with PYTHONDONTWRITEBYTECODE set (as on the
    # project's machines) every command compiled its modules again (0.1 s of CPU each run).
    .venv/bin/python -m compileall -q testbed >/dev/null || true
    $PIP -e ".$EXTRAS"
}

# The venv and the Debian packages are independent once python3-venv is there (it is
# on a stock Debian host): pip's downloads run beside apt's (a fresh `make boot` spent
# about 40 s in the two one after the other).
pip_pid=""
pip_log=$(mktemp)
# an apt failure (set -e) must not leave pip running behind the script
trap 'rm -f "$pip_log"; [ -z "$pip_pid" ] || kill "$pip_pid" 2>/dev/null || true' EXIT
if { [ -n "$missing" ] || [ -n "$want_backports" ]; } && "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    python_env >"$pip_log" 2>&1 &
    pip_pid=$!
fi

if [ -n "$missing" ] || [ -n "$want_backports" ]; then
    echo "setup-host: installing Debian packages:${missing:- (qemu from backports)}"
    if [ -n "$want_backports" ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        # backports from the mirror the host already uses (no address is written here)
        mirror=$(python3 -c 'from testbed.image.mirror import resolve_mirror; print(resolve_mirror("host"))')
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" \
            | $SUDO tee /etc/apt/sources.list.d/p2pdma-testbed-backports.sources >/dev/null
    fi
    $SUDO apt-get update -q
    if [ -n "$want_backports" ]; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
            -t bookworm-backports $QEMU_PKGS qemu-utils mmdebstrap
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $PKGS
fi

if [ -n "$pip_pid" ]; then
    rc=0
    wait "$pip_pid" || rc=$?
    pip_pid=""
    if [ "$rc" -ne 0 ]; then
        cat "$pip_log" >&2
        echo "setup-host: creating .venv failed (above)" >&2
        exit 1
    fi
    cat "$pip_log"
else
    python_env
fi
if [ "${1:-}" = test ]; then
    touch .venv/.installed .venv/.installed-test
else
    touch .venv/.installed
fi
echo "setup-host: ready ($(qemu-system-x86_64 --version | head -1))"
