#!/usr/bin/env bash
# Writes an image archive that `ctr images import` reads (the `docker save`
# layout: manifest.json, one config, uncompressed layer tars), from layer
# tarballs: no registry, no container engine, no image tool.
#
# Usage: mkimage.sh NAME:TAG OUT.tar ENTRYPOINT_JSON CMD_JSON LAYER.tar...
#   e.g. mkimage.sh localhost/x:1 x.tar '["/pause"]' 'null' rootfs.tar
set -euo pipefail
ref=$1 out=$2 entrypoint=$3 cmd=$4
shift 4
work=$(mktemp -d "${out%/*}/.mkimage.XXXXXX")
trap 'rm -rf "$work"' EXIT
layers=() diff_ids=()
for layer in "$@"; do
  sum=$(sha256sum "$layer" | cut -c1-64)
  # A hard link when the layer is on the same file system: no copy.
  ln -f "$layer" "$work/$sum.tar" 2>/dev/null || cp "$layer" "$work/$sum.tar"
  layers+=("\"$sum.tar\"")
  diff_ids+=("\"sha256:$sum\"")
done
join() { local IFS=,; echo "$*"; }
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":$entrypoint,"Cmd":$cmd},"rootfs":{"type":"layers","diff_ids":[$(join "${diff_ids[@]}")]}}
JSON
config=$(sha256sum "$work/config.json" | cut -c1-64).json
mv "$work/config.json" "$work/$config"
echo "[{\"Config\":\"$config\",\"RepoTags\":[\"$ref\"],\"Layers\":[$(join "${layers[@]}")]}]" > "$work/manifest.json"
tar -cf "$out.tmp" -C "$work" .
mv "$out.tmp" "$out"
