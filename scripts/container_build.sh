#!/usr/bin/env bash
# Build the Containerfile with podman, with this machine's registry configuration visible to the
# build's RUN steps (read-only, nothing of it in any layer), and run the demo in the image.
#
#   bash scripts/container_build.sh [--base IMAGE] [--tag TAG] [--setup-args "--cuda --arch sm_80"]
#                                   [--build-base IMAGE] [--isolation chroot|oci] [CONTEXT]
#   bash scripts/container_build.sh --run-demo IMAGE [--shm-size 2g]
#
# Build: CONTEXT (default: this clone) is built into TAG (default localhost/savedeep:latest).
# --base IMAGE sets both stages' base (BUILD_BASE and RUNTIME_BASE); --build-base the build
# stage's alone (the CUDA variant's toolkit image). What scripts/registry_config.sh lists is given
# to every RUN step: each `bind` path as a read-only volume at the same path (except where the
# base image has its own file there), each `ca` file as a local certificate of Debian's
# ca-certificates (why: see that script), and the `env` variables through a read-only file,
# /run/savedeep-registry.env, that the build stage reads (values never go into build arguments,
# which images record). --isolation chroot (the default) runs RUN steps without an OCI runtime:
# on machines where podman cannot start containers (crun refuses hybrid cgroups) it still builds.
#
# --run-demo IMAGE: `podman run --rm --shm-size SIZE IMAGE run configs/demo.yaml --overwrite`;
# where podman cannot start a container, the image's own root filesystem (podman create + mount)
# is entered with chroot instead, as the image's user, in its working directory, with its
# environment and entrypoint, /proc and a /dev/shm of SIZE: the same program, without a
# container's isolation. Then it loads the demo's output with the image's Python.
#
# Needs root and podman (apt-get install podman). Exit codes: 0 done, 1 failed, 2 usage.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONTEXT=$ROOT
BASE=""
BUILD_BASE=""
TAG=localhost/savedeep:latest
SETUP_ARGS=""
ISOLATION=chroot
RUN_DEMO=""
SHM_SIZE=2g
ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE=$2; shift ;;
    --build-base) BUILD_BASE=$2; shift ;;
    --tag) TAG=$2; shift ;;
    --setup-args) SETUP_ARGS=$2; shift ;;
    --isolation) ISOLATION=$2; shift ;;
    --run-demo) RUN_DEMO=$2; shift ;;
    --shm-size) SHM_SIZE=$2; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    -*) echo "container_build.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) CONTEXT=$(realpath "$1") ;;
  esac
  shift
done
die() { echo "container_build.sh: error: $*" >&2; exit 2; }
say() { echo "[container] $*" >&2; }
[ "$(id -u)" = 0 ] || die "must run as root (podman's rootful storage, mounts): sudo bash scripts/container_build.sh"
command -v podman >/dev/null || die "podman not found: apt-get install podman"
case "$ISOLATION" in chroot|oci) ;; *) die "--isolation: chroot or oci, got '$ISOLATION'" ;; esac

# ---------------------------------------------------------------------------------------------
if [ -n "$RUN_DEMO" ]; then
  [[ "$SHM_SIZE" =~ ^[1-9][0-9]*[kmgKMG]?$ ]] || die "--shm-size: expected a size such as 2g, got '$SHM_SIZE'"
  podman image exists "$RUN_DEMO" || die "--run-demo: no image $RUN_DEMO; build it first"
  if [ -z "${SAVEDEEP_CONTAINER_NS:-}" ]; then
    exec env SAVEDEEP_CONTAINER_NS=1 unshare --mount --propagation private -- bash "$0" "${ARGS[@]}"
  fi
  demo=(run configs/demo.yaml --overwrite --no-progress)
  say "podman run --rm --shm-size=$SHM_SIZE $RUN_DEMO ${demo[*]}"
  set +e
  out=$(podman run --rm --network none --shm-size="$SHM_SIZE" "$RUN_DEMO" "${demo[@]}" 2>&1)
  rc=$?
  set -e
  echo "$out"
  if [ $rc = 0 ]; then say "the demo ran in a container"; exit 0; fi
  # Did the entrypoint run at all? An OCI runtime error means the container never started.
  if ! grep -q 'OCI runtime\|crun:\|runc:' <<< "$out"; then say "the demo failed in the container (exit $rc)"; exit 1; fi
  say "podman cannot start a container on this machine (above); entering the image's root filesystem with chroot"

  ctr=$(podman create "$RUN_DEMO")
  mnt=""
  mounted=()
  cleanup() {
    set +e
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[i]}" || umount -l "${mounted[i]}"; done
    [ -z "$mnt" ] || podman umount "$ctr" > /dev/null
    podman rm -f "$ctr" > /dev/null
  }
  trap cleanup EXIT
  mnt=$(podman mount "$ctr")
  mount -t proc proc "$mnt/proc" && mounted+=("$mnt/proc")
  mkdir -p "$mnt/dev/shm"
  mount -t tmpfs -o "size=$SHM_SIZE,mode=1777,nosuid,nodev" shm "$mnt/dev/shm" && mounted+=("$mnt/dev/shm")
  for node in null zero full random urandom tty; do
    [ -e "$mnt/dev/$node" ] || : > "$mnt/dev/$node"
    mount --bind "/dev/$node" "$mnt/dev/$node" && mounted+=("$mnt/dev/$node")
  done
  user=$(podman image inspect --format '{{.Config.User}}' "$RUN_DEMO")
  workdir=$(podman image inspect --format '{{.Config.WorkingDir}}' "$RUN_DEMO")
  mapfile -t envs < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$RUN_DEMO" | sed '/^$/d')
  mapfile -t entry < <(podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$RUN_DEMO" | sed '/^$/d')
  uid=$(chroot "$mnt" id -u "${user:-root}")
  gid=$(chroot "$mnt" id -g "${user:-root}")
  home=$(chroot "$mnt" getent passwd "$uid" | cut -d: -f6)
  inside() {
    chroot --userspec="$uid:$gid" "$mnt" /usr/bin/env -i HOME="$home" "${envs[@]}" \
      /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "${workdir:-/}" "$@" < /dev/null
  }
  say "as ${user:-root} (uid $uid) in ${workdir:-/}: ${entry[*]} ${demo[*]}"
  inside "${entry[@]}" "${demo[@]}"
  inside python -c 'import savedeep; df = savedeep.load("demo/out/acts.pk"); print("demo output:", df.shape, list(df.columns))'
  say "the demo ran in the image's root filesystem (chroot, not a container)"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
[ -f "$CONTEXT/Containerfile" ] || die "$CONTEXT has no Containerfile; give the clone to build"
if [ -n "$BASE" ]; then
  BUILD_BASE=${BUILD_BASE:-$BASE}
fi
build_args=()
[ -z "$BUILD_BASE" ] || build_args+=(--build-arg "BUILD_BASE=$BUILD_BASE")
[ -z "$BASE" ] || build_args+=(--build-arg "RUNTIME_BASE=$BASE")
[ -z "$SETUP_ARGS" ] || build_args+=(--build-arg "SETUP_ARGS=$SETUP_ARGS")

tmp=$(mktemp -d)
base_mnt=""
base_for_files=${BUILD_BASE:-debian:bookworm}
cleanup_build() {
  [ -z "$base_mnt" ] || podman image unmount "$base_for_files" > /dev/null || true
  rm -rf "$tmp"
}
trap cleanup_build EXIT
# Where the base image is here, its own files win over this machine's (as in the fresh-machine check).
if podman image exists "$base_for_files"; then base_mnt=$(podman image mount "$base_for_files"); fi

volumes=()
envfile="$tmp/registry.env"
: > "$envfile"
chmod 600 "$envfile"
n=0
while read -r kind path; do
  case "$kind" in
    env)
      value=${!path}
      printf "export %s='%s'\n" "$path" "${value//\'/\'\\\'\'}" >> "$envfile" ;;
    bind)
      if [ -n "$base_mnt" ] && [ ! -d "$path" ] && [ -e "$base_mnt$path" ]; then
        say "kept the base image's own $path"; continue
      fi
      volumes+=(--volume "$path:$path:ro") ;;
    ca)
      n=$((n + 1))
      volumes+=(--volume "$path:/usr/local/share/ca-certificates/host-registry-$n.crt:ro") ;;
  esac
done < <(bash "$ROOT/scripts/registry_config.sh")
volumes+=(--volume "$envfile:/run/savedeep-registry.env:ro")

say "podman build --isolation $ISOLATION -t $TAG ${build_args[*]} $CONTEXT (${#volumes[@]} read-only volumes of registry configuration)"
start=$(date +%s)
podman build --isolation "$ISOLATION" --network host --layers \
  "${build_args[@]}" "${volumes[@]}" -f "$CONTEXT/Containerfile" -t "$TAG" "$CONTEXT"
say "built $TAG in $(( $(date +%s) - start )) s"
podman image inspect --format '{{.Size}}' "$TAG" | awk -v t="$TAG" '{ printf "[container] %s: %.0f MB\n", t, $1 / 1e6 }' >&2
