#!/usr/bin/env bash
# Lines the NIC up with c10m's shards: one queue per shard where the NIC has enough, the
# IRQ of queue i on the core of shard i, XPS so shard i transmits on queue i, RPS/RFS only
# when there are fewer queues than shards, large rings, interrupt coalescing, irqbalance off.
#
#   tuning/nic.sh [--apply] [--iface IF] [--shards N] [--cpus LIST]
#                 [--ring N] [--rx-usecs N] [--tx-usecs N] [--describe DIR]
#
# Dry run by default: prints what it found and the commands it would run. --apply runs them
# (root). --describe DIR reads a described NIC instead of a live one (dry run only): files
# ethtool-i.txt, ethtool-l.txt, ethtool-g.txt, ethtool-c.txt (the outputs of ethtool -i/-l/
# -g/-c), interrupts.txt (/proc/interrupts lines of the NIC) and cpus (online CPU list, e.g.
# 0-15). tuning/fixtures/ holds examples.
#
#   --iface IF     NIC (default: the interface of the default route)
#   --shards N     c10m shards (default: online CPUs, as c10m does)
#   --cpus LIST    CPU of shard 0,1,... (default: online CPUs in order, which is where c10m
#                  pins shard i: core_affinity's list, index i modulo its length)
#   --ring N       RX/TX descriptors per queue (default: the NIC's max, at most 4096)
#   --rx-usecs N / --tx-usecs N   interrupt coalescing (default 50 / 50: a push tolerates
#                  50 µs, and a broadcast of 1M frames then takes ~20k interrupts, not 1M)
#
# On a live NIC, the tools it reads the NIC with (ethtool, and ip and python3) are installed
# with apt-get when missing (as root; otherwise it names the Debian packages to install).
set -euo pipefail
args=("$@")
apply=0 iface='' shards='' cpus='' ring='' rxus=50 txus=50 describe=''
while [ $# -gt 0 ]; do
  case $1 in
    --apply) apply=1 ;;
    --iface) iface=$2; shift ;;
    --shards) shards=$2; shift ;;
    --cpus) cpus=$2; shift ;;
    --ring) ring=$2; shift ;;
    --rx-usecs) rxus=$2; shift ;;
    --tx-usecs) txus=$2; shift ;;
    --describe) describe=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "nic.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -z "$describe" ] || [ $apply = 0 ] || { echo "nic.sh: --describe is a dry run; drop --apply" >&2; exit 2; }

# --- what the NIC is -----------------------------------------------------------------------
if [ -n "$describe" ]; then
  src() { cat "$describe/$1" 2>/dev/null || true; }
  drv=$(src ethtool-i.txt); ch=$(src ethtool-l.txt); rg=$(src ethtool-g.txt); co=$(src ethtool-c.txt)
  irqs_raw=$(src interrupts.txt); online=$(src cpus); online=${online:-0}
  [ -n "$iface" ] || iface=$(awk '/^iface:/ {print $2}' "$describe/ethtool-i.txt" 2>/dev/null || true)
  iface=${iface:-eth0}
else
  missing=()
  for tool in ethtool:ethtool ip:iproute2 python3:python3; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
  done
  if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      echo "nic.sh: ${missing[*]} not installed (as root: apt-get install ${missing[*]})" >&2; exit 1
    fi
    echo "nic.sh: installing ${missing[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq "${missing[@]}"; } >/dev/null ||
      { echo "nic.sh: apt-get install ${missing[*]} failed" >&2; exit 1; }
  fi
  [ -n "$iface" ] || iface=$(ip -o route show default | awk '{for (i=1;i<NF;i++) if ($i=="dev") print $(i+1)}' | head -1)
  [ -n "$iface" ] && [ -e "/sys/class/net/$iface" ] || { echo "nic.sh: no interface (use --iface)" >&2; exit 1; }
  drv=$(ethtool -i "$iface" 2>/dev/null || true); ch=$(ethtool -l "$iface" 2>/dev/null || true)
  rg=$(ethtool -g "$iface" 2>/dev/null || true); co=$(ethtool -c "$iface" 2>/dev/null || true)
  irqs_raw=$(grep -E "[[:space:]]$iface(-|$)|[[:space:]]$iface[-_]" /proc/interrupts || true)
  online=$(cat /sys/devices/system/cpu/online)
fi

# expand "0-3,8" -> "0 1 2 3 8"
expand() { local part out=(); IFS=, read -ra parts <<<"$1"; for part in "${parts[@]}"; do
  if [[ $part == *-* ]]; then out+=($(seq "${part%-*}" "${part#*-}")); else out+=("$part"); fi; done; echo "${out[@]}"; }
cpu_list=($(expand "${cpus:-$online}"))
shards=${shards:-${#cpu_list[@]}}
# ethtool section value: sect = max|cur, key = RX|TX|Combined|...
field() { echo "$1" | awk -v sect="$2" -v key="$3" '
  /^Pre-set maximums/ {s="max"} /^Current hardware settings/ {s="cur"}
  s==sect { k=$0; sub(/:.*/, "", k); v=$0; sub(/^[^:]*:[ \t]*/, "", v);
            if (k==key) { print (v=="n/a" ? 0 : v); exit } }'; }
coal() { echo "$co" | awk -v key="$1" '{k=$0; sub(/:.*/, "", k); v=$0; sub(/^[^:]*:[ \t]*/, "", v); if (k==key) {print v; exit}}'; }
num() { [[ ${1:-} =~ ^[0-9]+$ ]] && echo "$1" || echo 0; }

driver=$(echo "$drv" | awk '/^driver:/ {print $2}')
c_max=$(num "$(field "$ch" max Combined)"); c_cur=$(num "$(field "$ch" cur Combined)")
rx_max=$(num "$(field "$ch" max RX)"); rx_cur=$(num "$(field "$ch" cur RX)")
tx_max=$(num "$(field "$ch" max TX)"); tx_cur=$(num "$(field "$ch" cur TX)")
g_rx_max=$(num "$(field "$rg" max RX)"); g_rx=$(num "$(field "$rg" cur RX)")
g_tx_max=$(num "$(field "$rg" max TX)"); g_tx=$(num "$(field "$rg" cur TX)")
# IRQ of each queue, in queue order (names like eth0-TxRx-3, mlx5_comp3@pci..., eth0-3)
mapfile -t irq_lines < <(echo "$irqs_raw" | awk 'NF {irq=$1; sub(/:$/, "", irq); name=$NF;
  if (name ~ /[Tt]x[Rr]x|rx|tx|comp|-[0-9]+$/ && name !~ /-(lsc|misc|other|async)$/) {
    q=name; sub(/^.*[^0-9]/, "", q); if (q == "") q=0; print q, irq, name } }' | sort -n)

if [ "$c_max" -gt 0 ]; then mode=combined; q_max=$c_max; q_cur=$c_cur
elif [ "$rx_max" -gt 0 ]; then mode=rxtx; q_max=$rx_max; [ "$tx_max" -ge "$q_max" ] || q_max=$tx_max; q_cur=$rx_cur
else mode=fixed; q_cur=$(ls -d /sys/class/net/"$iface"/queues/rx-* 2>/dev/null | wc -l); q_cur=$(( q_cur > 0 ? q_cur : 1 )); q_max=$q_cur; fi
queues=$(( shards < q_max ? shards : q_max ))

echo "# NIC $iface, driver ${driver:-unknown}$([ -n "$describe" ] && echo " (described by $describe)")"
echo "#   queues: $mode, $q_cur now, max $q_max; rings RX $g_rx/$g_rx_max TX $g_tx/$g_tx_max; coalescing $( [ -n "$co" ] && echo "adaptive-rx $(coal Adaptive\ RX | awk '{print $1}') rx-usecs $(coal rx-usecs) tx-usecs $(coal tx-usecs)" || echo n/a)"
echo "#   IRQs: ${#irq_lines[@]} queue IRQ(s)$( [ ${#irq_lines[@]} -gt 0 ] && printf ' (%s)' "$(printf '%s ' "${irq_lines[@]:0:4}" | awk '{for(i=3;i<=NF;i+=3) printf "%s%s", $i, (i+3<=NF?" ":"")}')$([ ${#irq_lines[@]} -gt 4 ] && echo ' ...')" )"
echo "#   c10m: $shards shard(s) on CPUs ${cpu_list[*]:0:16}$([ ${#cpu_list[@]} -gt 16 ] && echo ' ...') -> $queues queue(s)$([ "$queues" -lt "$shards" ] && echo ", RPS/RFS spreads the rest")"

# --- the plan ------------------------------------------------------------------------------
cmds=()
add() { cmds+=("$*"); }
# cpumask in sysfs format (32-bit groups, comma-separated) for a list of CPUs
mask() { python3 -c '
import sys
m = 0
for c in sys.argv[1:]: m |= 1 << int(c)
h = format(m, "x"); h = "0" * (-len(h) % 8) + h
print(",".join(h[i:i+8] for i in range(0, len(h), 8)))' "$@"; }
# a sysfs write, planned only when the file does not hold the value already
setfs() { # setfs PATH VALUE
  local cur
  if [ -z "$describe" ] && [ -r "$1" ]; then
    # a listed file can still fail to read (xps_cpus of a single-queue virtual NIC): skip it
    cur=$(tr -d ',\n' <"$1" 2>/dev/null) || { echo "#   ($1 cannot be read: left alone)"; return 0; }
    cur=$(echo "$cur" | sed 's/^0*//'); [ "$cur" != "$(echo "$2" | tr -d , | sed 's/^0*//')" ] || return 0
  fi
  add "echo $2 > $1"
}
cpu_of() { echo "${cpu_list[$(( $1 % ${#cpu_list[@]} ))]}"; }

# irqbalance would move the IRQs pinned below.
if [ -n "$describe" ] || pgrep -x irqbalance >/dev/null || systemctl list-unit-files irqbalance.service >/dev/null 2>&1; then
  add "systemctl disable --now irqbalance"
fi
case $mode in
  combined) [ "$q_cur" -eq "$queues" ] || add "ethtool -L $iface combined $queues" ;;
  rxtx) [ "$q_cur" -eq "$queues" ] || add "ethtool -L $iface rx $queues tx $queues" ;;
  fixed) echo "#   (driver cannot change its queue count)" ;;
esac
# Changing the queue count re-creates the queue IRQs (new numbers) and sysfs queues: with
# --apply, do it first and start over so the rest is planned from the new state.
if [ $apply = 1 ] && [ ${#cmds[@]} -gt 0 ] && [[ ${cmds[-1]} == "ethtool -L "* ]] && [ -z "${NIC_SH_PASS2:-}" ]; then
  for c in "${cmds[@]}"; do
    if out=$(bash -c "$c" 2>&1); then echo "ok    $c"; else echo "FAIL  $c: $(echo "$out" | head -1)"; exit 1; fi
  done
  sleep 1
  NIC_SH_PASS2=1 exec "$0" "${args[@]}"
fi
if [ "$g_rx_max" -gt 0 ]; then
  want_rx=${ring:-$(( g_rx_max < 4096 ? g_rx_max : 4096 ))}; want_tx=${ring:-$(( g_tx_max < 4096 ? g_tx_max : 4096 ))}
  [ "$g_rx" -eq "$want_rx" ] && [ "$g_tx" -eq "$want_tx" ] || add "ethtool -G $iface rx $want_rx tx $want_tx"
else echo "#   (no ring parameters)"; fi
if [ -n "$co" ]; then
  add "ethtool -C $iface adaptive-rx off rx-usecs $rxus tx-usecs $txus"
else echo "#   (no interrupt coalescing control)"; fi
# IRQ of queue i -> CPU of shard i
if [ ${#irq_lines[@]} -eq 0 ]; then echo "#   (no per-queue IRQs: virtual device or not found in /proc/interrupts)"; fi
declare -A seen=()
for line in "${irq_lines[@]}"; do
  read -r q irq name <<<"$line"
  [ "$q" -lt "$queues" ] || continue
  seen[$q]=1
  add "echo $(cpu_of "$q") > /proc/irq/$irq/smp_affinity_list   # $name -> shard $q"
done
if [ ${#irq_lines[@]} -gt 0 ]; then
  for q in $(seq 0 $((queues - 1))); do
    [ -n "${seen[$q]:-}" ] || echo "#   queue $q: its IRQ appears after ethtool -L; --apply re-reads and pins it to CPU $(cpu_of "$q")"
  done
fi
# XPS: tx queue i <- CPUs of the shards that use it (shard j uses queue j mod queues)
# RPS/RFS: only with fewer queues than shards; each rx queue spreads to its shards' CPUs and
# RFS steers a flow to the CPU where its shard last read it.
sysq=/sys/class/net/$iface/queues
for i in $(seq 0 $((queues - 1))); do
  set_cpus=(); for j in $(seq "$i" "$queues" $((shards - 1))); do set_cpus+=("$(cpu_of "$j")"); done
  m=$(mask "${set_cpus[@]}")
  setfs "$sysq/tx-$i/xps_cpus" "$m"
  if [ "$queues" -lt "$shards" ]; then
    setfs "$sysq/rx-$i/rps_cpus" "$m"
    setfs "$sysq/rx-$i/rps_flow_cnt" "$(( 65536 / queues ))"
  else
    setfs "$sysq/rx-$i/rps_cpus" 0
  fi
done
[ "$queues" -ge "$shards" ] || setfs /proc/sys/net/core/rps_sock_flow_entries 65536

# --- dry run or apply -----------------------------------------------------------------------
if [ ${#cmds[@]} -eq 0 ]; then echo "# nothing to change"; exit 0; fi
if [ $apply = 0 ]; then
  echo "# dry run: commands for --apply"
  printf '%s\n' "${cmds[@]}"
  exit 0
fi
fail=0
for c in "${cmds[@]}"; do
  if out=$(bash -c "$c" 2>&1); then echo "ok    $c"
  else echo "FAIL  $c: $(echo "$out" | head -1)"; fail=1; fi
done
exit $fail
