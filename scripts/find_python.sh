#!/usr/bin/env bash
# Prints the path of a Python 3.12+ interpreter, or explains why there is none and fails.
# Prefers 3.12 (what the pins are tested on), then newer ones.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
try() { local p; p=$(command -v "$1" 2>/dev/null) && ok "$p" && { echo "$p"; exit 0; }; }
[ -n "${PYTHON:-}" ] && try "$PYTHON"
try python3.12
# pyenv keeps other versions out of PATH until asked.
if command -v pyenv >/dev/null 2>&1; then
  for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])(\.[0-9]+)?$' | sort -V); do
    try "$(pyenv root)/versions/$version/bin/python3"
  done
fi
for candidate in python3.13 python3.14 python3; do try "$candidate"; done
echo "digitorn needs Python 3.12 or newer (Django 6), and none was found on PATH or in pyenv." >&2
echo "Install one (e.g. 'pyenv install 3.12' or your OS package python3.12) or set PYTHON=/path/to/python3.12." >&2
exit 1
