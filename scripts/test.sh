#!/usr/bin/env bash
# Set up medpredict with its test tools, the Debian packages its integration tests use
# (Orthanc with DICOMweb, Chromium, dicom3tools' dciodvfy, the Noto CJK fonts, PostgreSQL), check the
# import layers (pyproject.toml [tool.importlinter]), and run the default test suite.
# Extra arguments go to pytest (e.g. ./scripts/test.sh -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh dev

need=()
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc orthanc-dicomweb)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)  # DICOM validator for the SR/overlay tests
# Noto Sans CJK: subset into Chinese reports (--lang zh) and used for their plot texts; without it
# the Chinese pages embed no font (a logged warning) and the tests marked cjk_font skip
[ -e /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || need+=(fonts-noto-cjk)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "test: ${need[*]} missing and cannot be installed here; their tests will be skipped" >&2
  fi
fi
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest "$@"
