#!/usr/bin/env bash
# Applies tuning/sysctl.conf and the process limits c10m needs.
#
#   tuning/apply.sh [--dry-run] [--runtime] [--save FILE] [--set KEY=VALUE]... [--skip KEY]...
#   tuning/apply.sh --restore FILE
#
# Default (persistent): installs sysctl.conf as /etc/sysctl.d/60-c10m.conf, applies it, and
# installs the limits for the c10m service: a systemd drop-in
# (/etc/systemd/system/c10m.service.d/10-limits.conf: LimitNOFILE, LimitMEMLOCK) when
# systemd runs, and /etc/security/limits.d/60-c10m.conf for login sessions either way; a
# unit file (deploy/c10m.service) is installed when none exists.
#
#   --dry-run       print what would change, change nothing
#   --runtime       apply the sysctls to the running kernel only (no files under /etc)
#   --save FILE     before changing anything, write the current values of the keys it
#                   touches to FILE (for --restore)
#   --restore FILE  write back values saved with --save, then exit
#   --set K=V       override one value from sysctl.conf (repeatable)
#   --skip K        leave one key alone (repeatable)
#   --conf FILE     another sysctl file (default: tuning/sysctl.conf)
#
# Keys that do not exist on this kernel (net.netfilter.* without nf_conntrack loaded) are
# reported and skipped. Exit status: 0 when every present key now has its value.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf=$here/sysctl.conf
dry=0 runtime=0 save='' restore=''
declare -A override=() skip=()
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry=1 ;;
    --runtime) runtime=1 ;;
    --save) save=$2; shift ;;
    --restore) restore=$2; shift ;;
    --set) override[${2%%=*}]=${2#*=}; shift ;;
    --skip) skip[$2]=1; shift ;;
    --conf) conf=$2; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "apply.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

key_path() { echo "/proc/sys/${1//./\/}"; }
norm() { echo "$*" | tr -s ' \t' ' ' | sed 's/^ //; s/ $//'; }

if [ -n "$restore" ]; then
  while IFS='=' read -r k v; do
    k=$(norm "$k"); v=$(norm "$v")
    [ -n "$k" ] || continue
    printf '%s' "$v" >"$(key_path "$k")" 2>/dev/null || echo "restore: cannot write $k" >&2
  done <"$restore"
  echo "restored $(grep -c = "$restore") sysctl(s) from $restore"
  exit 0
fi

# Parse KEY = VALUE lines of the conf (comments and blanks skipped), applying --set/--skip.
keys=() vals=()
while IFS= read -r line; do
  line=${line%%#*}
  [[ $line == *=* ]] || continue
  k=$(norm "${line%%=*}"); v=$(norm "${line#*=}")
  [ -z "${skip[$k]:-}" ] || continue
  [ -z "${override[$k]:-}" ] || v=${override[$k]}
  keys+=("$k"); vals+=("$v")
done <"$conf"

[ -z "$save" ] || : >"$save"
fail=0 changed=0 missing=0
for i in "${!keys[@]}"; do
  k=${keys[$i]} v=${vals[$i]} p=$(key_path "${keys[$i]}")
  if [ ! -e "$p" ]; then
    echo "skip   $k (not on this kernel; module not loaded?)"; missing=$((missing + 1)); continue
  fi
  cur=$(norm "$(cat "$p")")
  [ -z "$save" ] || echo "$k = $cur" >>"$save"
  if [ "$cur" = "$v" ]; then continue; fi
  if [ $dry = 1 ]; then echo "would  $k: $cur -> $v"; continue; fi
  if printf '%s' "$v" >"$p" 2>/dev/null && [ "$(norm "$(cat "$p")")" = "$v" ]; then
    echo "set    $k: $cur -> $v"; changed=$((changed + 1))
  else
    echo "FAILED $k: still $(norm "$(cat "$p")"), wanted $v" >&2; fail=1
  fi
done
echo "sysctl: ${#keys[@]} key(s), $changed changed, $missing not present$([ $dry = 1 ] && echo ' (dry run)')"

[ $runtime = 1 ] && exit $fail

# Persistent part: sysctl file, process limits, unit.
nofile=1048576   # per-ring fixed-file table ceiling (IORING_MAX_FIXED_FILES); = fs.nr_open
run() { if [ $dry = 1 ]; then echo "would run: $*"; else "$@"; fi; }
write() { # write PATH <<content
  if [ $dry = 1 ]; then echo "would write $1:"; sed 's/^/    /'; else mkdir -p "$(dirname "$1")"; cat >"$1"; echo "wrote $1"; fi
}
run install -m 0644 "$conf" /etc/sysctl.d/60-c10m.conf
write /etc/security/limits.d/60-c10m.conf <<L
# c10m: direct descriptors still need RLIMIT_NOFILE >= connections per shard (the kernel
# caps each io_uring fixed-file table at the soft limit); ring memory and provided buffers
# count against RLIMIT_MEMLOCK for users without CAP_IPC_LOCK.
c10m  soft  nofile   $nofile
c10m  hard  nofile   $nofile
c10m  soft  memlock  unlimited
c10m  hard  memlock  unlimited
L
if [ -d /run/systemd/system ]; then
  write /etc/systemd/system/c10m.service.d/10-limits.conf <<L
[Service]
# Connections per shard are capped by the soft RLIMIT_NOFILE (per io_uring ring), at most
# 1,048,576 per ring. c10m raises soft to hard at start; set both here.
LimitNOFILE=$nofile
# Rings (SQ/CQ/SQE arrays) and provided-buffer rings are locked memory for a process without
# CAP_IPC_LOCK: with many shards the 8 MiB default is not enough.
LimitMEMLOCK=infinity
L
  [ -e /etc/systemd/system/c10m.service ] || run install -m 0644 "$here/../deploy/c10m.service" /etc/systemd/system/c10m.service
  run systemctl daemon-reload
else
  echo "no systemd here: limits for the service go in its supervisor; the drop-in would be:"
  printf '    [Service]\n    LimitNOFILE=%s\n    LimitMEMLOCK=infinity\n' "$nofile"
fi
grep -q thash_entries /proc/cmdline || echo "note: the TCP established hash is sized at boot: add thash_entries=4194304 to the kernel command line (see sysctl.conf)"
exit $fail
