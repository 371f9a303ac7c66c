#!/usr/bin/env bash
# Vendor MathJax into book/_static/mathjax so built pages render math with no network
# (the book must work behind firewalls and where public CDNs are blocked).
# MathJax comes from the npm registry through npm, pinned; the copy is not committed
# (book/_static/mathjax/ is git-ignored) and is rebuilt only when the version changes.
# Usage: tools/vendor_mathjax.sh   (from the repository root; `make book` runs it)
set -euo pipefail

VERSION=3.2.2
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/book/_static/mathjax"
stamp="$dest/.mathjax-version"
work="$root/_build/.vendor"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$VERSION" && -f "$dest/tex-chtml.js" ]]; then
    exit 0
fi

command -v npm >/dev/null || { echo "vendor_mathjax: npm is required (apt-get install npm)" >&2; exit 1; }
mkdir -p "$work"
npm install --no-save --no-audit --no-fund --loglevel=error --prefix "$work" "mathjax@$VERSION"

src="$work/node_modules/mathjax/es5"
rm -rf "$dest"
mkdir -p "$dest/output"
# tex-chtml.js is the combined TeX-input / CommonHTML-output component that Sphinx loads;
# it fetches the rest (TeX extensions, fonts, menu, accessibility) relative to itself.
cp "$src/tex-chtml.js" "$src/startup.js" "$src/loader.js" "$src/core.js" "$dest/"
cp -r "$src/input" "$src/a11y" "$src/ui" "$src/adaptors" "$src/sre" "$dest/"
cp -r "$src/output/chtml" "$src/output/chtml.js" "$dest/output/"
cp "$work/node_modules/mathjax/LICENSE" "$dest/LICENSE"
echo "$VERSION" > "$stamp"
echo "vendor_mathjax: MathJax $VERSION -> ${dest#"$root/"} ($(du -sh "$dest" | cut -f1))"
