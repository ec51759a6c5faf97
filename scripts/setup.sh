#!/usr/bin/env bash
# Install everything mailvm needs on Debian 12, idempotently: system packages
# (apt-get) and a virtual environment with the package and its Python deps.
# Usage: scripts/setup.sh            (run as root)
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # build + runtime for the Python dependencies
  python3 python3-venv python3-dev gcc make pkg-config ca-certificates
  libmilter-dev libvirt-dev libmagic1 libmagic-mgc libarchive13
  # archive tools and compilers used by tests (building fixtures: ISO, cab, PE, ELF samples)
  p7zip-full zip xorriso gcab openssl gcc-mingw-w64-x86-64 gcc-mingw-w64-i686 mono-mcs
  # detonation sandbox (process backend and guest image); Wine runs Windows samples,
  # poppler-utils renders PDFs inside the sandbox
  strace bubblewrap iproute2 iptables procps psmisc util-linux wine64 poppler-utils
  # 32-bit Windows programs (the i386 multiarch is added below) and .NET assemblies (Mono)
  wine32:i386 mono-runtime
  # Office documents opened (macros run) inside the sandbox; no-recommends: ~360 MB
  libreoffice-core libreoffice-writer libreoffice-calc libreoffice-impress
  # the qemu flash-clone backend and its guest image (mvctl image build)
  qemu-system-x86 qemu-utils debootstrap busybox-static lz4 cpio
  # libvirt (started by hand by scripts/start-libvirtd.sh where no systemd runs)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients tini
  # the mail path; sasl2-bin makes the lab Postfix's SMTP-AUTH users (saslpasswd2)
  postfix miltertest sasl2-bin libsasl2-modules
  # the web console's browser tests (selenium drives Debian's headless chromium)
  chromium chromium-driver
  # the shared scanned table and job queue of several hosts (tests start their own instance)
  redis-server
)

stamp=.venv/.setup-stamp
want=$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages)" >&2
  exit 2
fi

# wine32 is an i386 package: the architecture must be known to dpkg before apt can resolve it
if ! dpkg --print-foreign-architectures | grep -qx i386; then
  echo ">> dpkg --add-architecture i386"
  dpkg --add-architecture i386
  apt_stale=1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo ">> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix must not ask questions or start a system instance we do not use.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  echo "postfix postfix/mailname string $(hostname -f 2>/dev/null || hostname)" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
elif [ -n "${apt_stale:-}" ]; then
  apt-get update -qq
fi

# the scan workers (every parser of hostile mail content) drop root to this user (milter.worker_user)
if ! id mailvm >/dev/null 2>&1; then
  echo ">> useradd mailvm"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group mailvm
fi
# the qemu backend's clones drop root to this user (pool.qemu_user); no group, no home, no shell
if ! id mailvm-qemu >/dev/null 2>&1; then
  echo ">> useradd mailvm-qemu"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin mailvm-qemu
fi

# a venv copied or moved with the tree still runs the old tree's code: make it again
if [ -e .venv ] && ! python3 scripts/venv_check.py .; then
  echo ">> removing .venv (the reason is above)"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  echo ">> creating .venv (Debian's /usr/bin/python3: readable by the scan workers' user, unlike a Python under /root)"
  /usr/bin/python3 -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo ">> pip install -e .[test,bench]"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,bench]'
  echo "$want" > "$stamp"
fi
echo ">> setup done: $(.venv/bin/python --version), mailvm $(.venv/bin/python -c 'import mailvm,importlib.metadata as m; print(m.version("mailvm"))')"
