#!/bin/sh
# keelson installer: puts the keelson binary, its systemd unit, an environment file and the
# killall/uninstall scripts on a board, then enables and starts the service.
#
#   curl -sfL <download-base>/install.sh | KEELSON_TOKEN=secret sh -
#   curl -sfL <download-base>/install.sh | KEELSON_URL=https://server:6443 KEELSON_TOKEN=secret sh -
#
# The role is agent when KEELSON_URL is set, server otherwise (a re-run of an installed agent
# stays an agent). Re-running upgrades the binary in place and keeps the environment file's
# values (values given again override them) and the unit's extra flags (unless
# INSTALL_KEELSON_EXEC is given again).
#
# Variables:
#   INSTALL_KEELSON_DOWNLOAD_BASE  base URL holding <version>/keelson-<arch> and
#                                  <version>/sha256sum-<arch>.txt
#   INSTALL_KEELSON_VERSION        version directory to download (default: latest)
#   INSTALL_KEELSON_SKIP_DOWNLOAD  true: use INSTALL_KEELSON_BINARY, or the binary already in
#                                  INSTALL_KEELSON_BIN_DIR, instead of downloading
#   INSTALL_KEELSON_BINARY         a local keelson binary to install (with SKIP_DOWNLOAD)
#   INSTALL_KEELSON_SHA256_FILE    a sha256sum file to verify a local binary against
#   INSTALL_KEELSON_BIN_DIR        where the binary and scripts go (default: /usr/local/bin)
#   INSTALL_KEELSON_SYSTEMD_DIR    where the unit and env file go (default: /etc/systemd/system)
#   INSTALL_KEELSON_EXEC           extra flags appended to the unit's ExecStart
#   INSTALL_KEELSON_SKIP_ENABLE    true: do not enable (nor start) the service
#   INSTALL_KEELSON_SKIP_START     true: do not start the service
#   KEELSON_TOKEN, KEELSON_URL and every other KEELSON_* variable: written to the env file.

set -eu

# --- output -------------------------------------------------------------------------------

info() {
    echo "[keelson install] $*"
}

fatal() {
    echo "[keelson install] error: $*" >&2
    exit 1
}

# Single-quotes $1 for a shell script.
sh_quote() {
    printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

# Quotes $1 as one word of a systemd command line: plain words stay as they are; others go in
# double quotes with `\` and `"` escaped, and `%` and `$` doubled (systemd specifiers and
# variables).
unit_quote() {
    case $1 in
        *[!A-Za-z0-9_./:=,@+-]* | '')
            printf '"%s"' "$(printf '%s' "$1" | sed -e 's/[\\"]/\\&/g' -e 's/%/%%/g' -e 's/\$/$$/g')"
            ;;
        *) printf '%s' "$1" ;;
    esac
}

# --- settings -----------------------------------------------------------------------------

setup_env() {
    BIN_DIR=${INSTALL_KEELSON_BIN_DIR:-/usr/local/bin}
    SYSTEMD_DIR=${INSTALL_KEELSON_SYSTEMD_DIR:-/etc/systemd/system}
    VERSION=${INSTALL_KEELSON_VERSION:-latest}
    BIN=$BIN_DIR/keelson
    KILLALL=$BIN_DIR/keelson-killall.sh

    if [ -n "${KEELSON_URL:-}" ]; then
        ROLE=agent
    elif [ -f "$SYSTEMD_DIR/keelson-agent.service" ] && [ ! -f "$SYSTEMD_DIR/keelson.service" ]; then
        ROLE=agent
        info "keelson-agent.service is installed: upgrading the agent (set KEELSON_URL to change its server)"
    else
        ROLE=server
    fi
    if [ "$ROLE" = agent ]; then
        SERVICE=keelson-agent
        OTHER=keelson
    else
        SERVICE=keelson
        OTHER=keelson-agent
    fi
    UNIT=$SYSTEMD_DIR/$SERVICE.service
    ENV_FILE=$SYSTEMD_DIR/$SERVICE.service.env
    UNINSTALL=$BIN_DIR/$SERVICE-uninstall.sh

    if [ -d /run/systemd/system ]; then
        INIT=systemd
    else
        INIT=none
    fi
}

# amd64, arm64 or armhf from `uname -m`; anything else stops the install before it changes
# anything.
setup_arch() {
    machine=$(uname -m)
    case $machine in
        x86_64 | amd64) ARCH=amd64 ;;
        aarch64 | arm64) ARCH=arm64 ;;
        armv7l | armv8l | armhf) ARCH=armhf ;;
        *) fatal "unsupported architecture '$machine': keelson is built for x86_64 (amd64), aarch64 (arm64) and armv7l/armv8l (armhf); nothing was installed" ;;
    esac
}

# --- the binary ---------------------------------------------------------------------------

# Fetches $1 into the file $2 with curl or wget.
download() {
    if command -v curl >/dev/null 2>&1; then
        curl --fail --silent --show-error --location --output "$2" "$1" ||
            fatal "cannot download $1"
    elif command -v wget >/dev/null 2>&1; then
        wget --quiet --output-document="$2" "$1" || fatal "cannot download $1"
    else
        fatal "neither curl nor wget is installed: cannot download $1"
    fi
}

# The SHA-256 that the sha256sum file $1 gives for keelson: the line naming keelson-<arch>
# or keelson, else the only line.
expected_hash() {
    hash=$(awk -v a="keelson-$ARCH" '{ n = $2; sub(/^\*/, "", n); sub(/.*\//, "", n) }
        n == a || n == "keelson" { print $1; exit }' "$1")
    if [ -z "$hash" ] && [ "$(grep -c . "$1")" -eq 1 ]; then
        hash=$(awk 'NF { print $1 }' "$1")
    fi
    [ -n "$hash" ] || fatal "the checksum file $1 names no keelson-$ARCH"
    printf '%s' "$hash" | tr 'A-F' 'a-f'
}

# Verifies the file $1 against the sha256sum file $2; on a mismatch nothing was replaced.
verify() {
    command -v sha256sum >/dev/null 2>&1 || fatal "sha256sum is needed to verify the binary"
    want=$(expected_hash "$2")
    got=$(sha256sum "$1" | awk '{ print $1 }')
    if [ "$want" != "$got" ]; then
        fatal "checksum mismatch for keelson-$ARCH: expected $want, got $got (from $2); nothing was installed or replaced"
    fi
    info "verified SHA-256 $got"
}

# Puts the new binary at $NEW (beside $BIN, so the final `mv` is atomic) and verifies it.
stage_binary() {
    mkdir -p "$BIN_DIR"
    NEW=$BIN_DIR/.keelson.new.$$
    if [ "${INSTALL_KEELSON_SKIP_DOWNLOAD:-false}" = true ]; then
        src=${INSTALL_KEELSON_BINARY:-$BIN}
        [ -f "$src" ] || fatal "INSTALL_KEELSON_SKIP_DOWNLOAD=true but there is no binary at $src (put it there or name it with INSTALL_KEELSON_BINARY)"
        cp "$src" "$NEW"
        if [ -n "${INSTALL_KEELSON_SHA256_FILE:-}" ]; then
            [ -f "$INSTALL_KEELSON_SHA256_FILE" ] || fatal "no checksum file at $INSTALL_KEELSON_SHA256_FILE"
            verify "$NEW" "$INSTALL_KEELSON_SHA256_FILE"
        else
            info "no INSTALL_KEELSON_SHA256_FILE: installing $src unverified"
        fi
    else
        [ -n "${INSTALL_KEELSON_DOWNLOAD_BASE:-}" ] ||
            fatal "set INSTALL_KEELSON_DOWNLOAD_BASE to download keelson, or INSTALL_KEELSON_SKIP_DOWNLOAD=true to install a local binary"
        base=${INSTALL_KEELSON_DOWNLOAD_BASE%/}/$VERSION
        sums=$BIN_DIR/.keelson.sha256.$$
        info "downloading keelson $VERSION for $ARCH from $base"
        download "$base/sha256sum-$ARCH.txt" "$sums"
        download "$base/keelson-$ARCH" "$NEW"
        verify "$NEW" "$sums"
        rm -f "$sums"
    fi
    chmod 0755 "$NEW"
    "$NEW" --version >/dev/null 2>&1 || fatal "the keelson binary does not run on this board ($ARCH); nothing was replaced"
}

# --- configuration ------------------------------------------------------------------------

# The extra ExecStart flags, one word a line: from INSTALL_KEELSON_EXEC when given (even
# empty; split at blanks, no quoting), else the ones the installed unit already has.
exec_words() {
    if [ "${INSTALL_KEELSON_EXEC+set}" = set ]; then
        set -f
        # shellcheck disable=SC2086 # the flags are split into words on purpose
        set -- $INSTALL_KEELSON_EXEC
        set +f
        [ $# -eq 0 ] || printf '%s\n' "$@"
    elif [ -f "$UNIT" ]; then
        sed -n "s|^ExecStart=.*/keelson $ROLE||p" "$UNIT" | head -n 1 | tr ' ' '\n' |
            grep . | sed -e 's/^"\(.*\)"$/\1/' -e 's/\\\(.\)/\1/g' -e 's/%%/%/g' -e 's/\$\$/$/g'
    fi
    return 0
}

# Sets DATA_DIR, KUBECONFIG_PATH and CNI_CONF_DIR (for the generated scripts) from the extra
# flags (one a line in $1), then the env file, then the defaults, as keelson resolves them.
setup_paths() {
    DATA_DIR=$(env_value KEELSON_DATA_DIR)
    KUBECONFIG_PATH=$(env_value KEELSON_KUBECONFIG_OUTPUT)
    CNI_CONF_DIR=$(env_value KEELSON_CNI_CONF_DIR)
    old_ifs=$IFS
    IFS='
'
    set -f
    # shellcheck disable=SC2086 # one flag a line
    set -- $1
    set +f
    IFS=$old_ifs
    while [ $# -gt 0 ]; do
        case $1 in
            --data-dir=* | -d=*) DATA_DIR=${1#*=} ;;
            --data-dir | -d) [ $# -lt 2 ] || DATA_DIR=$2 ;;
            --write-kubeconfig=* | -o=*) KUBECONFIG_PATH=${1#*=} ;;
            --write-kubeconfig | -o) [ $# -lt 2 ] || KUBECONFIG_PATH=$2 ;;
            --cni-conf-dir=*) CNI_CONF_DIR=${1#*=} ;;
            --cni-conf-dir) [ $# -lt 2 ] || CNI_CONF_DIR=$2 ;;
        esac
        shift
    done
    DATA_DIR=${DATA_DIR:-/var/lib/keelson}
    CNI_CONF_DIR=${CNI_CONF_DIR:-/etc/cni/net.d}
    if [ "$ROLE" = server ]; then
        KUBECONFIG_PATH=${KUBECONFIG_PATH:-/etc/keelson/keelson.yaml}
    else
        KUBECONFIG_PATH=
    fi
}

# The value of $1 in the merged env file being written, or nothing.
env_value() {
    [ -f "$ENV_NEW" ] || return 0
    sed -n "s/^$1=//p" "$ENV_NEW" | tail -n 1 | sed -e 's/^"//' -e 's/"$//' -e 's/\\\(.\)/\1/g'
}

# Writes the env file beside the old one: the old file's lines for variables not given now,
# then every KEELSON_* variable of this environment (and proxy settings), mode 0600.
stage_env_file() {
    ENV_NEW=$ENV_FILE.new.$$
    mkdir -p "$SYSTEMD_DIR"
    old_umask=$(umask)
    umask 0177
    : >"$ENV_NEW"
    umask "$old_umask"
    given=$(env | grep -E '^(KEELSON_[A-Z0-9_]*|HTTPS?_PROXY|NO_PROXY|https?_proxy|no_proxy)=' |
        cut -d= -f1 | sort -u)
    if [ "$ROLE" = server ]; then
        # A server has no server to join: a stray KEELSON_URL would make it an agent next time.
        given=$(printf '%s\n' "$given" | grep -v '^KEELSON_URL$' || true)
    fi
    if [ -f "$ENV_FILE" ]; then
        while IFS= read -r line || [ -n "$line" ]; do
            key=${line%%=*}
            if [ "$key" != "$line" ] && printf '%s\n' "$given" | grep -qx "$key"; then
                continue
            fi
            printf '%s\n' "$line" >>"$ENV_NEW"
        done <"$ENV_FILE"
    fi
    for key in $given; do
        value=
        eval "value=\${$key}"
        case $value in
            *"
"*) fatal "$key holds a line break, which an environment file cannot carry" ;;
        esac
        printf '%s="%s"\n' "$key" "$(printf '%s' "$value" | sed 's/[\\"]/\\&/g')" >>"$ENV_NEW"
    done
    if [ "$ROLE" = server ] && ! grep -q '^KEELSON_TOKEN=' "$ENV_NEW"; then
        info "no KEELSON_TOKEN: the server generates one (<data-dir>/server/token)"
    fi
    if [ "$ROLE" = agent ] && ! grep -qE '^KEELSON_TOKEN(_FILE)?=' "$ENV_NEW"; then
        fatal "an agent needs KEELSON_TOKEN (the server's <data-dir>/server/token) to join ${KEELSON_URL:-its server}"
    fi
}

# Prints the unit from the new binary, with the env file's real place and the extra flags.
stage_unit() {
    UNIT_NEW=$UNIT.new.$$
    words=$(exec_words)
    setup_paths "$words"
    suffix=
    while IFS= read -r word; do
        [ -z "$word" ] || suffix="$suffix $(unit_quote "$word")"
    done <<WORDS
$words
WORDS
    "$NEW" unit "$ROLE" --bin-dir "$BIN_DIR" >"$UNIT_NEW" ||
        fatal "the new keelson binary cannot print its systemd unit (keelson unit $ROLE)"
    grep -qxF "ExecStart=$BIN $ROLE" "$UNIT_NEW" ||
        fatal "the unit keelson printed has no ExecStart=$BIN line"
    SUFFIX=$suffix ENV_AT=$ENV_FILE NAME=$SERVICE.service.env awk '
        /^EnvironmentFile=-\/etc\/systemd\/system\// && index($0, "/" ENVIRON["NAME"]) {
            print "EnvironmentFile=-" ENVIRON["ENV_AT"]; next
        }
        /^ExecStart=/ { print $0 ENVIRON["SUFFIX"]; next }
        { print }' "$UNIT_NEW" >"$UNIT_NEW.x"
    mv -f "$UNIT_NEW.x" "$UNIT_NEW"
    chmod 0644 "$UNIT_NEW"
}

# --- generated scripts --------------------------------------------------------------------

write_killall() {
    cat >"$KILLALL.new.$$" <<EOF
#!/bin/sh
# Generated by keelson's install.sh: stops keelson and everything it started on this board
# (its service, its processes, its containers, its mounts, its network devices and nftables
# tables). Installed files and data stay; see keelson-uninstall.sh for those.
set -u
BIN=$(sh_quote "$BIN")
DATA_DIR=$(sh_quote "$DATA_DIR")
EOF
    cat >>"$KILLALL.new.$$" <<'EOF'

[ "$(id -u)" -eq 0 ] || { echo "keelson-killall.sh: run it as root" >&2; exit 1; }

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    for unit in keelson.service keelson-agent.service; do
        systemctl stop "$unit" 2>/dev/null || true
    done
fi

# Every process running this binary (also one that an upgrade replaced): the server or
# agent, the per-container monitors and shared PID namespaces' inits.
keelson_pids() {
    for p in /proc/[0-9]*; do
        exe=$(readlink "$p/exe" 2>/dev/null) || continue
        if [ "$exe" = "$BIN" ] || [ "$exe" = "$BIN (deleted)" ]; then
            echo "${p#/proc/}"
        fi
    done
}

pids=$(keelson_pids)
if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null
    tries=0
    while [ -n "$(keelson_pids)" ] && [ "$tries" -lt 15 ]; do
        sleep 1
        tries=$((tries + 1))
    done
    pids=$(keelson_pids)
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
fi

# The containers, in runc's state directory under the data dir.
RUNC_ROOT=$DATA_DIR/agent/runc
if [ -d "$RUNC_ROOT" ] && command -v runc >/dev/null 2>&1; then
    for id in $(runc --root "$RUNC_ROOT" list -q 2>/dev/null); do
        runc --root "$RUNC_ROOT" delete --force "$id" 2>/dev/null ||
            echo "keelson-killall.sh: cannot remove container $id" >&2
    done
fi

# What is mounted under the data dir (overlays, volumes, pod namespaces), deepest first.
awk -v d="$DATA_DIR/" 'index($2, d) == 1 { print length($2), $2 }' /proc/self/mounts |
    sort -rn | cut -d' ' -f2- | while IFS= read -r m; do
        umount -l "$(printf '%b' "$m")" 2>/dev/null || true
    done

if command -v ip >/dev/null 2>&1; then
    # The pods' bridge, the vxlan device and the cluster DNS link.
    for link in cni0 keelson.1 keelson-dns; do
        if ip link show "$link" >/dev/null 2>&1; then
            ip link delete "$link" || echo "keelson-killall.sh: cannot delete $link" >&2
        fi
    done
    # The cluster DNS address, where a kernel without dummy links had it on lo.
    ip -o addr show dev lo label lo:keelson-dns 2>/dev/null | awk '{ print $4 }' |
        while IFS= read -r addr; do
            ip addr del "$addr" dev lo 2>/dev/null || true
        done
fi

if command -v nft >/dev/null 2>&1; then
    for table in keelson-services keelson-net; do
        if nft list table inet "$table" >/dev/null 2>&1; then
            nft delete table inet "$table" || echo "keelson-killall.sh: cannot delete table inet $table" >&2
        fi
    done
fi
exit 0
EOF
    chmod 0755 "$KILLALL.new.$$"
    mv -f "$KILLALL.new.$$" "$KILLALL"
}

write_uninstall() {
    cat >"$UNINSTALL.new.$$" <<EOF
#!/bin/sh
# Generated by keelson's install.sh: removes the keelson $ROLE from this board. The data dir
# (and the admin kubeconfig) stay unless --purge-data or KEELSON_UNINSTALL_PURGE=true.
set -u
SERVICE=$(sh_quote "$SERVICE")
OTHER=$(sh_quote "$OTHER")
BIN_DIR=$(sh_quote "$BIN_DIR")
SYSTEMD_DIR=$(sh_quote "$SYSTEMD_DIR")
DATA_DIR=$(sh_quote "$DATA_DIR")
KUBECONFIG_PATH=$(sh_quote "$KUBECONFIG_PATH")
CNI_CONF_DIR=$(sh_quote "$CNI_CONF_DIR")
EOF
    cat >>"$UNINSTALL.new.$$" <<'EOF'

purge=${KEELSON_UNINSTALL_PURGE:-false}
for arg; do
    case $arg in
        --purge-data) purge=true ;;
        -h | --help)
            echo "usage: $0 [--purge-data]   (--purge-data also removes $DATA_DIR)"
            exit 0
            ;;
        *)
            echo "$0: unknown argument $arg (usage: $0 [--purge-data])" >&2
            exit 2
            ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "$0: run it as root" >&2; exit 1; }

"$BIN_DIR/keelson-killall.sh"

systemd=false
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemd=true
    systemctl disable "$SERVICE.service" 2>/dev/null || true
    systemctl reset-failed "$SERVICE.service" 2>/dev/null || true
fi
rm -f "$SYSTEMD_DIR/$SERVICE.service" "$SYSTEMD_DIR/$SERVICE.service.env"
[ "$systemd" = false ] || systemctl daemon-reload

# The pod network's configuration keelson wrote (someone else's files there stay).
rm -f "$CNI_CONF_DIR/10-keelson.conflist"
if [ "$purge" = true ]; then
    rm -rf "$DATA_DIR"
    [ -z "$KUBECONFIG_PATH" ] || rm -f "$KUBECONFIG_PATH"
    rmdir /etc/keelson 2>/dev/null || true
    echo "removed keelson's data ($DATA_DIR)"
else
    echo "kept keelson's data in $DATA_DIR (run with --purge-data to remove it)"
fi

rm -f "$BIN_DIR/$SERVICE-uninstall.sh"
if [ -f "$SYSTEMD_DIR/$OTHER.service" ]; then
    echo "$OTHER.service is still installed: kept $BIN_DIR/keelson and keelson-killall.sh"
else
    rm -f "$BIN_DIR/keelson" "$BIN_DIR/keelson-killall.sh"
fi
echo "keelson $SERVICE uninstalled"
EOF
    chmod 0755 "$UNINSTALL.new.$$"
    mv -f "$UNINSTALL.new.$$" "$UNINSTALL"
}

# --- service ------------------------------------------------------------------------------

start_service() {
    if [ "$INIT" != systemd ]; then
        if [ "${INSTALL_KEELSON_SKIP_START:-false}" = true ]; then
            info "no systemd on this board (/run/systemd/system is missing): installed, not started"
            return 0
        fi
        fatal "no systemd on this board (/run/systemd/system is missing): keelson is installed but its service cannot be started here; run '$BIN $ROLE' yourself (the settings are in $ENV_FILE), or re-run with INSTALL_KEELSON_SKIP_START=true"
    fi
    systemctl daemon-reload
    if [ "${INSTALL_KEELSON_SKIP_ENABLE:-false}" = true ]; then
        info "INSTALL_KEELSON_SKIP_ENABLE=true: $SERVICE.service is neither enabled nor started"
        return 0
    fi
    systemctl enable "$SERVICE.service"
    if [ "${INSTALL_KEELSON_SKIP_START:-false}" = true ]; then
        info "INSTALL_KEELSON_SKIP_START=true: $SERVICE.service is enabled, not started"
        return 0
    fi
    info "starting $SERVICE.service"
    systemctl restart "$SERVICE.service"
}

cleanup() {
    rm -f "${NEW:-}" "${ENV_NEW:-}" "${UNIT_NEW:-}" "${UNIT_NEW:-}.x" "${sums:-}"
}

# --- main ---------------------------------------------------------------------------------

main() {
    setup_arch
    setup_env
    trap cleanup EXIT
    trap 'exit 1' INT TERM
    # Everything is staged and checked first; only then is anything replaced.
    stage_binary
    stage_env_file
    stage_unit
    mv -f "$NEW" "$BIN"
    info "installed $BIN ($("$BIN" --version 2>/dev/null | head -n 1))"
    mv -f "$ENV_NEW" "$ENV_FILE"
    mv -f "$UNIT_NEW" "$UNIT"
    info "wrote $UNIT and $ENV_FILE"
    write_killall
    write_uninstall
    info "wrote $KILLALL and $UNINSTALL"
    start_service
}

main "$@"
