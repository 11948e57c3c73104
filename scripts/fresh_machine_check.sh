#!/usr/bin/env bash
# Proof that a pristine Debian 12 machine runs the README's two commands.
#
#   sudo bash scripts/fresh_machine_check.sh [--shm-size 2g] [--timeout MIN] [--keep] [--workdir DIR]
#                                            [--commit REV] [--podman] [--print-commands]
#
# 1. builds a minimal Debian 12 root filesystem with mmdebstrap (--variant=minbase bookworm,
#    from the sources and apt options this machine's apt uses; none of them is left in it);
# 2. copies a clean `git clone` of the commit (default HEAD; uncommitted changes are not in it)
#    to /root/savedeep inside it;
# 3. in a private mount namespace, binds the root filesystem on itself (so that its / is a
#    mount point, as a machine's is), mounts /proc, /sys (read-only; this machine's cgroup file
#    systems in it, which daemons such as slurmd need), /dev/pts and a fresh
#    /dev/shm of --shm-size (savedeep's rings live there; the machine's own /dev/shm and its
#    segments are not shared), and makes this machine's registry configuration visible
#    read-only at the same paths (scripts/registry_config.sh says what and why);
# 4. runs the README's first two commands (read from that commit's README.md, so the check
#    follows the README) one after the other, as root in a login shell with a clean environment
#    (HOME=/root, the registry variables passed through, nothing else), with --timeout minutes each;
# 5. prints pass or fail with the time of each step, and the tests that were skipped and why.
#
# Every mount is undone on exit, on failure or Ctrl-C too (a trap, inside a mount namespace of
# its own, so even a killed check leaves no mount behind), processes still running inside are
# ended, and the root filesystem is deleted unless --keep. The logs stay in DIR/logs.
#
# --podman also imports the pristine root filesystem as a local base image and builds the
# Containerfile on it (scripts/container_build.sh), then runs the demo in the image.
#
# Needs root, mmdebstrap, unshare and chroot (apt-get install mmdebstrap; podman for --podman).
# Exit codes: 0 pass, 1 a step failed, 2 usage or a missing tool.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHM_SIZE=2g
TIMEOUT_MIN=60
KEEP=0
WORK=""
REV=HEAD
PODMAN=0
PRINT=0
ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --shm-size) SHM_SIZE=$2; shift ;;
    --timeout) TIMEOUT_MIN=$2; shift ;;
    --keep) KEEP=1 ;;
    --workdir) WORK=$2; shift ;;
    --commit) REV=$2; shift ;;
    --podman) PODMAN=1 ;;
    --print-commands) PRINT=1 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "fresh_machine_check.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
die() { echo "fresh_machine_check.sh: error: $*" >&2; exit 2; }
say() { echo "[fresh] $*" >&2; }
[[ "$TIMEOUT_MIN" =~ ^[1-9][0-9]*$ ]] || die "--timeout: expected whole minutes >= 1, got '$TIMEOUT_MIN'"
[[ "$SHM_SIZE" =~ ^[1-9][0-9]*[kmgKMG]?$ ]] || die "--shm-size: expected a size such as 2g or 512m, got '$SHM_SIZE'"

COMMIT=$(git -C "$ROOT" rev-parse --verify --quiet "$REV^{commit}") \
  || die "--commit: $REV is not a commit of $ROOT; give a commit, branch or tag"

# The README's two commands: the lines of its first ```bash block that are not comments.
readme_commands() {
  git -C "$ROOT" show "$COMMIT:README.md" \
    | awk '/^```bash[[:space:]]*$/ && !done { inside = 1; done = 1; next }
           inside && /^```/ { exit }
           inside && !/^[[:space:]]*(#|$)/ { print }'
}
mapfile -t COMMANDS < <(readme_commands)
[ ${#COMMANDS[@]} -eq 2 ] || die "README.md of $COMMIT: expected the first \`\`\`bash block to hold exactly two commands (set-up + demo, set-up + tests), found ${#COMMANDS[@]}; fix the README or this check"
if [ "$PRINT" = 1 ]; then printf '%s\n' "${COMMANDS[@]}"; exit 0; fi

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, mounts, chroot): sudo bash scripts/fresh_machine_check.sh"
for tool in mmdebstrap unshare chroot findmnt timeout; do
  command -v "$tool" >/dev/null || die "$tool not found: apt-get install mmdebstrap util-linux coreutils"
done
[ "$PODMAN" = 0 ] || command -v podman >/dev/null || die "--podman: podman not found: apt-get install podman"

# Everything below runs in a mount namespace of its own: no mount made here is seen outside,
# and all of them go when the last process of the check ends, whatever happens.
if [ -z "${SAVEDEEP_FRESH_CHECK_NS:-}" ]; then
  exec env SAVEDEEP_FRESH_CHECK_NS=1 unshare --mount --propagation private -- bash "$0" "${ARGS[@]}"
fi

if [ -z "$WORK" ]; then
  WORK=$(mktemp -d /var/tmp/savedeep-fresh.XXXXXX)
else
  [ ! -e "$WORK" ] || [ -z "$(ls -A "$WORK")" ] || die "--workdir: $WORK is not empty; give a new or empty folder"
  mkdir -p "$WORK"
fi
WORK=$(realpath "$WORK")
RFS="$WORK/rootfs"
LOGS="$WORK/logs"
mkdir -p "$LOGS"

MOUNTED=()       # mount points, in the order they were made
RESULTS=()       # "name|result|seconds"
CLEANED=0
CHILD=""         # the command running inside, while one runs
cleanup() {
  [ "$CLEANED" = 0 ] || return 0
  CLEANED=1
  exec 1>&3 2>&4
  set +e
  # The command running inside, then processes started inside the root filesystem (a daemon a
  # package started, a stuck test).
  [ -z "$CHILD" ] || kill -TERM "$CHILD" 2>/dev/null
  local pid left=()
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    case "$(readlink "/proc/$pid/root" 2>/dev/null)" in "$RFS"|"$RFS"/*) left+=("$pid") ;; esac
  done
  if [ ${#left[@]} -gt 0 ]; then
    say "ending ${#left[@]} process(es) left inside the root filesystem: ${left[*]}"
    kill -TERM "${left[@]}" 2>/dev/null; sleep 2; kill -KILL "${left[@]}" 2>/dev/null; sleep 1
  fi
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
    umount -R "${MOUNTED[i]}" 2>/dev/null || umount -R -l "${MOUNTED[i]}"
  done
  if [ -d "$RFS" ] && findmnt -rn -o TARGET | grep -qF "$RFS"; then
    say "mounts left under $RFS (not deleting it):"; findmnt -rn -o TARGET | grep -F "$RFS" >&2
  elif [ "$KEEP" = 0 ]; then
    rm -rf "$RFS" "$WORK/src" "$WORK/rootfs.tar"
  fi
  say "logs: $LOGS"
}
# A trap can fire while a step's output goes to its log: fds 3 and 4 keep the check's own.
exec 3>&1 4>&2
trap cleanup EXIT
trap 'exec 1>&3 2>&4; say "interrupted (Ctrl-C): cleaning up"; exit 130' INT
trap 'exec 1>&3 2>&4; say "interrupted (SIGTERM): cleaning up"; exit 143' TERM

# A path inside the root filesystem, resolved there: a symbolic link in it never leads a mount
# out to this machine's own files.
inside() { echo "$RFS$(chroot "$RFS" /usr/bin/realpath -m -- "$1")"; }
mount_at() {  # mount_at TARGET_INSIDE mount-args...: the target is resolved inside and created
  local target
  target=$(inside "$1"); shift
  mkdir -p "$target" && mount "$@" "$target" || return 1
  MOUNTED+=("$target")
}
bind_ro() {  # bind_ro SOURCE TARGET_INSIDE: SOURCE read-only at TARGET, a file or a folder
  local src=$1 target
  target=$(inside "$2")
  if [ -d "$src" ]; then mkdir -p "$target"; else mkdir -p "$(dirname "$target")" && : >> "$target"; fi || return 1
  mount --bind "$src" "$target" || return 1
  MOUNTED+=("$target")
  mount -o remount,bind,ro "$target"
}

step() {  # step NAME LOGFILE COMMAND...: run, time and record one step; 0 if it passed
  local name=$1 log=$2 start rc
  shift 2
  say "$name ... (log: $log)"
  start=$(date +%s)
  set +e
  "$@" > "$log" 2>&1
  rc=$?
  set -e
  local secs=$(( $(date +%s) - start ))
  if [ $rc -eq 0 ]; then
    RESULTS+=("$name|pass|$secs"); say "$name: pass in ${secs} s"
  else
    local why="exit $rc"
    [ $rc != 124 ] && [ $rc != 137 ] || why="timed out"
    RESULTS+=("$name|FAIL ($why)|$secs"); say "$name: FAIL ($why) after ${secs} s; the end of $log:"
    tail -n 40 "$log" >&2
  fi
  return $rc
}

summary() {  # summary ALL_RAN: 0 when every step passed and all of them ran
  local all_ran=$1 r name result secs total=0 failed=0
  echo
  echo "fresh-machine check of $COMMIT ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores):"
  for r in "${RESULTS[@]}"; do
    IFS='|' read -r name result secs <<< "$r"
    printf '  %-100s %-14s %6d s\n' "$name" "$result" "$secs"
    total=$((total + secs))
    [ "$result" = pass ] || failed=1
  done
  if [ -f "$LOGS/command-2.log" ] && grep -q '^SKIPPED' "$LOGS/command-2.log"; then
    echo "  tests that did not run here, with pytest's reasons:"
    grep '^SKIPPED' "$LOGS/command-2.log" | sed 's/^/    /'
  fi
  if [ $failed = 0 ] && [ "$all_ran" = 1 ]; then
    echo "PASS: a pristine Debian 12 ran the README's two commands ($total s in all)"
    return 0
  fi
  echo "FAIL: see the steps above and the logs in $LOGS"
  return 1
}

# 1. the root filesystem ------------------------------------------------------
# The sources and apt options of this machine: mmdebstrap takes the files themselves.
shopt -s nullglob
mirrors=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -s "$f" ] && mirrors+=("$f")
done
[ ${#mirrors[@]} -gt 0 ] || die "no apt sources on this machine (/etc/apt/sources.list{,.d}); mmdebstrap needs the mirror apt uses"
aptopts=()
for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
  [ -f "$f" ] && aptopts+=("--aptopt=$f")
done
shopt -u nullglob
# What mmdebstrap leaves of this machine's configuration (its sources, its copy of the apt
# options, the resolver) is removed: the root filesystem is Debian's, nothing more.
clean_hook='rm -f "$1/etc/apt/apt.conf.d/99mmdebstrap" "$1/etc/apt/sources.list" "$1"/etc/apt/sources.list.d/* "$1/etc/resolv.conf"'
step "root filesystem: mmdebstrap --variant=minbase bookworm" "$LOGS/mmdebstrap.log" \
  mmdebstrap --variant=minbase "${aptopts[@]}" --customize-hook="$clean_hook" bookworm "$RFS" "${mirrors[@]}" \
  || { summary 0; exit 1; }
if [ "$PODMAN" = 1 ]; then
  tar -C "$RFS" --numeric-owner -cf "$WORK/rootfs.tar" .
fi

# 2. a clean clone --------------------------------------------------------------
[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ] \
  || say "note: $ROOT has uncommitted changes; the check runs the commit $COMMIT, without them"
clone() {
  git clone --quiet --no-hardlinks --no-checkout "$ROOT" "$WORK/src" \
    && git -C "$WORK/src" checkout --quiet --detach "$COMMIT" \
    && cp -a "$WORK/src" "$RFS/root/savedeep"
}
step "clean clone of $COMMIT" "$LOGS/clone.log" clone || { summary 0; exit 1; }

# 3. mounts and the registry configuration --------------------------------------
mounts() {
  # The root filesystem on itself: its / is then a mount point, as a machine's is, so that
  # `unshare --mount` inside (the tests' private /dev/shm) can make it private.
  mount --bind "$RFS" "$RFS" || return 1
  MOUNTED+=("$RFS")
  mount_at /proc -t proc proc || return 1
  mount_at /sys -t sysfs -o ro,nosuid,nodev,noexec sysfs || return 1
  # A new sysfs has no cgroup file systems in it; a booted machine has them (systemd mounts them),
  # and daemons need them (slurmd: "No filesystem mounted on /sys/fs/cgroup"). They are the
  # kernel's, like /proc: this machine's, as they are.
  if mountpoint -q /sys/fs/cgroup; then
    mount_at /sys/fs/cgroup --rbind /sys/fs/cgroup || return 1
  fi
  mount_at /dev/pts -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts || return 1
  mount_at /dev/shm -t tmpfs -o "size=$SHM_SIZE,mode=1777,nosuid,nodev" shm || return 1
  local kind path n=0
  while read -r kind path; do
    case "$kind" in
      bind)
        # The root filesystem's own file wins (a keyring or apt option Debian ships): binding over
        # a packaged file would stop dpkg from ever replacing it.
        if [ -e "$(inside "$path")" ] && [ ! -d "$path" ]; then
          echo "kept the root filesystem's own $path"; continue
        fi
        bind_ro "$path" "$path" || return 1
        echo "bound $path" ;;
      ca)
        n=$((n + 1))
        bind_ro "$path" "/usr/local/share/ca-certificates/host-registry-$n.crt" || return 1
        echo "bound $path as /usr/local/share/ca-certificates/host-registry-$n.crt (ca-certificates builds $path from it)" ;;
    esac
  done < <(bash "$ROOT/scripts/registry_config.sh")
  findmnt -rn -o TARGET,FSTYPE,OPTIONS | grep -F "$RFS"
}
step "mounts: /proc, /sys, /sys/fs/cgroup, /dev/pts, /dev/shm ($SHM_SIZE), the registry configuration" "$LOGS/mounts.log" mounts \
  || { summary 0; exit 1; }

# 4. the README's two commands ------------------------------------------------------
ENVS=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
while read -r kind name; do
  [ "$kind" = env ] && ENVS+=("$name=${!name}")
done < <(bash "$ROOT/scripts/registry_config.sh")
# In the background and waited for: bash runs a trap only once the foreground command is over, and
# `wait` lets Ctrl-C or SIGTERM reach the trap at once (the cleanup then ends what runs inside).
run_inside() {
  timeout --kill-after=30 "${TIMEOUT_MIN}m" \
    chroot "$RFS" /usr/bin/env -i "${ENVS[@]}" /bin/bash -l -c "cd /root/savedeep && $1" < /dev/null &
  CHILD=$!
  wait "$CHILD"
}
ok=1
for i in 0 1; do
  step "command $((i + 1)): ${COMMANDS[i]}" "$LOGS/command-$((i + 1)).log" run_inside "${COMMANDS[i]}" || { ok=0; break; }
done

# 5. the Containerfile on the same pristine base (--podman) ---------------------------
if [ "$PODMAN" = 1 ] && [ $ok = 1 ]; then
  base=localhost/savedeep-fresh-base:bookworm
  step "podman import of the pristine root filesystem as $base" "$LOGS/podman-import.log" \
    podman import "$WORK/rootfs.tar" "$base" || ok=0
  [ $ok = 1 ] && { step "podman build of the Containerfile on $base" "$LOGS/podman-build.log" \
    bash "$WORK/src/scripts/container_build.sh" --base "$base" --tag localhost/savedeep:fresh-check "$WORK/src" || ok=0; }
  [ $ok = 1 ] && { step "the demo in the image (savedeep run configs/demo.yaml)" "$LOGS/podman-demo.log" \
    bash "$WORK/src/scripts/container_build.sh" --run-demo localhost/savedeep:fresh-check --shm-size "$SHM_SIZE" || ok=0; }
fi
summary $ok
