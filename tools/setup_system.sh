#!/usr/bin/env bash
# What `make` needs from the machine, checked before anything else runs (the Makefile calls it).
#
#   tools/setup_system.sh venv DIR    DIR as a Python 3.11 virtual environment. A missing DIR is
#                                     created with $PYTHON when set, else python3.11, else
#                                     python3 when that is 3.11; none of them: stop, saying how to
#                                     get 3.11. An existing DIR of another Python (or whose Python
#                                     no longer runs) is reported, never used.
#   tools/setup_system.sh packages    The system packages `make test` drives: PostgreSQL (initdb
#                                     under /usr/lib/postgresql/*/bin), Chromium and chromedriver
#                                     (/usr/bin), docker-compose (on PATH). Missing ones are
#                                     installed as root with apt-get (what CI does); otherwise it
#                                     stops, naming them and the command to run.
#
# SKIP_SYSTEM_CHECK=1 skips `packages`: the tests that need a missing package then fail, each
# saying what it needs. SYSTEM_CHECK_ROOT is for tests/deploy/test_setup.py only: it prefixes the
# absolute paths looked at, so that a test can present a machine that lacks some of them.
# Only bash builtins run until something must be created or installed: milliseconds.
set -euo pipefail

PACKAGES_INSTALL_HINT="Run as root with apt-get, \`make test\` installs them itself (as CI does)."

say() { printf '%s\n' "$@" >&2; }

# "3.11" for the interpreter $1; empty when it does not run.
py_version() {
  "$1" -S -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

ensure_venv() {
  local dir=$1 v cand path found="" tried=()
  if [ -e "$dir" ] || [ -L "$dir" ]; then
    v=$(py_version "$dir/bin/python")
    [ "$v" = 3.11 ] && return 0
    if [ -n "$v" ]; then
      say "$dir was made with Python $v; this project needs Python 3.11 (pyproject.toml's requires-python)."
    else
      say "$dir exists but its bin/python does not run (was the Python it was made from removed?)."
    fi
    say "Remove it, then run make again (it makes a new one with Python 3.11):" "    rm -rf $dir"
    return 1
  fi
  local candidates=(python3.11 python3)
  [ -n "${PYTHON:-}" ] && candidates=("$PYTHON")
  for cand in "${candidates[@]}"; do
    path=$(command -v "$cand" || true)
    if [ -z "$path" ]; then
      tried+=("$cand: not found")
      continue
    fi
    v=$(py_version "$path")
    if [ "$v" = 3.11 ]; then
      found=$path
      break
    fi
    if [ -n "$v" ]; then
      tried+=("$cand: $path is Python $v")
    else
      tried+=("$cand: $path does not run")
    fi
  done
  if [ -z "$found" ]; then
    say "This project needs Python 3.11 (pyproject.toml's requires-python) to make $dir; none was found:"
    say "${tried[@]/#/    }"
    [ -n "${PYTHON:-}" ] && say "(PYTHON is set, in the environment or on make's command line: only it is tried.)"
    say "Install it, then run make again; one of:" \
      "    sudo apt-get install -y python3.11 python3.11-venv   (Debian 12, Ubuntu 22.04; other Ubuntus: the deadsnakes PPA)" \
      "    pyenv install 3.11 && pyenv local 3.11" \
      "    uv python install 3.11, then: make PYTHON=\"\$(uv python find 3.11)\" ..." \
      "Or name one: make PYTHON=/path/to/python3.11 ..."
    return 1
  fi
  say "Creating $dir with $found (Python 3.11)"
  if ! "$found" -m venv "$dir"; then
    rm -rf "$dir"  # it did not exist before: leave no half-made venv behind
    say "Could not make $dir with $found. On Debian/Ubuntu the venv module is a package of its own:" \
      "    sudo apt-get install -y python3.11-venv"
    return 1
  fi
}

# The Debian packages whose files are missing, in install order.
missing_packages() {
  local root=${SYSTEM_CHECK_ROOT:-} f pg=""
  for f in "$root"/usr/lib/postgresql/*/bin/initdb; do
    [ -x "$f" ] && pg=1
  done
  [ -n "$pg" ] || printf '%s\n' "postgresql (no $root/usr/lib/postgresql/*/bin/initdb)"
  [ -x "$root/usr/bin/chromium" ] || printf '%s\n' "chromium (no $root/usr/bin/chromium)"
  [ -x "$root/usr/bin/chromedriver" ] || printf '%s\n' "chromium-driver (no $root/usr/bin/chromedriver)"
  command -v docker-compose >/dev/null || printf '%s\n' "docker-compose (no docker-compose on PATH)"
  return 0
}

ensure_packages() {
  if [ "${SKIP_SYSTEM_CHECK:-}" = 1 ]; then
    say "SKIP_SYSTEM_CHECK=1: PostgreSQL, Chromium, chromedriver and docker-compose not checked."
    return 0
  fi
  local missing=() names=() line
  while IFS= read -r line; do missing+=("$line"); done < <(missing_packages)
  [ ${#missing[@]} -eq 0 ] && return 0
  for line in "${missing[@]}"; do names+=("${line%% *}"); done
  if [ "$EUID" -eq 0 ] && command -v apt-get >/dev/null; then
    say "Installing the system packages the tests drive: ${names[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${names[@]}" >/dev/null
    missing=()
    while IFS= read -r line; do missing+=("$line"); done < <(missing_packages)
    [ ${#missing[@]} -eq 0 ] && return 0
    say "Still missing after apt-get install -y ${names[*]}:"
    say "${missing[@]/#/    }"
    return 1
  fi
  local sudo="sudo "
  [ "$EUID" -eq 0 ] && sudo=""
  say "\`make test\` drives system packages that are missing:"
  say "${missing[@]/#/    }"
  say "Install them, then run make test again:" \
    "    ${sudo}apt-get update && ${sudo}apt-get install -y ${names[*]}"
  if command -v apt-get >/dev/null; then
    say "$PACKAGES_INSTALL_HINT"
  else
    say "(Debian's package names; without apt-get install your system's equivalents.)"
  fi
  say "SKIP_SYSTEM_CHECK=1 skips this check; the tests that need them then fail."
  return 1
}

case "${1:-}" in
  venv) ensure_venv "${2:?usage: $0 venv DIR}" ;;
  packages) ensure_packages ;;
  *)
    say "usage: $0 venv DIR | packages"
    exit 2
    ;;
esac
