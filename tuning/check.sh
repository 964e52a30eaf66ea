#!/usr/bin/env bash
# Compares the running host with tuning/sysctl.conf and c10m's other needs; prints a table
# and exits 1 when anything is off (0 when all is well, 2 on bad usage). A tool it reads with
# that is missing is a row too, with the Debian package that provides it.
#
#   tuning/check.sh [--pid PID] [--shards N] [--conns N] [--iface IF] [--conf FILE] [--only-off]
#
#   --pid PID    check that process's limits (default: a running `c10m`, else this shell)
#   --shards N   shards c10m runs (default: online CPUs) for the NIC queue check
#   --conns N    connections this host should hold (default 2500000) for the memory check
#   --iface IF   NIC to check (default: the interface of the default route)
#   --only-off   print only the rows that are off
#
# How values compare: ceilings (file-max, backlogs, tcp_mem, orphans...) pass when at least
# the recommendation; per-socket buffers, timeouts and retries pass when at most; switches
# must match; the ephemeral port range passes when it is at least as wide.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf=$here/sysctl.conf pid='' shards=$(nproc) conns=2500000 iface='' only_off=0
while [ $# -gt 0 ]; do
  case $1 in
    --pid) pid=$2; shift ;;
    --shards) shards=$2; shift ;;
    --conns) conns=$2; shift ;;
    --iface) iface=$2; shift ;;
    --conf) conf=$2; shift ;;
    --only-off) only_off=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

off=0 rows=0
row() { # row NAME WANT HAVE STATUS [NOTE]
  rows=$((rows + 1))
  [ "$4" = OFF ] && off=$((off + 1))
  [ $only_off = 1 ] && [ "$4" != OFF ] && return
  printf '%-52s %-24s %-24s %-4s %s\n' "$1" "$2" "$3" "$4" "${5:-}"
}
norm() { echo "$*" | tr -s ' \t' ' ' | sed 's/^ //; s/ $//'; }

# How each key compares (default: ge).
declare -A how=(
  [net.ipv4.tcp_rmem]=le [net.ipv4.tcp_wmem]=le [net.ipv4.tcp_fin_timeout]=le
  [net.ipv4.tcp_retries2]=le [net.ipv4.tcp_keepalive_time]=le [net.ipv4.tcp_keepalive_intvl]=le
  [net.ipv4.tcp_keepalive_probes]=le [net.netfilter.nf_conntrack_tcp_timeout_established]=le
  [net.netfilter.nf_conntrack_tcp_timeout_time_wait]=le
  [net.ipv4.tcp_syncookies]=eq [net.ipv4.tcp_slow_start_after_idle]=eq
  [net.ipv4.tcp_tw_reuse]=eq [kernel.io_uring_disabled]=eq [net.ipv4.ip_local_reserved_ports]=eq
  [net.ipv4.ip_local_port_range]=span
)
# compare HOW WANT HAVE -> 0 when fine; multi-field values compare field by field
compare() {
  local how=$1 want=($2) have=($3) i
  case $how in
    eq) [ "${want[*]}" = "${have[*]}" ]; return ;;
    span) [ $(( have[1] - have[0] )) -ge $(( want[1] - want[0] )) ]; return ;;
  esac
  [ ${#want[@]} -eq ${#have[@]} ] || return 1
  for i in "${!want[@]}"; do
    if [ "$how" = ge ]; then [ "${have[$i]}" -ge "${want[$i]}" ] || return 1
    else [ "${have[$i]}" -le "${want[$i]}" ] || return 1; fi
  done
}

printf '%-52s %-24s %-24s %-4s %s\n' CHECK WANT HAVE OK NOTE

# tools the checks read with, and the Debian package of each
lacking=0
for tool in ethtool:ethtool ip:iproute2 pgrep:procps dmesg:util-linux; do
  t=${tool%%:*} pkg=${tool#*:}
  command -v "$t" >/dev/null && continue
  lacking=$((lacking + 1))
  row "tool $t" "installed" "(missing)" OFF "Debian package $pkg: apt-get install $pkg"
done
[ $lacking -gt 0 ] || row "tools (ethtool ip pgrep dmesg)" "installed" "installed" ok
while IFS= read -r line; do
  line=${line%%#*}
  [[ $line == *=* ]] || continue
  k=$(norm "${line%%=*}"); want=$(norm "${line#*=}")
  p=/proc/sys/${k//.//}
  if [ ! -e "$p" ]; then
    case $k in
      net.netfilter.*) row "$k" "$want" "(not loaded)" ok "nf_conntrack not loaded: nothing tracked" ;;
      *) row "$k" "$want" "(missing)" OFF "key not on this kernel" ;;
    esac
    continue
  fi
  have=$(norm "$(cat "$p")")
  h=${how[$k]:-ge}
  if compare "$h" "$want" "$have"; then row "$k" "$want" "$have" ok; else
    case $h in ge) n="raise to at least";; le) n="lower to at most";; span) n="widen to";; *) n="set to";; esac
    row "$k" "$want" "$have" OFF "$n the recommendation"
  fi
done <"$conf"

# conntrack in use: entries vs the table
if [ -e /proc/sys/net/netfilter/nf_conntrack_count ]; then
  cnt=$(cat /proc/sys/net/netfilter/nf_conntrack_count) max=$(cat /proc/sys/net/netfilter/nf_conntrack_max)
  if [ $((cnt * 10)) -gt $((max * 8)) ]; then row "conntrack entries in use" "< 80% of max" "$cnt of $max" OFF "table near full: NOTRACK client ports"
  else row "conntrack entries in use" "< 80% of max" "$cnt of $max" ok; fi
fi

# process limits
[ -n "$pid" ] || pid=$(pgrep -x c10m 2>/dev/null | head -1) || true
if [ -n "$pid" ] && [ -r "/proc/$pid/limits" ]; then who="c10m pid $pid"; lim=/proc/$pid/limits; st=/proc/$pid/status
else who="this shell (c10m not running)"; lim=/proc/$$/limits; st=/proc/$$/status; fi
nofile=$(awk '/Max open files/ {print $4}' "$lim")
if [ "$nofile" = unlimited ] || [ "$nofile" -ge 1048576 ]; then row "RLIMIT_NOFILE (soft) of $who" ">= 1048576" "$nofile" ok
else row "RLIMIT_NOFILE (soft) of $who" ">= 1048576" "$nofile" OFF "caps each shard's ring at $((nofile > 64 ? nofile - 64 : 0)) connections: LimitNOFILE=1048576"; fi
memlock=$(awk '/Max locked memory/ {print $4}' "$lim")
capeff=$(awk '/CapEff/ {print $2}' "$st")
if [ $(( 0x$capeff >> 14 & 1 )) = 1 ]; then row "RLIMIT_MEMLOCK of $who" "unlimited or CAP_IPC_LOCK" "$memlock + CAP_IPC_LOCK" ok "not enforced with CAP_IPC_LOCK"
elif [ "$memlock" = unlimited ] || [ "$memlock" -ge $((64 << 20)) ]; then row "RLIMIT_MEMLOCK of $who" ">= 64 MiB" "$memlock" ok
else row "RLIMIT_MEMLOCK of $who" ">= 64 MiB" "$memlock" OFF "rings + buffer rings count: LimitMEMLOCK=infinity"; fi

# TCP established hash (boot parameter thash_entries): >= sockets this host will hold
# net.ipv4.tcp_ehash_entries (read-only, Linux 6.1+) is the size in use; else the boot log
ehash=$(cat /proc/sys/net/ipv4/tcp_ehash_entries 2>/dev/null | tr -d -) || true
[ -n "$ehash" ] || ehash=$(dmesg 2>/dev/null | sed -n 's/.*TCP established hash table entries: \([0-9]*\).*/\1/p' | tail -1)
if [ -z "$ehash" ]; then row "TCP established hash buckets" ">= $conns" "(boot log gone)" ok "check thash_entries= in /proc/cmdline"
elif [ "$ehash" -ge "$conns" ]; then row "TCP established hash buckets" ">= $conns" "$ehash" ok
else pow=1; while [ $pow -lt "$conns" ]; do pow=$((pow * 2)); done
  row "TCP established hash buckets" ">= $conns" "$ehash" OFF "boot with thash_entries=$pow"; fi

# kernel: io_uring features c10m needs (6.1: SINGLE_ISSUER/DEFER_TASKRUN; loadgen 6.11)
kv=$(uname -r | cut -d. -f1-2)
if printf '6.1\n%s\n' "$kv" | sort -V -C; then row "kernel" ">= 6.1" "$(uname -r)" ok
else row "kernel" ">= 6.1" "$(uname -r)" OFF "io_uring SINGLE_ISSUER/DEFER_TASKRUN missing"; fi

# memory for the target connection count: ~4.9 KB kernel + ~0.3 KB user per idle connection
# (measured, HARDWARE.md), plus 25% headroom for broadcasts and reconnect storms
memkb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
needkb=$(( conns * 52 / 10 * 125 / 100 ))
if [ "$memkb" -ge "$needkb" ]; then row "RAM for $conns connections" ">= $((needkb >> 20)) GiB" "$((memkb >> 20)) GiB" ok
else row "RAM for $conns connections" ">= $((needkb >> 20)) GiB" "$((memkb >> 20)) GiB" OFF "holds ~$(( memkb * 100 / 125 * 10 / 52 )) at 5.2 KB each"; fi
tcpmax=$(awk '{print $3}' /proc/sys/net/ipv4/tcp_mem)
if [ $((tcpmax * 4)) -le $((memkb / 2)) ]; then row "tcp_mem max vs RAM" "<= 50% of RAM" "$((tcpmax * 4 >> 20)) GiB" ok
else row "tcp_mem max vs RAM" "<= 50% of RAM" "$((tcpmax * 4 >> 20)) GiB" OFF "socket buffers could starve the slab sockets need"; fi

# NIC: irqbalance off, queues per shard, IRQs pinned (details and fixes: tuning/nic.sh)
if ! command -v pgrep >/dev/null; then row "irqbalance" "stopped" "(no pgrep)" OFF "apt-get install procps"
elif pgrep -x irqbalance >/dev/null; then row "irqbalance" "stopped" "running" OFF "it moves queue IRQs away from their shards: nic.sh --apply"
else row "irqbalance" "stopped" "not running" ok; fi
[ -n "$iface" ] || iface=$(ip -o route show default 2>/dev/null | awk '{for (i=1;i<NF;i++) if ($i=="dev") print $(i+1)}' | head -1)
if [ -z "$iface" ] || [ ! -e "/sys/class/net/$iface" ]; then
  row "NIC queues" "min(shards, max)" "(no NIC)" ok "no default-route interface"
elif ! command -v ethtool >/dev/null; then
  row "NIC queues ($iface)" "min(shards, max)" "(no ethtool)" OFF "apt-get install ethtool (or run nic.sh, which installs it)"
else
  ch=$(ethtool -l "$iface" 2>/dev/null)
  if [ -z "$ch" ]; then
    row "NIC queues ($iface)" "min($shards, max)" "$(ls -d /sys/class/net/$iface/queues/rx-* | wc -l) rx (fixed)" ok "driver has no channel control"
  else
    get() { echo "$ch" | awk -v sect="$1" -v key="$2" '/^Pre-set/ {s="max"} /^Current/ {s="cur"} s==sect && $1==key":" {print ($2=="n/a"?0:$2); exit}'; }
    mx=$(( $(get max Combined) > 0 ? $(get max Combined) : $(get max RX) ))
    cur=$(( $(get cur Combined) > 0 ? $(get cur Combined) : $(get cur RX) ))
    want=$(( shards < mx ? shards : mx ))
    if [ "$cur" -eq "$want" ]; then row "NIC queues ($iface)" "$want (shards $shards, max $mx)" "$cur" ok
    else row "NIC queues ($iface)" "$want (shards $shards, max $mx)" "$cur" OFF "nic.sh --apply"; fi
  fi
fi
echo "$off of $rows check(s) off"
[ $off -eq 0 ]
