# The deployment step of services.homeops.svc (seed 002's deployment.nix), as functions.
# nix/modules/svc.nix appends the calls for the configured services and runs the whole as
# the oneshot unit docker-services-deploy:
#
#   root=/var/lib/docker-services secrets=/var/lib/secrets
#   deploy web                        start service web: $root/web
#   put docker-compose.yml /nix/store/...-docker-compose.yml 0644
#   put config /nix/store/...-config  0755      (a directory: copied whole, modes from the store)
#   link .env                         $root/web/.env -> $secrets/web/.env (rendered by vault-agent)
#   finish                            record what was placed; remove what the last run placed
#                                     and this one did not
#   prune web db                      services not named: remove what was deployed for them
#
# Each service directory holds a manifest, .svc-deployed, of what this step placed there
# ("file DEST" or "secret DEST" lines). Only what a manifest lists is ever removed: a service
# directory also holds the service's own data (bind mounts), which is never touched, and a
# directory without a manifest was not made here and is left alone. Copies replace the old
# file with a rename, so a service never reads a half-written file.
set -euo pipefail
umask 022

MANIFEST=.svc-deployed
service=
dir=
placed=()
secret=()

deploy() {
  service=$1
  dir=$root/$service
  placed=()
  secret=()
  mkdir -p -- "$dir"
}

# replace NEW DEST: NEW takes DEST's place (a rename; a directory there is removed after).
replace() {
  local new=$1 dest=$2
  if [ -d "$dest" ] && [ ! -L "$dest" ]; then
    rm -rf -- "$dest.svc-old"
    mv -T -- "$dest" "$dest.svc-old"
  fi
  mv -fT -- "$new" "$dest"
  rm -rf -- "$dest.svc-old"
}

# put DEST SOURCE MODE: SOURCE (a file, or a directory copied with its files' modes) at DEST.
put() {
  local dest=$dir/$1 src=$2 mode=$3
  placed+=("$1")
  mkdir -p -- "$(dirname -- "$dest")"
  rm -rf -- "$dest.svc-new"
  if [ -d "$src" ]; then
    # -L: a deployed tree must not point back into the store (it is no GC root).
    cp -RL -- "$src" "$dest.svc-new"
    chmod -R u+w,go-w -- "$dest.svc-new"
  else
    cp -L -- "$src" "$dest.svc-new"
    chmod "$mode" -- "$dest.svc-new"
  fi
  replace "$dest.svc-new" "$dest"
}

# link DEST: DEST points at the secret vault-agent renders to $secrets/<service>/DEST.
link() {
  local dest=$dir/$1
  placed+=("$1")
  secret+=("$1")
  mkdir -p -- "$(dirname -- "$dest")"
  rm -rf -- "$dest.svc-new"
  ln -sfnT -- "$secrets/$service/$1" "$dest.svc-new"
  replace "$dest.svc-new" "$dest"
}

listed() {
  local needle=$1 item
  shift
  for item in "$@"; do
    if [ "$item" = "$needle" ]; then return 0; fi
  done
  return 1
}

# Remove DIR's empty parents of PATH, up to DIR itself (kept).
drop_empty_parents() {
  local top=$1 parent
  parent=$(dirname -- "$2")
  while [ "$parent" != "$top" ] && [ "${parent#"$top"/}" != "$parent" ]; do
    rmdir -- "$parent" 2>/dev/null || break
    parent=$(dirname -- "$parent")
  done
}

# What the last manifest of $dir lists and $placed / $secret no longer do goes away.
clean_old() {
  local kind dest
  [ -f "$dir/$MANIFEST" ] || return 0
  while read -r kind dest; do
    [ -n "$dest" ] || continue
    if [ "$kind" = secret ] && ! listed "$dest" "${secret[@]}"; then
      rm -f -- "$secrets/$service/$dest"
      drop_empty_parents "$secrets/$service" "$secrets/$service/$dest"
    fi
    if ! listed "$dest" "${placed[@]}"; then
      echo "$service: removing $dest (no longer deployed)"
      rm -rf -- "${dir:?}/$dest"
      drop_empty_parents "$dir" "$dir/$dest"
    fi
  done < "$dir/$MANIFEST"
}

finish() {
  local dest
  clean_old
  {
    for dest in "${placed[@]}"; do
      if listed "$dest" "${secret[@]}"; then
        echo "secret $dest"
      else
        echo "file $dest"
      fi
    done
  } > "$dir/$MANIFEST.svc-new"
  mv -fT -- "$dir/$MANIFEST.svc-new" "$dir/$MANIFEST"
  echo "$service: deployed ${#placed[@]} file(s) to $dir"
}

prune() {
  local path name
  for path in "$root"/*/; do
    path=${path%/}
    name=${path##*/}
    if [ ! -f "$path/$MANIFEST" ] || listed "$name" "$@"; then
      continue
    fi
    service=$name
    dir=$path
    placed=()
    secret=()
    clean_old
    rm -f -- "$path/$MANIFEST"
    rmdir -- "$secrets/$name" 2>/dev/null || true
    if rmdir -- "$path" 2>/dev/null; then
      echo "$name: no longer defined; removed $path"
    else
      echo "$name: no longer defined; kept $path, which holds files not deployed by Nix (data?)"
    fi
  done
}
