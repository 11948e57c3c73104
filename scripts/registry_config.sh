#!/usr/bin/env bash
# List how this machine reaches its package registries (apt and pip), so that a root
# filesystem (scripts/fresh_machine_check.sh) or a container build (scripts/container_build.sh)
# sees exactly the same configuration: the same files, read-only, at the same paths, and the
# same environment. Nothing is copied into the repo or into an image, and nothing here names a
# host: everything is found at run time on the machine that runs it.
#
# Output, one item a line (paths are absolute and exist on this machine):
#   env NAME    pass the variable NAME through, with its value in this environment
#   bind PATH   bind PATH (a file or a folder) read-only at the same path
#   ca PATH     a certificate file that the configuration names inside /etc/ssl/certs
#
# Why `ca` is not a `bind`: Debian's ca-certificates package rebuilds /etc/ssl/certs when it is
# installed (scripts/setup.sh installs it, as a dependency of its build packages), and a file
# bound there makes its post-install script fail (a mount point cannot be renamed over: EBUSY),
# so dpkg fails. Such a file is given to that package as a local certificate instead
# (/usr/local/share/ca-certificates/, the place Debian provides for them): once installed,
# ca-certificates builds the bundle at the configured path from the distribution's
# certificates and this one, so the path that the configuration names holds it.
#
# What is looked at:
#   - environment: PIP_*, *_proxy / *_PROXY, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, SSL_CERT_FILE,
#     SSL_CERT_DIR (the variables pip, requests, Python's ssl module and apt's http methods read);
#   - pip's configuration files: $PIP_CONFIG_FILE, $XDG_CONFIG_DIRS/pip/pip.conf, /etc/pip.conf,
#     and those of root's home (~/.pip/pip.conf, ~/.config/pip/pip.conf: the commands run as root);
#   - apt's: /etc/apt/apt.conf{,.d/*}, sources.list{,.d/*.list,.d/*.sources}, auth.conf{,.d/*},
#     preferences{,.d/*}, trusted.gpg{,.d/*};
#   - name resolution: /etc/resolv.conf, /etc/hosts;
#   - every local path those values name: absolute paths and file:// URLs in the variables and in
#     pip's files (certificates, find-links folders, file:// indexes: the folder holding .../simple,
#     constraint files), and in
#     apt's files the Signed-By keyrings and the values of certificate and key options.
#
# Usage: scripts/registry_config.sh
set -euo pipefail

[ $# -eq 0 ] || { echo "registry_config.sh: takes no arguments (got $1); it prints this machine's registry configuration" >&2; exit 2; }

declare -A seen=()
emit() {  # emit KIND PATH, once per path
  local kind=$1 path=$2
  [ -z "${seen[$path]:-}" ] || return 0
  seen[$path]=1
  echo "$kind $path"
}

# A path that the configuration names: a file or folder under /etc/ssl/certs is Debian's
# ca-certificates' business (see above); anything else is bound as it is.
named_path() {
  local p=$1
  p=${p%/}
  # A file:// index's pages link to files beside its simple/ folder (../../files/...): bind
  # the folder that holds the index.
  case "$p" in file:///*/simple) p=${p%/simple} ;; esac
  p=${p#file://}
  [ -n "$p" ] && [ "${p:0:1}" = / ] && [ -e "$p" ] || return 0
  case "$p" in
    /etc/ssl/certs|/etc/ssl/certs/*)
      if [ -f "$p" ]; then emit ca "$p"; fi ;;
    *) emit bind "$p" ;;
  esac
}

# Every token of a value that is an absolute path or a file:// URL.
paths_in() {
  local tok
  for tok in $(printf '%s\n' "$1" | tr ' \t,;=' '\n\n\n\n\n'); do
    case "$tok" in
      /*|file:///*) named_path "$tok" ;;
    esac
  done
}

# 1. environment
while IFS= read -r name; do
  case "$name" in
    PIP_*|*_proxy|*_PROXY|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|SSL_CERT_FILE|SSL_CERT_DIR)
      echo "env $name"
      paths_in "${!name}" ;;
  esac
done < <(compgen -e | sort)

# 2. pip's configuration files, and the paths their values name
root_home=$(getent passwd root | cut -d: -f6)
pip_files=("${PIP_CONFIG_FILE:-}")
IFS=: read -r -a xdg_dirs <<< "${XDG_CONFIG_DIRS:-/etc/xdg}"
for d in "${xdg_dirs[@]}"; do pip_files+=("$d/pip/pip.conf"); done
pip_files+=(/etc/pip.conf "$root_home/.pip/pip.conf" "$root_home/.config/pip/pip.conf")
for f in "${pip_files[@]}"; do
  [ -n "$f" ] && [ -f "$f" ] || continue
  emit bind "$f"
  # values of `key = value` lines, and their continuation lines
  while IFS= read -r line; do
    case "$line" in \#*|\;*|\[*) continue ;; esac
    paths_in "${line#*=}"
  done < "$f"
done

# 3. apt's configuration files, and the keyrings and certificates they name
shopt -s nullglob
apt_files=(/etc/apt/apt.conf /etc/apt/apt.conf.d/* /etc/apt/sources.list /etc/apt/sources.list.d/*.list
           /etc/apt/sources.list.d/*.sources /etc/apt/auth.conf /etc/apt/auth.conf.d/* /etc/apt/preferences
           /etc/apt/preferences.d/* /etc/apt/trusted.gpg /etc/apt/trusted.gpg.d/*)
for f in "${apt_files[@]}"; do
  [ -f "$f" ] || continue
  emit bind "$f"
  # deb822 `Signed-By: /path`, one-line `[signed-by=/path]`, and `Acquire::https::CaInfo "/path";`-like options
  while IFS= read -r value; do
    paths_in "$value"
  done < <(grep -hioE '(signed-by[:=][[:space:]]*[^] ]+|(CaInfo|CaPath|SslCert|SslKey|CrlFile)[[:space:]]+"[^"]+")' "$f" \
             | sed -E 's/^[^:= ]+[:= ][[:space:]]*//; s/"//g')
done

# 4. name resolution
for f in /etc/resolv.conf /etc/hosts; do
  if [ -f "$f" ]; then emit bind "$f"; fi
done
