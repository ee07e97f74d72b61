# shellcheck shell=bash
# Shared facts about the cross targets; sourced by .ci/cross-setup,
# .ci/cross-build, .ci/qemu-smoke and the musl wrapper compilers.
#
# Cache of the unpacked Debian musl-dev trees (filled by .ci/cross-setup).
# Override with KEELSON_CROSS_CACHE (then set it for both setup and build).
KEELSON_CROSS_CACHE=${KEELSON_CROSS_CACHE:-/var/cache/keelson-cross}

KEELSON_TRIPLES=(
  aarch64-unknown-linux-gnu
  aarch64-unknown-linux-musl
  armv7-unknown-linux-gnueabihf
  armv7-unknown-linux-musleabihf
)

# triple_info TRIPLE: sets
#   T_GNU     GNU cross prefix (aarch64-linux-gnu / arm-linux-gnueabihf)
#   T_DEBARCH Debian architecture (arm64 / armhf)
#   T_QEMU    qemu-user program name without -static (qemu-aarch64 / qemu-arm)
#   T_LIBC    gnu | musl
# shellcheck disable=SC2034  # the T_* variables are used by the sourcing scripts
triple_info() {
  case "$1" in
    aarch64-unknown-linux-gnu)      T_GNU=aarch64-linux-gnu   T_DEBARCH=arm64 T_QEMU=qemu-aarch64 T_LIBC=gnu ;;
    aarch64-unknown-linux-musl)     T_GNU=aarch64-linux-gnu   T_DEBARCH=arm64 T_QEMU=qemu-aarch64 T_LIBC=musl ;;
    armv7-unknown-linux-gnueabihf)  T_GNU=arm-linux-gnueabihf T_DEBARCH=armhf T_QEMU=qemu-arm     T_LIBC=gnu ;;
    armv7-unknown-linux-musleabihf) T_GNU=arm-linux-gnueabihf T_DEBARCH=armhf T_QEMU=qemu-arm     T_LIBC=musl ;;
    *) echo "unsupported triple: $1 (supported: ${KEELSON_TRIPLES[*]})" >&2; return 1 ;;
  esac
}

# qemu_cmd TRIPLE: prints the qemu-user command line (one word per line)
# that runs a binary of TRIPLE on this host.
qemu_cmd() {
  triple_info "$1" || return 1
  local q
  if command -v "$T_QEMU" >/dev/null 2>&1; then q=$T_QEMU
  elif command -v "$T_QEMU-static" >/dev/null 2>&1; then q=$T_QEMU-static
  else echo "$T_QEMU not found: run .ci/cross-setup" >&2; return 1
  fi
  printf '%s\n' "$q"
  # glibc binaries need the target's dynamic loader and libc: the
  # libc6-*-cross packages put them under /usr/<gnu prefix>.
  if [ "$T_LIBC" = gnu ]; then printf '%s\n' -L "/usr/$T_GNU"; fi
}

# True when the current (stable/default) toolchain has the std of TRIPLE.
# Where it has not (armv7 musl when the rustup mirror lacks it), the build
# uses nightly with -Zbuild-std instead.
have_std() {
  rustup target list --installed 2>/dev/null | grep -qx "$1"
}
