#!/usr/bin/env bash
# Builds real Hermit applications for uhyve's end-to-end tests, from source, reproducibly:
#
#   1. the Hermit kernel from the `hermit-kernel` crate on crates.io (its published source is
#      complete; the `hermit` crate's own build script would download the kernel from GitHub),
#      checked against a pinned SHA-256, with the toolchain its rust-toolchain.toml pins;
#   2. the kernel's release post-processing, done here because the crate ships no xtask: keep
#      only the kernel's system-call symbols (sys_*) and a few entry points global, rename every
#      other exported symbol so the kernel's private core/alloc/compiler-builtins cannot clash
#      with the application's std, and mark every object ELFOSABI_STANDALONE (0xff);
#   3. the C math functions std needs (math-builtins/), appended to libhermit.a the same way;
#   4. the applications in apps/ (src/bin/*.rs), linked against that libhermit.a.
#
# Output: $UHYVE_HERMIT_APPS (default target/hermit-images/kernel-<version>) holds
# <arch>/<application> for each architecture in $UHYVE_HERMIT_ARCHES (default: x86_64 aarch64),
# and a stamp file keyed on everything that goes into the build: a second run with the same
# inputs does nothing. Intermediate files go to $UHYVE_HERMIT_WORK (default target/hermit-build).
#
# Needs: rustup (installs the pinned nightly with rust-src and llvm-tools itself), network access
# to crates.io, python3, sha256sum, tar. Run from anywhere; paths are relative to the checkout.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

KERNEL_VERSION=0.11.0
KERNEL_SHA256=e5a914a929e843e539267f5f8d1b6b53add9587db6caa5547b7bff16edba8e03
# The channel the package's rust-toolchain.toml pins (checked against it below).
TOOLCHAIN=nightly-2025-03-15
# The `hermit` crate's default kernel features (x86_64); aarch64 drops the x86-only ones.
FEATURES_x86_64="acpi dhcpv4 dns fs fsgsbase pci pci-ids smp tcp udp"
FEATURES_aarch64="dhcpv4 dns fs pci pci-ids smp tcp udp"
# Global symbols of the kernel that are not system calls but that the application or the
# kernel's own boot code reach by name.
KERNEL_ENTRY_SYMBOLS="_start __bss_start mcount runtime_entry init_lwip lwip_read lwip_write
init_rtl8139_netif irq_install_handler virt_to_phys eoi"

ARCHES=${UHYVE_HERMIT_ARCHES:-x86_64 aarch64}
OUT=${UHYVE_HERMIT_APPS:-$ROOT/target/hermit-images/kernel-$KERNEL_VERSION}
WORK=${UHYVE_HERMIT_WORK:-$ROOT/target/hermit-build}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)

say() { printf '[hermit-build] %s\n' "$*" >&2; }
timed() {
	local start=$SECONDS
	"$@"
	say "$(($SECONDS - start)) s: ${*:1:3} …"
}

apps=()
for source in "$HERE"/apps/src/bin/*.rs; do
	apps+=("$(basename "$source" .rs)")
done

# --- Cache: the stamp names every input. -------------------------------------------------------
cache_key() {
	{
		echo "kernel $KERNEL_VERSION $KERNEL_SHA256 toolchain $TOOLCHAIN arches $ARCHES"
		echo "features x86_64: $FEATURES_x86_64 aarch64: $FEATURES_aarch64"
		(cd "$HERE" && find build.sh apps math-builtins -type f \
			! -path '*/target/*' -print0 | sort -z | xargs -0 sha256sum)
	} | sha256sum | cut -d' ' -f1
}
key=$(cache_key)
stamp="$OUT/.build-key"
complete=1
for arch in $ARCHES; do
	for app in "${apps[@]}"; do
		[ -s "$OUT/$arch/$app" ] || complete=0
	done
done
if [ "$complete" = 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
	say "up to date: $OUT (${apps[*]} for $ARCHES)"
	exit 0
fi
rm -f "$stamp"

# --- Toolchain. ----------------------------------------------------------------------------------
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1 ||
	! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep -q '^rust-src' ||
	! rustup component list --toolchain "$TOOLCHAIN" --installed 2>/dev/null | grep -q '^llvm-tools'; then
	say "installing $TOOLCHAIN with rust-src and llvm-tools"
	rustup toolchain install "$TOOLCHAIN" --profile minimal --component rust-src --component llvm-tools
fi
host_triple=$(rustup run "$TOOLCHAIN" rustc -vV | sed -n 's/^host: //p')
LLVM_BIN="$(rustup run "$TOOLCHAIN" rustc --print sysroot)/lib/rustlib/$host_triple/bin"
for tool in llvm-nm llvm-objcopy llvm-ar llvm-readobj; do
	[ -x "$LLVM_BIN/$tool" ] || {
		say "missing $LLVM_BIN/$tool (component llvm-tools)"
		exit 1
	}
done
cargo_nightly() { rustup run "$TOOLCHAIN" cargo "$@"; }

# --- 1. Kernel source from crates.io. -------------------------------------------------------------
kernel_src="$WORK/hermit-kernel-$KERNEL_VERSION"
if [ ! -f "$kernel_src/.verified" ]; then
	fetch="$WORK/fetch"
	mkdir -p "$fetch/src"
	cat >"$fetch/Cargo.toml" <<-EOF
		[package]
		name = "fetch-hermit-kernel"
		version = "0.0.0"
		edition = "2021"
		publish = false
		[dependencies]
		hermit-kernel = "=$KERNEL_VERSION"
		[workspace]
	EOF
	: >"$fetch/src/lib.rs"
	say "fetching hermit-kernel $KERNEL_VERSION from crates.io"
	(cd "$fetch" && cargo fetch --quiet)
	crate_file=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "hermit-kernel-$KERNEL_VERSION.crate" | head -n 1)
	[ -n "$crate_file" ] || {
		say "cargo fetch did not leave hermit-kernel-$KERNEL_VERSION.crate in the registry cache"
		exit 1
	}
	echo "$KERNEL_SHA256  $crate_file" | sha256sum --check --quiet
	rm -rf "$kernel_src"
	tar -xzf "$crate_file" -C "$WORK"
	grep -q "channel = \"$TOOLCHAIN\"" "$kernel_src/rust-toolchain.toml" || {
		say "hermit-kernel $KERNEL_VERSION no longer pins $TOOLCHAIN: update TOOLCHAIN"
		exit 1
	}
	touch "$kernel_src/.verified"
fi

# Sets EI_OSABI = 0xff in every ELF object of the archive $1 (a plain `ar` archive).
mark_standalone() {
	python3 - "$1" <<-'EOF'
		import sys
		path = sys.argv[1]
		data = bytearray(open(path, "rb").read())
		if data[:8] != b"!<arch>\n":
		    sys.exit(f"{path}: not an ar archive")
		offset, marked = 8, 0
		while offset + 60 <= len(data):
		    size = int(data[offset + 48:offset + 58].decode().strip())
		    member = offset + 60
		    if data[member:member + 4] == b"\x7fELF":
		        data[member + 7] = 0xFF
		        marked += 1
		    offset = member + size + (size & 1)
		open(path, "wb").write(data)
		print(f"EI_OSABI set in {marked} objects", file=sys.stderr)
	EOF
}

# Renames every exported symbol of archive $1 that is not listed in file $2, prefixing it with $3
# (mangled Rust names get the prefix as an extra path component, so they stay demanglable).
rename_private_symbols() {
	local archive=$1 keep=$2 prefix=$3
	"$LLVM_BIN/llvm-nm" --export-symbols "$archive" |
		awk -v prefix="$prefix" 'NR == FNR { keep[$1] = 1; next }
			!($1 in keep) {
				if (substr($1, 1, 3) == "_ZN") print $1 " _ZN" length(prefix) prefix substr($1, 4)
				else print $1 " " prefix "_" $1
			}' "$keep" - >"$archive.redefine"
	"$LLVM_BIN/llvm-objcopy" --redefine-syms="$archive.redefine" "$archive"
}

# Global symbols defined by the archive members whose name starts with $2 (a crate's own
# objects), minus mangled Rust names and the Rust runtime's own (`rust_begin_unwind`, …).
crate_c_symbols() {
	"$LLVM_BIN/llvm-nm" -A -g --defined-only "$1" 2>/dev/null |
		awk -v crate="$2" '{ split($1, where, ":"); member = where[2]; symbol = $NF
			if (index(member, crate) == 1 && symbol !~ /^(_ZN|_R|rust_|__)/) print symbol }' | sort -u
}

build_arch() {
	local arch=$1 kernel_target app_target features rustflags=-Zmutable-noalias=no
	case "$arch" in
	x86_64)
		kernel_target=x86_64-unknown-none
		features=$FEATURES_x86_64
		;;
	aarch64)
		kernel_target=aarch64-unknown-none-softfloat
		features=$FEATURES_aarch64
		# The target defaults to static code; the kernel is linked into a PIE application.
		rustflags+=$'\x1f'-Crelocation-model=pic
		;;
	*)
		say "unknown architecture $arch"
		exit 1
		;;
	esac
	app_target=$arch-unknown-hermit
	local lib="$WORK/lib/$arch"
	rm -rf "$lib"
	mkdir -p "$lib" "$OUT/$arch"

	say "$arch: kernel ($kernel_target, features: $features)"
	# One codegen unit: the kernel becomes one object in libhermit.a, so linking any system call
	# also links the ELF notes (entry version, ABI tag) that live beside it in the crate root.
	(cd "$kernel_src" && timed env CARGO_ENCODED_RUSTFLAGS="$rustflags" CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
		rustup run "$TOOLCHAIN" cargo build --locked --release --quiet \
		--target "$kernel_target" -Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem \
		--target-dir "$WORK/kernel-target" --no-default-features --features "$features")
	cp "$WORK/kernel-target/$kernel_target/release/libhermit.a" "$lib/libhermit.a"
	{
		crate_c_symbols "$lib/libhermit.a" hermit- | grep '^sys_' || true
		printf '%s\n' $KERNEL_ENTRY_SYMBOLS
	} | sort -u >"$lib/kernel.exports"
	rename_private_symbols "$lib/libhermit.a" "$lib/kernel.exports" hermit
	say "$arch: kernel exports $(wc -l <"$lib/kernel.exports") symbols"

	say "$arch: math builtins"
	(cd "$HERE/math-builtins" && timed rustup run "$TOOLCHAIN" cargo build --locked --release --quiet \
		--target "$app_target" -Zbuild-std=core -Zbuild-std-features=compiler-builtins-mem \
		--target-dir "$WORK/math-target")
	cp "$WORK/math-target/$app_target/release/libuhyve_hermit_math.a" "$lib/libmath.a"
	crate_c_symbols "$lib/libmath.a" uhyve_hermit_math- >"$lib/math.exports"
	[ -s "$lib/math.exports" ] || {
		say "$arch: the math library exports nothing"
		exit 1
	}
	rename_private_symbols "$lib/libmath.a" "$lib/math.exports" hermit_math
	"$LLVM_BIN/llvm-ar" qL "$lib/libhermit.a" "$lib/libmath.a"
	mark_standalone "$lib/libhermit.a"

	say "$arch: applications (${apps[*]})"
	(cd "$HERE/apps" && timed env HERMIT_LIB_DIR="$lib" rustup run "$TOOLCHAIN" cargo build --locked --release --quiet \
		--target "$app_target" -Zbuild-std=std,panic_abort -Zbuild-std-features=compiler-builtins-mem \
		--target-dir "$WORK/apps-target")
	for app in "${apps[@]}"; do
		local image="$WORK/apps-target/$app_target/release/$app"
		# A binary that does not link the kernel has no Hermit entry-version note.
		"$LLVM_BIN/llvm-readobj" --notes "$image" | grep -q 'Owner: HERMIT' || {
			say "$arch/$app: no HERMIT note: the kernel was not linked in"
			exit 1
		}
		cp "$image" "$OUT/$arch/$app"
	done
}

start=$SECONDS
for arch in $ARCHES; do
	build_arch "$arch"
done
echo "$key" >"$stamp"
say "built ${apps[*]} for $ARCHES into $OUT in $(($SECONDS - start)) s"
