#!/bin/bash
# Builds the ns8ctl example module images without internet: FROM scratch + busybox-static.
#
#   examples/modules/build-images.sh --registry ADDR [--out DIR] [--push] [--dir SRC --namespace NS] [--only N,...]
#
# --registry ADDR  registry host[:port] the images are named after (required: the module images'
#                  org.nethserver.images label names the service image by its full URL there).
# --out DIR        also write every image as an OCI layout: DIR/<name> with one ref per tag
#                  (skopeo copy oci:DIR/webapp:1.0.0 docker://...).
# --push           push every tag to ADDR (plain HTTP: --tls-verify=false).
# --dir SRC        build the images under SRC instead of this directory (examples/ns8-compat uses
#                  it); --namespace NS names them ADDR/NS/<name> (default ns8ctl-examples).
# --only N,...     build only these image names (directories under SRC), e.g. podapp,podapp-web.
#
# Images (tags come from <name>/versions/<tag>/):
#   ADDR/ns8ctl-examples/webapp-httpd:{1.0.0,2.0.0}  service image: busybox httpd serving /www
#   ADDR/ns8ctl-examples/webapp:{1.0.0,1.1.0,2.0.0}   rootless module (imageroot/ + ui/ + labels)
#   ADDR/ns8ctl-examples/rootfull-demo:{1.0.0,1.1.0}  rootfull module
# A module version is <name>/imageroot + <name>/ui, overlaid with <name>/versions/<tag>/imageroot
# and /ui; @VERSION@ in ui/ and www/ files becomes the tag; <name>/versions/<tag>/labels holds
# KEY=VALUE label lines where @REGISTRY@ becomes ADDR. Needs podman (and skopeo for --out).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
namespace=ns8ctl-examples
registry=""
out=""
push=0
only=""
busybox=${BUSYBOX:-/bin/busybox}

while [ $# -gt 0 ]; do
  case "$1" in
    --registry) registry=${2:?--registry needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --push) push=1; shift ;;
    --dir) here=$(cd "${2:?--dir needs a value}" && pwd); shift 2 ;;
    --namespace) namespace=${2:?--namespace needs a value}; shift 2 ;;
    --only) only=${2:?--only needs a value}; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "build-images.sh: unknown argument '$1' (allowed: --registry ADDR, --out DIR, --push, --dir SRC, --namespace NS, --only N,...)" >&2; exit 2 ;;
  esac
done
[ -n "$registry" ] || { echo "build-images.sh: --registry ADDR is required (e.g. 127.0.0.1:5000)" >&2; exit 2; }
command -v podman >/dev/null || { echo "build-images.sh: podman not found (apt-get install podman)" >&2; exit 1; }
[ -x "$busybox" ] || { echo "build-images.sh: $busybox not found (apt-get install busybox-static)" >&2; exit 1; }
if ! file_out=$(LC_ALL=C od -An -c -N4 "$busybox" 2>/dev/null) || [ -z "$file_out" ]; then
  echo "build-images.sh: cannot read $busybox" >&2; exit 1
fi
if [ -n "$out" ]; then
  command -v skopeo >/dev/null || { echo "build-images.sh: --out needs skopeo (apt-get install skopeo)" >&2; exit 1; }
  mkdir -p "$out"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ns8ctl-example-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Copies SRC/. into DST/ (when SRC exists), then replaces @VERSION@ in text files of DST.
overlay() {
  local src=$1 dst=$2
  [ -d "$src" ] || return 0
  mkdir -p "$dst"
  cp -a "$src/." "$dst/"
}

build_one() {
  local name=$1 tag=$2
  local src="$here/$name" ctx="$work/$name-$tag"
  local ref="$registry/$namespace/$name:$tag"
  mkdir -p "$ctx"
  cp "$busybox" "$ctx/busybox"
  local containerfile="FROM scratch
COPY busybox /bin/busybox"
  if [ -d "$src/imageroot" ]; then
    overlay "$src/imageroot" "$ctx/imageroot"
    overlay "$src/versions/$tag/imageroot" "$ctx/imageroot"
    overlay "$src/ui" "$ctx/ui"
    overlay "$src/versions/$tag/ui" "$ctx/ui"
    mkdir -p "$ctx/imageroot/etc"
    printf '%s\n' "$tag" > "$ctx/imageroot/etc/version"
    containerfile+="
COPY imageroot /imageroot
COPY ui /ui"
  fi
  if [ -d "$src/www" ]; then
    overlay "$src/www" "$ctx/www"
    containerfile+="
COPY www /www
CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]"
  fi
  { grep -rlF '@VERSION@' "$ctx" --exclude=busybox 2>/dev/null || true; } | while read -r f; do sed -i "s/@VERSION@/$tag/g" "$f"; done
  printf '%s\n' "$containerfile" > "$ctx/Containerfile"
  local -a labels=(--label "org.opencontainers.image.title=$namespace/$name" --label "org.opencontainers.image.version=$tag")
  if [ -f "$src/versions/$tag/labels" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
      case "$line" in ''|'#'*) continue ;; esac
      labels+=(--label "${line//@REGISTRY@/$registry}")
    done < "$src/versions/$tag/labels"
  fi
  echo "build-images.sh: building $ref" >&2
  # --no-cache: no lookup of earlier build layers, which fails ("layer not known") when another
  # process removes images from the same storage meanwhile; these builds are small anyway.
  podman build -q --no-cache --timestamp 0 --format oci "${labels[@]}" -t "$ref" -f "$ctx/Containerfile" "$ctx" >/dev/null
  if [ -n "$out" ]; then
    skopeo copy -q "containers-storage:$ref" "oci:$out/$name:$tag"
  fi
  if [ "$push" = 1 ]; then
    echo "build-images.sh: pushing $ref" >&2
    podman push -q --tls-verify=false "$ref"
  fi
  echo "$ref"
}

# Service images (with www/) first: the module images name them.
names=()
for d in "$here"/*/www/; do [ -d "$d" ] && names+=("$(basename "$(dirname "$d")")"); done
for d in "$here"/*/imageroot/; do [ -d "$d" ] && names+=("$(basename "$(dirname "$d")")"); done
[ ${#names[@]} -gt 0 ] || { echo "build-images.sh: no image sources (NAME/www or NAME/imageroot) under $here" >&2; exit 1; }
if [ -n "$only" ]; then
  IFS=, read -r -a wanted <<< "$only"
  for w in "${wanted[@]}"; do
    case " ${names[*]} " in *" $w "*) ;; *) echo "build-images.sh: --only: no image source '$w' under $here (there are: ${names[*]})" >&2; exit 2 ;; esac
  done
  kept=()
  for name in "${names[@]}"; do
    case ",$only," in *",$name,"*) kept+=("$name") ;; esac
  done
  names=("${kept[@]}")
fi
for name in "${names[@]}"; do
  for dir in "$here/$name"/versions/*/; do
    build_one "$name" "$(basename "$dir")"
  done
done
