#!/usr/bin/env bash
# Print the path of a Chromium or Chrome for the browser test, or exit 1 if there is none.
# $CHROMIUM wins when it is set; then the usual names on PATH; then the macOS applications.
set -uo pipefail
if [[ -n "${CHROMIUM:-}" ]]; then
    [[ -x "$CHROMIUM" ]] && { echo "$CHROMIUM"; exit 0; }
    echo "CHROMIUM=$CHROMIUM is not an executable" >&2; exit 1
fi
for name in chromium chromium-browser google-chrome google-chrome-stable chrome; do
    path="$(command -v "$name" 2>/dev/null)" && { echo "$path"; exit 0; }
done
for app in "/Applications/Chromium.app/Contents/MacOS/Chromium" \
           "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome"; do
    [[ -x "$app" ]] && { echo "$app"; exit 0; }
done
exit 1
