#!/usr/bin/env bash
# Copy the page's JavaScript libraries from npm into the package, and check them.
#
#   scripts/vendor-js.sh          install web/package-lock.json's exact versions (npm ci),
#                                 copy each library and its licence into
#                                 replay/serve/static/vendor/, and check the SHA-256 sums
#   scripts/vendor-js.sh --check  only check the committed files against the sums
#
# The vendored files are committed: scope-replay serve never fetches anything at run time,
# and a user needs no npm. This script is how they were made, and how a maintainer moves a
# version (edit web/package.json, npm install --package-lock-only, run this, then update
# replay/serve/static/vendor/SHA256SUMS after reading the library's changes).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
vendor="$root/replay/serve/static/vendor"

if [[ "${1:-}" != "--check" ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cp "$root/web/package.json" "$root/web/package-lock.json" "$work/"
    (cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --silent)
    cp "$work/node_modules/cytoscape/dist/cytoscape.min.js" "$vendor/cytoscape.min.js"
    cp "$work/node_modules/cytoscape/LICENSE" "$vendor/cytoscape.LICENSE"
fi
(cd "$vendor" && sha256sum --quiet --check SHA256SUMS)
[[ "${1:-}" == "--check" ]] || echo "vendor-js: replay/serve/static/vendor matches SHA256SUMS"
