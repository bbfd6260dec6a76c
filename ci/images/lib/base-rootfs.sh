#!/usr/bin/env bash
# The recipe of the local base image: Debian bookworm minbase + python3 (+ venv support),
# made with debootstrap, trimmed like the official *-slim images.
# build.sh hashes this file (and the mirrors) to key its cache: any edit here makes a new base.
#
# usage: base-rootfs.sh ROOTFS_DIR   (env: MIRROR, SECURITY_MIRROR, SUITE)
set -euo pipefail

ROOTFS=${1:?usage: base-rootfs.sh ROOTFS_DIR}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=${SUITE:-bookworm}
# python3-venv: the Dockerfiles build their virtualenv with `python3 -m venv` (ensurepip),
# which is what python:3.11-slim offers too. ca-certificates: TLS to an external broker.
PACKAGES=python3,python3-venv,ca-certificates

in_root() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }

# DEBOOTSTRAP_CACHE (optional): a directory keeping the downloaded .debs between runs.
debootstrap --variant=minbase --include="$PACKAGES" ${DEBOOTSTRAP_CACHE:+--cache-dir="$DEBOOTSTRAP_CACHE"} \
  "$SUITE" "$ROOTFS" "$MIRROR"

# Same suites as the build machine: the release, its updates and security updates.
rm -f "$ROOTFS/etc/apt/sources.list"
cat >"$ROOTFS/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC

# Image-friendly apt and dpkg defaults (what the official Debian images ship):
# no recommends, no docs/man/locales on later installs, no package caches left behind.
cat >"$ROOTFS/etc/apt/apt.conf.d/90ml-serving-image" <<'CONF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/90ml-serving-excludes" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CONF

# Security and point-release updates published after the suite's release files.
in_root apt-get update -q
in_root apt-get -y -q -o Dpkg::Options::=--force-confold upgrade
in_root apt-get -y -q autoremove --purge
in_root apt-get clean

# Trim what installs made before the excludes existed; keep copyright files (licences).
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$ROOTFS"/usr/share/{man,info,locale,lintian}/* \
  "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
  "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* "$ROOTFS"/root/.cache
# Tests of the standard library are not needed to run anything (Debian ships most in libpython3.11-testsuite already).
rm -rf "$ROOTFS"/usr/lib/python3.11/test "$ROOTFS"/usr/lib/python3.11/*/tests
# Files that must differ per container, and must not be baked.
: >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/etc/hostname" "$ROOTFS/etc/resolv.conf"
# Device nodes come from the container runtime.
rm -rf "${ROOTFS:?}"/dev/*
