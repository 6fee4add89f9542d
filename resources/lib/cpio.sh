# shellcheck shell=bash
# Minimal, deterministic writer of Linux initramfs archives (cpio "newc").
# Sourced by resources/initramfs/build.sh and resources/testhost/run.
#
# Needs no root (device nodes are written as archive entries, not mknod'ed)
# and no cpio binary. Every entry gets uid/gid 0, mtime ${SOURCE_DATE_EPOCH:-0}
# and a sequential inode number, so the same inputs give the same bytes.
# Parent directories are emitted automatically (mode 0755). When a name is
# written twice the kernel keeps the later entry.
#
#   cpio_begin OUT            start a new archive in file OUT (truncates it)
#   cpio_dir NAME [MODE]      directory (MODE octal, default 755)
#   cpio_file NAME MODE SRC   regular file with the contents of SRC
#   cpio_symlink NAME TARGET  symbolic link
#   cpio_chardev NAME MODE MAJOR MINOR
#   cpio_tree SRC DEST        copy directory SRC recursively to DEST
#                             (files, dirs, symlinks; sorted; modes kept)
#   cpio_end                  write the trailer
# NAME/DEST are absolute paths inside the archive ("/dev/console").

_cpio_out=
_cpio_ino=0
declare -A _cpio_dirs=()

_cpio_pad() { # write NULs up to the next multiple of 4 after $1 bytes
  case $(($1 % 4)) in
    1) printf '\0\0\0' ;;
    2) printf '\0\0' ;;
    3) printf '\0' ;;
  esac
}

# _cpio_header NAME MODE(decimal) NLINK SIZE RMAJ RMIN
_cpio_header() {
  local name=${1#/} namesize
  namesize=$((${#name} + 1))
  _cpio_ino=$((_cpio_ino + 1))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    "$_cpio_ino" "$2" 0 0 "$3" "${SOURCE_DATE_EPOCH:-0}" "$4" 0 0 "$5" "$6" "$namesize" 0
  printf '%s\0' "$name"
  _cpio_pad $((110 + namesize))
}

_cpio_parents() {
  local path=${1#/} dir=
  local IFS=/ part
  local -a parts
  read -r -a parts <<<"$path"
  unset 'parts[${#parts[@]}-1]'
  for part in "${parts[@]}"; do
    [[ -n "$part" ]] || continue
    dir="$dir/$part"
    if [[ -z "${_cpio_dirs[$dir]:-}" ]]; then
      _cpio_dirs[$dir]=1
      _cpio_header "$dir" $((8#40755)) 2 0 0 0 >>"$_cpio_out"
    fi
  done
}

cpio_begin() {
  _cpio_out=$1
  _cpio_ino=0
  _cpio_dirs=()
  : >"$_cpio_out"
}

cpio_dir() {
  local name=/${1#/} mode=${2:-755}
  name=${name%/}
  [[ -z "${_cpio_dirs[$name]:-}" ]] || return 0
  _cpio_parents "$name"
  _cpio_dirs[$name]=1
  _cpio_header "$name" $((8#40000 | 8#$mode)) 2 0 0 0 >>"$_cpio_out"
}

cpio_file() {
  local name=/${1#/} mode=$2 src=$3 size
  size=$(stat -L -c %s -- "$src")
  _cpio_parents "$name"
  {
    _cpio_header "$name" $((8#100000 | 8#$mode)) 1 "$size" 0 0
    cat -- "$src"
    _cpio_pad "$size"
  } >>"$_cpio_out"
}

cpio_symlink() {
  local name=/${1#/} target=$2
  _cpio_parents "$name"
  {
    _cpio_header "$name" $((8#120777)) 1 "${#target}" 0 0
    printf '%s' "$target"
    _cpio_pad "${#target}"
  } >>"$_cpio_out"
}

cpio_chardev() {
  local name=/${1#/}
  _cpio_parents "$name"
  _cpio_header "$name" $((8#20000 | 8#$2)) 1 0 "$3" "$4" >>"$_cpio_out"
}

cpio_tree() {
  local src=$1 dest=/${2#/} type mode target rel
  dest=${dest%/}
  [[ -d "$src" ]] || { printf 'cpio_tree: %s is not a directory\n' "$src" >&2; return 1; }
  [[ -z "$dest" ]] || cpio_dir "$dest" "$(stat -c %a -- "$src")"
  while IFS=$'\037' read -r -d '' rel type mode target; do
    case $type in
      d) cpio_dir "$dest/$rel" "$mode" ;;
      f) cpio_file "$dest/$rel" "$mode" "$src/$rel" ;;
      l) cpio_symlink "$dest/$rel" "$target" ;;
      *) printf 'cpio_tree: skipping %s/%s (type %s)\n' "$src" "$rel" "$type" >&2 ;;
    esac
  done < <(find "$src" -mindepth 1 -printf '%P\037%y\037%m\037%l\0' | LC_ALL=C sort -z)
}

cpio_end() {
  _cpio_header "TRAILER!!!" 0 1 0 0 0 >>"$_cpio_out"
}
