#!/usr/bin/env bash
# Runs a command on this machine as if on the project's slower machine kind (2 cores, AVX2 and no
# AVX-512, about 3x slower on dense math), to estimate what a test run or a benchmark takes
# there when no such machine is at hand. Two things slow the command down:
#   - XLA:CPU generates code for AVX2 at most (--xla_cpu_max_isa=AVX2 added to XLA_FLAGS), and
#     oneDNN dispatches no further (ONEDNN_MAX_CPU_ISA=AVX2);
#   - LOAD busy loops (default 2, one per core) share the cores with it.
# An emulation, not the machine: the instruction set is the real one's, the rest (clock, caches,
# memory) is stood in for by the shared cores, which slow compiling as much as computing. JAX's
# compilation cache keys hold XLA_FLAGS, so these programs are cached apart from the native ones.
#
# Usage, from the repository's root:  LOAD=2 bash bench/as_avx2.sh COMMAND [ARGS...]
# Prints the CPU, the settings and the command's wall time; exits with the command's status.
set -u
LOAD=${LOAD:-2}
if [ $# -eq 0 ]; then
  echo "usage: LOAD=N bash bench/as_avx2.sh COMMAND [ARGS...]" >&2
  exit 2
fi
if ! grep -q -w avx2 /proc/cpuinfo; then
  echo "as_avx2.sh: this CPU has no AVX2; XLA would refuse the cap" >&2
  exit 2
fi
loops=()
trap 'kill "${loops[@]}" 2>/dev/null; wait "${loops[@]}" 2>/dev/null' EXIT  # gone on return
for _ in $(seq 1 "$LOAD"); do
  bash -c 'while :; do :; done' &
  loops+=($!)
done
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_cpu_max_isa=AVX2" ONEDNN_MAX_CPU_ISA=AVX2
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
family=$(grep -m1 "cpu family" /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
model=$(grep -m1 "^model[[:space:]]*:" /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
avx512=$(grep -q -w avx512f /proc/cpuinfo && echo "AVX-512" || echo "no AVX-512")
echo "# as_avx2: $cpu (family $family, model $model), $(nproc) cores, $avx512 here;" \
     "XLA capped at AVX2, $LOAD busy loop(s); XLA_FLAGS=$XLA_FLAGS"
start=$(date +%s.%N)
"$@"
status=$?
seconds=$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $start }")
echo "# as_avx2: $seconds s wall, exit status $status"
exit $status
