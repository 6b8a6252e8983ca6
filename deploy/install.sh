#!/bin/sh
# install.sh: installs kestrel on this machine from the release directory it
# sits in (bin/, systemd/, config/), as a control plane or as a node.
# `./install.sh --help` explains the commands. Every command can be run again:
# what is already in place is left as it is.
set -eu

PROG=install.sh
HERE=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)

# Where things go on the target machine (always below $ROOT).
BIN_DIR=/usr/local/bin
UNIT_DIR=/etc/systemd/system
CONF_DIR=/etc/kestrel
CERT_DIR=/var/lib/kestrel/pki
NODES_DIR=$CONF_DIR/nodes

usage() {
	cat <<EOF
Usage: $PROG [--root DIR] [--dry-run] COMMAND [OPTIONS]

Commands:
  control-plane [--advertise-address IP] [--port PORT]
                [--peers IP,IP,IP [--ca DIR]]
      Installs and starts etcd, the API server, the scheduler and the
      controller-manager as systemd units, after making the cluster CA in
      $CERT_DIR unless one is there. IP is the address nodes reach the
      API server at (default: this machine's address on its default
      route); PORT its HTTPS port (default 6443, the same on every control
      plane).
      With --peers, this machine is one of several control planes (3, 5 or
      7; the list holds every one's IP, this one's included, the same on
      each): etcd runs as a member of a cluster of them over TLS, the API
      server uses every member, and the scheduler and controller-manager
      fail over between the API servers. The first control plane makes the
      CA and etcd's own CA; the others are given a copy of its ca.crt,
      ca.key, etcd/ca.crt and etcd/ca.key in DIR (the same layout).

  add-node NAME [--server URL[,URL...]]
      On a control plane: writes the credentials of the node NAME to
      $NODES_DIR/NAME.kubeconfig (a client certificate for the user
      system:node:NAME in the group system:nodes, signed by the cluster CA)
      and prints the command that joins it. URL is an API server as the
      node reaches it (default: every control plane's, as control-plane
      recorded them in $CONF_DIR/apiservers).

  join --kubeconfig FILE --ca-cert-hash sha256:HEX [--node-name NAME]
       [--node-ip IP] [--server URL[,URL...]] [--skip-server-check]
      On a node: checks that the CA in FILE is the one whose hash the
      control plane printed, that FILE's certificate is signed by it and
      names this node (NAME, default: the host name), and that every API
      server, trusted through that CA only, accepts it; then installs and
      starts the node agent, which fails over between the API servers when
      there are several (default: FILE's server). IP is the node's address
      for the cluster (default: the agent's choice, its first non-loopback
      IPv4 address).

  ca-cert-hash
      On the control plane: prints the hash of the cluster CA for join.

Options:
  --root DIR   Install below DIR instead of / (the variable DESTDIR does the
               same). Files are laid out as on a real machine, but no
               package is installed and no service is started.
  --dry-run    Print what would be done; change nothing.
EOF
}

say() { printf '%s\n' "$*"; }
die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}

# value "$@": the option in $1 has a value in $2.
value() { [ $# -ge 2 ] || die "$1 needs a value"; }

ROOT=${DESTDIR:-}
DRY_RUN=0
# Set when a binary, unit or configuration file changed, so services restart.
CHANGED=0

# Runs a command that changes the running system (services, packages).
# Under --root it is only reported: the prefix is a tree of files, not a
# machine whose services could start.
system() {
	if [ "$DRY_RUN" = 1 ]; then
		say "would run: $*"
	elif [ -n "$ROOT" ]; then
		say "skipped under --root: $*"
	else
		"$@"
	fi
}

# Whether services are really managed (not --root, not --dry-run).
live() { [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ]; }

# put SRC DEST MODE: installs SRC as $ROOT/DEST unless DEST already has that
# content and mode.
put() {
	dest=$ROOT$2
	if [ -f "$dest" ] && cmp -s "$1" "$dest" && [ "$(stat -c %a "$dest")" = "${3#0}" ]; then
		say "unchanged: $2"
		return 0
	fi
	CHANGED=1
	if [ "$DRY_RUN" = 1 ]; then
		say "would install: $2"
		return 0
	fi
	mkdir -p "$(dirname "$dest")"
	# Copied beside the target and renamed over it: a running binary is
	# replaced rather than rewritten in place (which fails with ETXTBSY), and
	# nobody ever reads a half-written file.
	cp "$1" "$dest.tmp.$$"
	chmod "$3" "$dest.tmp.$$"
	mv -f "$dest.tmp.$$" "$dest"
	say "installed: $2"
}

# config SRC DEST: a configuration file. An existing one belongs to the
# administrator and is kept; when this release's differs it goes beside it
# as DEST.new.
config() {
	dest=$ROOT$2
	if [ ! -f "$dest" ]; then
		put "$1" "$2" 0644
	elif cmp -s "$1" "$dest"; then
		say "unchanged: $2"
		if [ "$DRY_RUN" = 0 ]; then rm -f "$dest.new"; fi
	elif [ "$DRY_RUN" = 1 ]; then
		say "would keep $2 and write $2.new"
	else
		cp "$1" "$dest.new"
		say "kept: $2 (yours differs from this install's; see $2.new)"
	fi
}

# env_file NAME VAR ARGS: config/NAME.env with VAR set to ARGS, installed as
# $CONF_DIR/NAME.env.
env_file() {
	awk -v var="$2" -v val="$3" \
		'index($0, var "=") == 1 { print var "=\"" val "\""; next } { print }' \
		"$HERE/config/$1.env" >"$WORK/$1.env"
	config "$WORK/$1.env" "$CONF_DIR/$1.env"
}

mkdir_p() {
	if [ "$DRY_RUN" = 1 ]; then
		[ -d "$ROOT$1" ] || say "would create: $1"
	else
		mkdir -p "$ROOT$1"
		chmod "$2" "$ROOT$1"
	fi
}

install_binaries() {
	for b in control-plane agent kestrel-cni; do
		put "$HERE/bin/$b" "$BIN_DIR/$b" 0755
	done
}

install_units() {
	for u in "$@"; do
		put "$HERE/systemd/$u.service" "$UNIT_DIR/$u.service" 0644
	done
}

# Starts UNITS (and enables them at boot); restarts them when something of
# theirs changed during this run.
# With --no-block first, it does not wait for them to be started.
start_units() {
	block=
	if [ "$1" = --no-block ]; then block=$1; shift; fi
	system systemctl daemon-reload
	system systemctl enable "$@"
	if [ "$CHANGED" = 1 ]; then
		system systemctl restart ${block:+"$block"} "$@"
	else
		system systemctl start ${block:+"$block"} "$@"
	fi
}

need_commands() {
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || die "$c is needed; install it first"
	done
}

# Installs the Debian packages PKGS that are missing (on a live machine).
need_packages() {
	missing=
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing="$missing $p"
	done
	[ -n "$missing" ] || return 0
	if live && ! command -v apt-get >/dev/null 2>&1; then
		die "missing packages:$missing; install them first"
	fi
	# A fresh machine may have no package lists yet.
	system apt-get update -q
	# shellcheck disable=SC2086 # one word per package
	system env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
}

# The sha256 of the DER encoding of the PEM certificate in FILE, as
# `sha256:HEX`: what add-node prints and join checks.
cert_hash() {
	h=$(sed -e '/-----/d' "$1" | base64 -d | sha256sum) || die "cannot read the certificate in $1"
	say "sha256:${h%% *}"
}

valid_ip() {
	case $1 in
	'' | *[!0-9A-Fa-f.:]*) return 1 ;;
	*) return 0 ;;
	esac
}

# A Node name: a DNS subdomain (lower-case letters, digits, '-' and '.').
valid_name() {
	case $1 in
	'' | *[!a-z0-9.-]* | [.-]* | *[.-]) return 1 ;;
	*) [ ${#1} -le 253 ] ;;
	esac
}

valid_url() {
	say "$1" | grep -Eqx 'https://[]A-Za-z0-9.:/_[-]+'
}

# host:port for an address, IPv6 in brackets.
host_port() {
	case $1 in
	*:*) say "[$1]:$2" ;;
	*) say "$1:$2" ;;
	esac
}

# This machine's address on the interface of its default route.
default_address() {
	dev=$(ip -o -4 route show default 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p' | head -n 1)
	[ -n "$dev" ] || return 0
	ip -o -4 addr show dev "$dev" scope global 2>/dev/null |
		sed -n 's/.* inet \([0-9.]*\)\/.*/\1/p' | head -n 1
}

# The value of --FLAG= in VAR of the env file FILE (empty when absent).
env_flag() {
	[ -f "$1" ] || return 0
	sed -n "s/^$2=\"\(.*\)\"$/\1/p" "$1" | tr ' ' '\n' | sed -n "s/^--$3=//p" | head -n 1
}

# The etcd member name of the control plane at IP.
member_name() { say "etcd-$1" | tr '.:' '--'; }

# check_ca DIR: DIR holds a copy of a CA fit to be this machine's: both
# files, the key the certificate's, and no other CA already here.
check_ca() {
	for f in ca.crt ca.key; do
		[ -f "$1/$f" ] || die "--ca: no $f in $1 (copy ca.crt and ca.key from $CERT_DIR on the first control plane)"
	done
	pub=$(openssl x509 -in "$1/ca.crt" -noout -pubkey 2>/dev/null) || die "--ca: $1/ca.crt is not a PEM certificate"
	[ "$pub" = "$(openssl pkey -in "$1/ca.key" -pubout 2>/dev/null)" ] ||
		die "--ca: $1/ca.key is not the key of $1/ca.crt"
	if [ -f "$ROOT$CERT_DIR/ca.crt" ] && ! cmp -s "$1/ca.crt" "$ROOT$CERT_DIR/ca.crt"; then
		die "$CERT_DIR already holds another CA than $1/ca.crt: this machine belongs to another cluster (remove $CERT_DIR to reinstall it)"
	fi
	for f in ca.crt ca.key; do
		[ -f "$1/etcd/$f" ] || die "--ca: no etcd/$f in $1 (copy $CERT_DIR/etcd/ca.crt and ca.key from the first control plane too)"
	done
	[ "$(openssl x509 -in "$1/etcd/ca.crt" -noout -pubkey 2>/dev/null)" = "$(openssl pkey -in "$1/etcd/ca.key" -pubout 2>/dev/null)" ] ||
		die "--ca: $1/etcd/ca.key is not the key of $1/etcd/ca.crt"
	! cmp -s "$1/etcd/ca.crt" "$1/ca.crt" || die "--ca: $1/etcd/ca.crt is the cluster CA; etcd needs its own"
	if [ -f "$ROOT$CERT_DIR/etcd/ca.crt" ] && ! cmp -s "$1/etcd/ca.crt" "$ROOT$CERT_DIR/etcd/ca.crt"; then
		die "$CERT_DIR/etcd already holds another CA than $1/etcd/ca.crt"
	fi
}

# etcd_ca DIR: makes $CERT_DIR/etcd hold etcd's own CA, which signs only
# etcd members and the API servers' etcd client certificate: the cluster CA
# signs every node's certificate, and a node must not get into etcd. The
# copy in DIR when given, else the one there, else a new one.
etcd_ca() {
	mkdir_p "$CERT_DIR/etcd" 0700
	if [ -n "$1" ]; then
		put "$1/etcd/ca.crt" "$CERT_DIR/etcd/ca.crt" 0644
		put "$1/etcd/ca.key" "$CERT_DIR/etcd/ca.key" 0600
	elif [ -f "$ROOT$CERT_DIR/etcd/ca.crt" ]; then
		say "unchanged: $CERT_DIR/etcd/ca.crt"
	elif [ "$DRY_RUN" = 1 ]; then
		say "would make etcd's CA in $CERT_DIR/etcd"
	else
		"$HERE/bin/control-plane" ca --cert-dir "$ROOT$CERT_DIR/etcd" >/dev/null
		CHANGED=1
		say "made etcd's CA: $CERT_DIR/etcd/ca.crt"
	fi
	# An install from before etcd had a CA of its own issued these from the
	# cluster CA: they are issued again, and etcd's data is kept.
	for c in etcd/member apiserver-etcd-client; do
		if [ -f "$ROOT$CERT_DIR/$c.crt" ] && [ -f "$ROOT$CERT_DIR/etcd/ca.crt" ] &&
			! openssl verify -CAfile "$ROOT$CERT_DIR/etcd/ca.crt" "$ROOT$CERT_DIR/$c.crt" >/dev/null 2>&1; then
			if [ "$DRY_RUN" = 1 ]; then
				say "would issue again from etcd's CA: $CERT_DIR/$c.crt"
			else
				rm -f "$ROOT$CERT_DIR/$c.crt" "$ROOT$CERT_DIR/$c.key"
			fi
		fi
	done
}

# cluster_ca DIR: makes $CERT_DIR hold the cluster CA: the copy in DIR
# (checked by check_ca) when given, else the one there, else a new one.
cluster_ca() {
	# Keys only root may read live in it.
	mkdir_p "$CERT_DIR" 0700
	if [ -n "$1" ]; then
		put "$1/ca.crt" "$CERT_DIR/ca.crt" 0644
		put "$1/ca.key" "$CERT_DIR/ca.key" 0600
	elif [ -f "$ROOT$CERT_DIR/ca.crt" ]; then
		say "unchanged: $CERT_DIR/ca.crt"
	elif [ "$DRY_RUN" = 1 ]; then
		say "would make the cluster CA in $CERT_DIR"
	else
		"$HERE/bin/control-plane" ca --cert-dir "$ROOT$CERT_DIR" >/dev/null
		CHANGED=1
		say "made the cluster CA: $CERT_DIR/ca.crt"
	fi
}

# certificate PREFIX CN SANS ARGS...: PREFIX.crt and .key from the CA in
# $ISSUER (default: the cluster CA) unless they exist; SANS is a
# comma-separated list of addresses.
certificate() {
	if [ -f "$ROOT$1.crt" ] && [ -f "$ROOT$1.key" ]; then
		say "unchanged: $1.crt"
		return 0
	fi
	if [ "$DRY_RUN" = 1 ]; then
		say "would write: $1.crt (CN $2)"
		return 0
	fi
	out=$1 cn=$2 sans=$3
	shift 3
	mkdir -p "$(dirname "$ROOT$out")"
	for san in $(say "$sans" | tr ',' ' '); do set -- "$@" --san "$san"; done
	"$HERE/bin/control-plane" certificate --cert-dir "$ROOT${ISSUER:-$CERT_DIR}" --cn "$cn" --out "$ROOT$out" "$@"
	CHANGED=1
	say "written: $out.crt (CN $cn)"
}

# etcd_member ADDRESS PEERS: etcd.env and the unit's drop-in for one member
# of the cluster of PEERS, with its certificate.
etcd_member() {
	cluster=
	for p in $(say "$2" | tr ',' ' '); do
		cluster="$cluster${cluster:+,}$(member_name "$p")=https://$(host_port "$p" 2380)"
	done
	# The member's certificate serves clients and peers and is the client
	# side of its own peer connections, so it is for both.
	ISSUER=$CERT_DIR/etcd certificate "$CERT_DIR/etcd/member" "$(member_name "$1")" "$1,127.0.0.1,localhost" --server --client
	host=$(host_port "$1" 0)
	host=${host%:0}
	sed -e "s|@NAME@|$(member_name "$1")|" -e "s|@HOST@|$host|g" -e "s|@INITIAL_CLUSTER@|$cluster|" \
		"$HERE/config/etcd-member.env" >"$WORK/etcd.env"
	config "$WORK/etcd.env" "$CONF_DIR/etcd.env"
	put "$HERE/systemd/kestrel-etcd.service.d/member.conf" "$UNIT_DIR/kestrel-etcd.service.d/member.conf" 0644
}

# check_peers PEERS ADDRESS: PEERS is 3, 5 or 7 distinct IPs, ADDRESS one.
check_peers() {
	n=0 self=0
	for p in $(say "$1" | tr ',' ' '); do
		valid_ip "$p" || die "--peers: not an IP address: $p"
		n=$((n + 1))
		[ "$p" != "$2" ] || self=1
	done
	[ "$(say "$1" | tr ',' '\n' | sort | uniq -d)" = "" ] || die "--peers: an address is listed twice: $1"
	[ "$self" = 1 ] || die "--peers must list this control plane's own address ($2) too: $1"
	case $n in
	3 | 5 | 7) ;;
	*) die "--peers: $n control planes; give 3, 5 or 7 (etcd needs a majority: an even count tolerates no more failures than one fewer)" ;;
	esac
}

cmd_control_plane() {
	address='' port=6443 peers='' ca=''
	while [ $# -gt 0 ]; do
		case $1 in
		--advertise-address) value "$@"; address=$2; shift 2 ;;
		--port) value "$@"; port=$2; shift 2 ;;
		--peers) value "$@"; peers=$2; shift 2 ;;
		--ca) value "$@"; ca=$2; shift 2 ;;
		*) die "control-plane: unknown option $1" ;;
		esac
	done
	[ -n "$address" ] || address=$(default_address)
	[ -n "$address" ] || die "cannot tell this machine's address: give --advertise-address IP"
	valid_ip "$address" || die "--advertise-address: not an IP address: $address"
	case $port in '' | *[!0-9]*) die "--port: not a port: $port" ;; esac
	if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then die "--port: not a port: $port"; fi
	url="https://$(host_port "$address" "$port")"
	[ -z "$ca" ] || [ -n "$peers" ] || die "--ca is for the control planes after the first (with --peers)"
	[ -z "$peers" ] || check_peers "$peers" "$address"

	# etcd keeps the cluster it was first started in, whatever etcd.env says
	# later: a machine cannot move between one control plane and several.
	installed=$ROOT$CONF_DIR/etcd.env
	if [ -f "$installed" ]; then
		if grep -q '^ETCD_INITIAL_CLUSTER=.*,' "$installed"; then
			[ -n "$peers" ] || die "this machine is one of several control planes ($installed): run control-plane with the same --peers again"
		else
			[ -z "$peers" ] || die "this machine runs a single control plane, whose etcd cannot join a cluster: --peers is for machines without one"
		fi
	fi
	if live; then need_commands systemctl curl; fi
	if [ -n "$peers" ]; then need_commands openssl; fi
	[ -z "$ca" ] || check_ca "$ca"
	need_packages etcd-server
	install_binaries
	install_units kestrel-etcd kestrel-apiserver kestrel-scheduler kestrel-controller-manager
	mkdir_p "$CONF_DIR" 0755
	cluster_ca "$ca"
	if [ -n "$peers" ]; then
		etcd_ca "$ca"
		etcd_member "$address" "$peers"
		etcd_urls='' others=''
		for p in $(say "$peers" | tr ',' ' '); do
			etcd_urls="$etcd_urls${etcd_urls:+,}https://$(host_port "$p" 2379)"
			[ "$p" = "$address" ] || others="$others,https://$(host_port "$p" "$port")"
		done
		ISSUER=$CERT_DIR/etcd certificate "$CERT_DIR/apiserver-etcd-client" kube-apiserver-etcd-client "" --client
		etcd_args="--etcd-servers=$etcd_urls --etcd-cafile=$CERT_DIR/etcd/ca.crt --etcd-certfile=$CERT_DIR/apiserver-etcd-client.crt --etcd-keyfile=$CERT_DIR/apiserver-etcd-client.key"
		servers=$url$others
		# This machine's API server first, then the others: every serving
		# certificate names 127.0.0.1, where the failover relay listens.
		component_args="--master=https://127.0.0.1:$port$others"
	else
		config "$HERE/config/etcd.env" "$CONF_DIR/etcd.env"
		etcd_args=--etcd-servers=http://127.0.0.1:2379
		servers=$url component_args=
	fi
	env_file apiserver APISERVER_ARGS "--bind-address=$(host_port 0.0.0.0 "$port") $etcd_args --cert-dir=$CERT_DIR --tls-san=$address --advertise-url=$url --admin-kubeconfig=$CONF_DIR/admin.kubeconfig"
	env_file scheduler SCHEDULER_ARGS "$component_args"
	env_file controller-manager CONTROLLER_MANAGER_ARGS "$component_args"
	say "$servers" | tr ',' '\n' >"$WORK/apiservers"
	put "$WORK/apiservers" "$CONF_DIR/apiservers" 0644

	component_kubeconfigs "$port"

	# Debian starts its own etcd when etcd-server is installed; ours
	# replaces it (same ports).
	if [ -f "$ROOT/lib/systemd/system/etcd.service" ] || [ -f "$ROOT/usr/lib/systemd/system/etcd.service" ]; then
		system systemctl disable --now etcd.service
	fi
	if [ -n "$peers" ]; then
		# A member reports itself started only once a majority of the
		# cluster runs, and the API server waits for it: on the first
		# control planes that is later, when the next ones are installed.
		start_units --no-block kestrel-etcd kestrel-apiserver kestrel-scheduler kestrel-controller-manager
		if live && ! wait_for_etcd; then
			say "etcd waits for a majority of its peers ($peers): the API server starts once enough of the other control planes are installed"
		elif live; then
			wait_for_apiserver "$port"
		fi
	else
		start_units kestrel-etcd kestrel-apiserver
		if live; then wait_for_apiserver "$port"; fi
		start_units kestrel-scheduler kestrel-controller-manager
	fi
	# It holds the admin's key.
	if [ "$DRY_RUN" = 0 ] && [ -f "$ROOT$CONF_DIR/admin.kubeconfig" ]; then
		chmod 0600 "$ROOT$CONF_DIR/admin.kubeconfig"
	fi

	say ""
	say "control plane: $url"
	say "  admin kubeconfig: $CONF_DIR/admin.kubeconfig (written by the API server on its first start)"
	say "    KUBECONFIG=$CONF_DIR/admin.kubeconfig kubectl get nodes"
	say "  logs: journalctl -u kestrel-apiserver (and kestrel-etcd, kestrel-scheduler, kestrel-controller-manager)"
	if [ -n "$peers" ]; then
		say ""
		say "The other control planes ($peers) share this cluster's CA and"
		say "etcd's. Copy $CERT_DIR/ca.crt, ca.key, etcd/ca.crt and etcd/ca.key"
		say "to each over SSH, keeping that layout (the keys sign every credential"
		say "of the cluster: keep them from anyone else), then there:"
		say "  ./install.sh control-plane --advertise-address IP --peers $peers --ca DIR-WITH-THE-FOUR-FILES"
	fi
	say ""
	say "To add a node NAME (its host name, or pass --node-name NAME to join):"
	say "  1. here:   $HERE/install.sh add-node NAME"
	say "  2. copy $NODES_DIR/NAME.kubeconfig and this release to the node over SSH"
	say "  3. there:  ./install.sh join --kubeconfig NAME.kubeconfig --ca-cert-hash $(ca_hash_or_later)"
}

ca_hash_or_later() {
	if [ -f "$ROOT$CERT_DIR/ca.crt" ]; then
		cert_hash "$ROOT$CERT_DIR/ca.crt"
	else
		say "sha256:... (from '$PROG ca-cert-hash' once the API server has made its CA)"
	fi
}

# Whether kestrel-etcd has started (it has a quorum) within 10 s.
wait_for_etcd() {
	i=0
	until systemctl is-active --quiet kestrel-etcd; do
		i=$((i + 1))
		[ "$i" -le 20 ] || return 1
		sleep 0.5
	done
}

wait_for_apiserver() {
	say "waiting for the API server to answer"
	i=0
	until curl -sf --cacert "$CERT_DIR/ca.crt" "https://127.0.0.1:$1/readyz" >/dev/null 2>&1; do
		i=$((i + 1))
		[ "$i" -le 120 ] || die "the API server is not ready after 60 s; see journalctl -u kestrel-apiserver"
		sleep 0.5
	done
}

# kubeconfig USER GROUP SERVER DEST: a kubeconfig with a new client
# certificate from the cluster CA (GROUP may be empty), unless DEST exists
# (a certificate is never silently replaced: the old one stays valid until
# the CA changes).
kubeconfig() {
	if [ -f "$ROOT$4" ]; then
		say "unchanged: $4"
		return 0
	fi
	if [ "$DRY_RUN" = 1 ]; then
		say "would write: $4 (user $1, group ${2:-none}, server $3)"
		return 0
	fi
	mkdir -p "$(dirname "$ROOT$4")"
	"$HERE/bin/control-plane" kubeconfig --cert-dir "$ROOT$CERT_DIR" \
		--user "$1" ${2:+--group "$2"} --server "$3" --out "$ROOT$4"
	CHANGED=1
	say "written: $4 (user $1, group ${2:-none})"
}

# component_kubeconfigs PORT: the scheduler and the controller-manager get
# certificates of their own users, system:kube-scheduler and
# system:kube-controller-manager, whose least-privilege roles the API
# server makes. A kubeconfig an older install made them admins with
# (system:masters) is replaced.
component_kubeconfigs() {
	for c in scheduler controller-manager; do
		file=$CONF_DIR/$c.kubeconfig
		if [ -f "$ROOT$file" ] && is_admin_kubeconfig "$ROOT$file"; then
			if [ "$DRY_RUN" = 1 ]; then
				say "would replace: $file (it makes the $c an admin)"
				continue
			fi
			say "replacing $file: it made the $c an admin"
			rm -f "$ROOT$file"
		fi
		kubeconfig "system:kube-$c" "" "https://127.0.0.1:$1" "$file"
	done
}

# is_admin_kubeconfig FILE: its client certificate names system:masters.
is_admin_kubeconfig() {
	kubeconfig_field "$1" client-certificate-data | base64 -d 2>/dev/null |
		sed '/^-----/d' | base64 -d 2>/dev/null | grep -qa system:masters
}

# valid_urls LIST: every comma-separated entry is an https URL.
valid_urls() {
	[ -n "$1" ] || return 1
	for u in $(say "$1" | tr ',' ' '); do valid_url "$u" || return 1; done
}

cmd_add_node() {
	name='' server=''
	while [ $# -gt 0 ]; do
		case $1 in
		--server) value "$@"; server="$server${server:+,}$2"; shift 2 ;;
		-*) die "add-node: unknown option $1" ;;
		*) [ -z "$name" ] || die "add-node takes one NAME"; name=$1; shift ;;
		esac
	done
	valid_name "$name" || die "add-node: NAME must be a DNS name (a-z, 0-9, '-', '.'): '$name'"
	if [ -z "$server" ] && [ -f "$ROOT$CONF_DIR/apiservers" ]; then
		server=$(paste -s -d , "$ROOT$CONF_DIR/apiservers")
	fi
	[ -n "$server" ] || server=$(env_flag "$ROOT$CONF_DIR/apiserver.env" APISERVER_ARGS advertise-url)
	valid_urls "$server" || die "add-node: give --server https://HOST:PORT (an API server as the node reaches it): '$server'"
	[ -f "$ROOT$CERT_DIR/ca.crt" ] || die "no cluster CA in $CERT_DIR: run '$PROG control-plane' first"
	mkdir_p "$NODES_DIR" 0700
	kubeconfig "system:node:$name" system:nodes "${server%%,*}" "$NODES_DIR/$name.kubeconfig"
	hash=$(cert_hash "$ROOT$CERT_DIR/ca.crt")
	more=
	case $server in *,*) more=" --server $server" ;; esac
	say ""
	say "Copy $NODES_DIR/$name.kubeconfig to the node $name over SSH (it is"
	say "the node's key: keep it from anyone else), then on that node, from this release:"
	say "  ./install.sh join --kubeconfig $name.kubeconfig --ca-cert-hash $hash --node-name $name$more"
}

cmd_ca_cert_hash() {
	[ $# -eq 0 ] || die "ca-cert-hash takes no arguments"
	[ -f "$ROOT$CERT_DIR/ca.crt" ] || die "no cluster CA in $CERT_DIR: run '$PROG control-plane' first"
	cert_hash "$ROOT$CERT_DIR/ca.crt"
}

# A field of the kubeconfig FILE as `control-plane kubeconfig` writes it.
kubeconfig_field() {
	sed -n "s/^ *$2: *//p" "$1" | head -n 1
}

# check_server URL NAME: the API server at URL, trusted through the cluster
# CA only (not the system's), accepts the node's certificate: 200 or 404 for
# its own Node.
check_server() {
	code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
		--cacert "$WORK/ca.crt" --cert "$WORK/node.crt" --key "$WORK/node.key" \
		"$1/api/v1/nodes/$2") || code="curl exit $?"
	case $code in
	200 | 404) say "the API server at $1 accepts node $2" ;;
	401) die "the API server at $1 does not accept these credentials (was the control plane reinstalled?)" ;;
	"curl exit 35" | "curl exit 51" | "curl exit 60") die "$1 does not prove it holds the cluster CA's certificate: wrong --server, or not the cluster these credentials are for" ;;
	"curl exit 6" | "curl exit 7" | "curl exit 28") die "cannot reach the API server at $1 ($code)" ;;
	*) die "cannot check the API server at $1 ($code)" ;;
	esac
}

cmd_join() {
	file='' want='' name='' node_ip='' server='' check_server=1
	while [ $# -gt 0 ]; do
		case $1 in
		--kubeconfig) value "$@"; file=$2; shift 2 ;;
		--ca-cert-hash) value "$@"; want=$2; shift 2 ;;
		--node-name) value "$@"; name=$2; shift 2 ;;
		--node-ip) value "$@"; node_ip=$2; shift 2 ;;
		--server) value "$@"; server="$server${server:+,}$2"; shift 2 ;;
		--skip-server-check) check_server=0; shift ;;
		*) die "join: unknown option $1" ;;
		esac
	done
	[ -n "$file" ] || die "join: --kubeconfig FILE is needed (made by '$PROG add-node NAME' on the control plane)"
	[ -f "$file" ] || die "join: no such file: $file"
	case $want in
	sha256:????????????????????????????????????????????????????????????????) ;;
	*) die "join: --ca-cert-hash sha256:HEX is needed (printed by '$PROG add-node' on the control plane)" ;;
	esac
	[ -n "$name" ] || name=$(tr '[:upper:]' '[:lower:]' </proc/sys/kernel/hostname)
	valid_name "$name" || die "join: not a valid node name: '$name' (give --node-name)"
	[ -z "$node_ip" ] || valid_ip "$node_ip" || die "--node-ip: not an IP address: $node_ip"
	[ -z "$server" ] || valid_urls "$server" || die "--server: not an https URL or a comma-separated list of them: $server"
	need_commands openssl base64 sha256sum
	if [ "$check_server" = 1 ]; then need_commands curl; fi

	# Nothing in FILE is trusted until its CA matches the hash that came from
	# the control plane by another way than the file itself.
	for f in certificate-authority-data client-certificate-data client-key-data server; do
		[ -n "$(kubeconfig_field "$file" $f)" ] ||
			die "$file has no $f: not a node kubeconfig from '$PROG add-node'"
	done
	kubeconfig_field "$file" certificate-authority-data | base64 -d >"$WORK/ca.crt" 2>/dev/null ||
		die "$file: certificate-authority-data is not base64"
	got=$(cert_hash "$WORK/ca.crt")
	[ "$got" = "$want" ] ||
		die "the CA in $file is not the cluster's: its hash is $got, expected $want. Not trusting it."
	say "CA matches $want"

	kubeconfig_field "$file" client-certificate-data | base64 -d >"$WORK/node.crt" 2>/dev/null ||
		die "$file: client-certificate-data is not base64"
	(umask 077 && kubeconfig_field "$file" client-key-data | base64 -d >"$WORK/node.key" 2>/dev/null) ||
		die "$file: client-key-data is not base64"
	openssl verify -CAfile "$WORK/ca.crt" "$WORK/node.crt" >/dev/null 2>&1 ||
		die "the certificate in $file is not signed by the cluster CA"
	[ "$(openssl x509 -in "$WORK/node.crt" -noout -pubkey)" = "$(openssl pkey -in "$WORK/node.key" -pubout)" ] ||
		die "the key in $file does not belong to its certificate"
	# The API server takes the user from the certificate's CN and the groups
	# from its O fields, and lets system:node:NAME in system:nodes write only
	# the Node NAME, its Lease and its pods' status.
	subject=$(openssl x509 -in "$WORK/node.crt" -noout -subject -nameopt RFC2253)
	subject=${subject#subject=}
	cn=$(say "$subject" | tr ',' '\n' | sed -n 's/^CN=//p')
	orgs=$(say "$subject" | tr ',' '\n' | sed -n 's/^O=//p')
	[ "$cn" = "system:node:$name" ] ||
		die "$file is for the user '$cn', not for this node ('system:node:$name'); make one with '$PROG add-node $name'"
	say "$orgs" | grep -qx 'system:nodes' ||
		die "$file's certificate is not in the group system:nodes"
	say "credentials are for node $name"

	[ -n "$server" ] || server=$(kubeconfig_field "$file" server)
	valid_urls "$server" || die "$file: server is not an https URL: $server"
	# Rewriting the server keeps everything else byte for byte.
	awk -v s="${server%%,*}" '/^ *server: / { sub(/server: .*/, "server: " s) } { print }' "$file" >"$WORK/agent.kubeconfig"

	if [ "$check_server" = 1 ]; then
		for s in $(say "$server" | tr ',' ' '); do check_server "$s" "$name"; done
	fi

	if live; then need_commands systemctl; fi
	need_packages libseccomp2
	install_binaries
	install_units kestrel-agent
	mkdir_p "$CONF_DIR" 0755
	put "$WORK/agent.kubeconfig" "$CONF_DIR/agent.kubeconfig" 0600
	# A machine that is only a node balances Services for every process
	# on it, not only for its pods.
	args="--kubeconfig=$CONF_DIR/agent.kubeconfig --node-name=$name --service-cgroup=/"
	[ -z "$node_ip" ] || args="$args --node-ip=$node_ip"
	case $server in *,*) args="$args --master=$server" ;; esac
	env_file agent AGENT_ARGS "$args"
	start_units kestrel-agent
	say ""
	say "node $name joins $(say "$server" | sed 's/,/, /g'); on a control plane: kubectl get node $name"
}

while [ $# -gt 0 ]; do
	case $1 in
	--root) value "$@"; ROOT=$2; shift 2 ;;
	--dry-run) DRY_RUN=1; shift ;;
	-h | --help | help) usage; exit 0 ;;
	-*) die "unknown option $1 (see --help)" ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { usage >&2; exit 2; }
if [ -n "$ROOT" ]; then
	[ -d "$ROOT" ] || die "--root: no such directory: $ROOT"
	ROOT=$(CDPATH='' cd -- "$ROOT" && pwd)
	[ "$ROOT" != / ] || ROOT=
fi
if live && [ "$(id -u)" != 0 ]; then die "run as root (or with --root DIR / --dry-run)"; fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
command=$1
shift
case $command in
control-plane) cmd_control_plane "$@" ;;
add-node) cmd_add_node "$@" ;;
join) cmd_join "$@" ;;
ca-cert-hash) cmd_ca_cert_hash "$@" ;;
*) die "unknown command $command (see --help)" ;;
esac
