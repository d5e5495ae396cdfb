#!/bin/sh
# Install kedge from this folder (the unpacked release tarball) as a systemd service.
#
#   sudo ./install.sh               install or upgrade; enable and (re)start the service
#   sudo ./install.sh --no-start    install or upgrade, do not touch the running service
#   sudo ./install.sh --uninstall   remove binary and unit; keep /etc/kedge and the data
#   sudo ./install.sh --purge       also delete /etc/kedge and the data in /var/lib/kedge
#
# Into another root (an image being built, a test): DESTDIR=/path ./install.sh
# (or --root /path). Then nothing outside that root is touched: no systemctl,
# and the kedge user is created only if the root has an /etc/passwd.
#
# Safe to run again: an existing /etc/kedge/kedge.env is never overwritten.
set -eu

SRC=$(cd "$(dirname "$0")" && pwd)
ROOT=${DESTDIR:-}
ACTION=install
START=yes

usage() {
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

while [ $# -gt 0 ]; do
	case "$1" in
	--uninstall) ACTION=uninstall ;;
	--purge) ACTION=purge ;;
	--no-start) START=no ;;
	--root) [ $# -ge 2 ] || { echo "install.sh: --root needs a directory" >&2; exit 2; }; ROOT=$2; shift ;;
	--root=*) ROOT=${1#--root=} ;;
	-h | --help) usage; exit 0 ;;
	*) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
	esac
	shift
done
ROOT=${ROOT%/}

BIN=$ROOT/usr/local/bin/kedge
ETC=$ROOT/etc/kedge
ENV_FILE=$ETC/kedge.env
UNIT=$ROOT/etc/systemd/system/kedge.service
DATA=$ROOT/var/lib/kedge

say() { echo "kedge: $*"; }
die() { echo "kedge: $*" >&2; exit 1; }

if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
	die "run as root (sudo $0), or set DESTDIR to install into another root"
fi

# A running systemd we may talk to: only for the real root.
systemd_up() { [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# Create or update $2 from $1 with mode $3; says what happened.
put() {
	if [ -f "$2" ] && cmp -s "$1" "$2"; then
		chmod "$3" "$2"
		say "unchanged $2"
		return 1
	fi
	verb=installed
	[ -f "$2" ] && verb=updated
	mkdir -p "$(dirname "$2")"
	# Copy next to it and rename: a running kedge keeps its old inode.
	cp "$1" "$2.new.$$"
	chmod "$3" "$2.new.$$"
	mv -f "$2.new.$$" "$2"
	say "$verb $2"
	return 0
}

ensure_user() {
	if [ -n "$ROOT" ]; then
		if [ ! -f "$ROOT/etc/passwd" ]; then
			say "skipped the kedge user: $ROOT has no /etc/passwd (create it on the target: useradd --system --user-group --home-dir /var/lib/kedge --shell /usr/sbin/nologin kedge)"
			return
		fi
		set -- --root "$ROOT"
	fi
	if grep -q '^kedge:' "$ROOT/etc/group" 2>/dev/null; then :; else
		groupadd "$@" --system kedge
	fi
	if grep -q '^kedge:' "$ROOT/etc/passwd" 2>/dev/null; then
		say "user kedge exists"
	else
		useradd "$@" --system --gid kedge --home-dir /var/lib/kedge --no-create-home \
			--shell /usr/sbin/nologin --comment "kedge edge agent" kedge
		say "created system user kedge"
	fi
}

uninstall() {
	if systemd_up; then
		systemctl disable --now kedge.service >/dev/null 2>&1 || true
		say "stopped and disabled kedge.service"
	elif [ -z "$ROOT" ] && command -v systemctl >/dev/null; then
		systemctl disable kedge.service >/dev/null 2>&1 || true
	elif [ -n "$ROOT" ]; then
		rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/kedge.service"
	fi
	for f in "$BIN" "$UNIT"; do
		if [ -e "$f" ]; then rm -f "$f"; say "removed $f"; fi
	done
	if systemd_up; then systemctl daemon-reload; fi
	if [ "$ACTION" = purge ]; then
		rm -rf "$DATA" "$ETC"
		say "deleted $DATA (the event log) and $ETC"
		say "the kedge user is kept; remove it with: userdel kedge"
	else
		say "kept $ETC and the data in $DATA (delete both with: $0 --purge)"
	fi
}

install_all() {
	[ -f "$SRC/kedge" ] || die "no kedge executable next to $0 (run it from the unpacked release tarball)"
	for f in kedge.service kedge.env.example; do
		[ -f "$SRC/$f" ] || die "$SRC/$f is missing (run it from the unpacked release tarball)"
	done

	# Does the executable run here? (Not required when filling another root.)
	runs=yes
	version=$(env -i PATH=/usr/bin:/bin "$SRC/kedge" version 2>/dev/null | sed -n 's/^kedge //p') || runs=no
	[ -n "$version" ] || runs=no
	if [ "$runs" = no ] && [ -z "$ROOT" ]; then
		die "$SRC/kedge does not run on this machine ($(uname -m)); pick the tarball for this architecture (x86_64: linux-x64, aarch64: linux-arm64)"
	fi

	changed=no
	if put "$SRC/kedge" "$BIN" 0755; then changed=yes; fi
	ensure_user

	mkdir -p "$ETC"
	chmod 0755 "$ETC"
	if [ -e "$ENV_FILE" ]; then
		say "kept the existing $ENV_FILE (not overwritten; every setting is in $SRC/kedge.env.example)"
		case $(stat -c %a "$ENV_FILE") in
		600 | 400) ;;
		*) say "warning: $ENV_FILE is readable by group or others and may hold secrets: chmod 600 $ENV_FILE" ;;
		esac
	else
		cp "$SRC/kedge.env.example" "$ENV_FILE.new.$$"
		chmod 0600 "$ENV_FILE.new.$$"
		mv "$ENV_FILE.new.$$" "$ENV_FILE"
		say "created $ENV_FILE (mode 0600; every setting commented out, with its default)"
	fi
	if [ -z "$ROOT" ]; then chown root:root "$ENV_FILE"; fi

	if put "$SRC/kedge.service" "$UNIT" 0644; then changed=yes; fi

	mkdir -p "$DATA"
	chmod 0750 "$DATA"
	if [ -z "$ROOT" ]; then chown kedge:kedge "$DATA"; fi

	config_ok=yes
	if [ "$runs" = yes ]; then
		# Exactly what the service sees: the unit's KEDGE_DATA_DIR and the env file, nothing from this shell.
		if problems=$(env -i PATH=/usr/bin:/bin KEDGE_DATA_DIR=/var/lib/kedge "$BIN" check-config --env-file "$ENV_FILE" 2>&1 >/dev/null); then
			say "configuration OK ($ENV_FILE)"
		else
			config_ok=no
			echo "$problems" >&2
		fi
	fi

	if [ "$START" = no ]; then
		say "not starting (--no-start)"
	elif [ -n "$ROOT" ]; then
		mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
		ln -sf /etc/systemd/system/kedge.service "$ROOT/etc/systemd/system/multi-user.target.wants/kedge.service"
		say "enabled kedge.service in $ROOT (starts on boot)"
	elif systemd_up; then
		systemctl daemon-reload
		systemctl enable kedge.service >/dev/null 2>&1
		if [ "$config_ok" = no ]; then
			say "enabled kedge.service but did NOT start it: fix $ENV_FILE, then: systemctl restart kedge"
		elif systemctl is-active --quiet kedge.service; then
			if [ "$changed" = yes ]; then
				systemctl restart kedge.service
				say "restarted kedge.service"
			else
				say "kedge.service is running (nothing changed)"
			fi
		else
			systemctl start kedge.service
			say "enabled and started kedge.service"
		fi
	else
		say "systemd is not running here: start kedge by hand with: $BIN run --env-file $ENV_FILE"
	fi

	if [ "$config_ok" = no ]; then say "the configuration has problems (listed above): fix /etc/kedge/kedge.env, then start kedge"; fi
	if [ "$runs" = yes ]; then say "version $version"; fi
	echo
	echo "  configuration:  /etc/kedge/kedge.env   then: systemctl restart kedge"
	echo "  check it:       kedge check-config --env-file /etc/kedge/kedge.env"
	echo "  logs:           journalctl -u kedge -f"
	echo "  state:          kedge status --env-file /etc/kedge/kedge.env   (backlog, link, rates)"
	echo "  data:           /var/lib/kedge (the event log)"
	[ "$config_ok" = yes ] || exit 1
}

case "$ACTION" in
install) install_all ;;
uninstall | purge) uninstall ;;
esac
