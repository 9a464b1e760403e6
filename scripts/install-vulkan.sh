#!/usr/bin/env bash
# A Vulkan driver SAPIEN 3 (ManiSkill3) can render with on a CPU-only machine: Mesa's lavapipe
# from Debian's bookworm-backports (25.0.x). Bookworm's own Mesa 22.3 is too old for SAPIEN 3.
# Does nothing when a recent enough mesa-vulkan-drivers is installed. Needs root (or sudo).
set -euo pipefail
MIN_MAJOR=23
installed=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
if [[ -n "$installed" && "${installed%%.*}" -ge $MIN_MAJOR ]] && dpkg-query -W libvulkan1 >/dev/null 2>&1; then
    echo "install-vulkan: mesa-vulkan-drivers $installed is installed"
    exit 0
fi
if [[ ! -r /etc/os-release ]] || ! grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then
    echo "install-vulkan: not Debian 12 (bookworm); install a Vulkan driver (Mesa >= $MIN_MAJOR lavapipe, or your GPU's) yourself" >&2
    exit 1
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "install-vulkan: needs root (or sudo) for apt-get" >&2; exit 1; }
    SUDO=sudo
fi
source_file=/etc/apt/sources.list.d/bookworm-backports.sources
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # The backports suite comes from the same Debian mirror the machine already uses for bookworm.
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [[ -z "$mirror" ]]; then
        mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    [[ -n "$mirror" ]] || { echo "install-vulkan: no bookworm apt source to add bookworm-backports beside" >&2; exit 1; }
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$mirror" | $SUDO tee "$source_file" >/dev/null
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
echo "install-vulkan: mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers) installed from bookworm-backports"
