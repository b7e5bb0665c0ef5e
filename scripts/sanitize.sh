#!/usr/bin/env bash
# The C modules built with AddressSanitizer and UndefinedBehaviorSanitizer, and their tests
# run against those builds: a use after free, an overrun or undefined behaviour aborts the
# run instead of passing on corrupted memory. Run by `make test` (make sanitize).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
python="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # the venv's, not what it links to
out=build/sanitize
rm -rf "$out"
mkdir -p "$out"
# The packages beside the sanitized modules: imported from here, not from the install.
cp -r pyproject.toml bpf eventlog recorder replay migrations tests "$out"/
rm -f "$out"/eventlog/*.so
include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
flags=(-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
       -g -O1 -fPIC -shared -Wall -Wextra -Werror -Wno-missing-field-initializers
       "-I$include" -Ibpf)
gcc "${flags[@]}" eventlog/_native.c -lsqlite3 -o "$out/eventlog/_native$suffix"
gcc "${flags[@]}" -DPy_LIMITED_API=0x030B0000 -pthread eventlog/_scan.c -lsqlite3 \
    -o "$out/eventlog/_scan.abi3.so"
cd "$out"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
# CPython keeps some memory until exit by design: leaks are not what this run looks for.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
export PYTHONPATH=. CI=${CI:-}
"$python" -c 'import eventlog._native as n, eventlog._scan as s, sys
for m in (n, s):
    assert "build/sanitize" in m.__file__, m.__file__' 
"$python" -m pytest -q -s -p no:cacheprovider tests/unit/log/test_native_append.py \
    tests/unit/log/test_scan.py tests/unit/log/test_kernel_records.py
