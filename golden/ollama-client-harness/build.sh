#!/bin/sh
# Builds the harness around Ollama's own api/client.go (do, stream, checkError)
# and api/types.go (StatusError, AuthorizationError), copied verbatim by
# extract.go from a checkout of ollama/ollama into a scratch directory. Nothing of
# Ollama's is kept in this repository. Usage: build.sh OLLAMA_GIT_DIR OUT_DIR
# (Go 1.19 from Debian bookworm suffices: only these declarations are compiled;
# the rest of api/ needs Go 1.23 and modules that cannot be fetched offline.)
set -eu
repo=$1 out=$2 here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/src" "$out/extract" "$out/mod/api" "$out/mod/auth" "$out/mod/envconfig" "$out/mod/format" "$out/mod/version" "$out/mod/cmd/harness"
git --git-dir="$repo" show HEAD:api/client.go >"$out/src/client.go"
git --git-dir="$repo" show HEAD:api/types.go >"$out/src/types.go"
git --git-dir="$repo" rev-parse HEAD >"$out/COMMIT"
cp "$here/extract.go" "$out/extract/main.go"
printf 'module extract\ngo 1.19\n' >"$out/extract/go.mod"
(cd "$out/extract" && go run . ../src/client.go ../src/types.go) >"$out/mod/api/client_copied.go"
printf 'module github.com/ollama/ollama\ngo 1.19\n' >"$out/mod/go.mod"
cp "$here/export.go" "$out/mod/api/"
cp "$here/auth_stub.go" "$out/mod/auth/auth.go"
cp "$here/envconfig_stub.go" "$out/mod/envconfig/envconfig.go"
printf 'package format\n\nconst MegaByte = 1000 * 1000 // as format/bytes.go\n' >"$out/mod/format/format.go"
printf 'package version\n\nvar Version = "0.0.0-harness"\n' >"$out/mod/version/version.go"
cp "$here/harness_main.go" "$out/mod/cmd/harness/main.go"
(cd "$out/mod" && go build -o "$out/harness" ./cmd/harness)
echo "$out/harness (Ollama $(cat "$out/COMMIT"))"
