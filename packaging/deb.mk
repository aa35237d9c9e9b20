# Debian packages of linkd, built with dpkg-deb (packaging/build-deb.sh).
# Included by the top Makefile before cross/cross.mk, because ARCH here names
# a Debian architecture, which cross.mk would not know:
#
#   make deb ARCH=amd64   -> build/deb/linkd_$(VERSION)_amd64.deb  (./linkd, dynamic: Depends from dpkg-shlibdeps)
#   make deb ARCH=arm64   -> build/deb/linkd_$(VERSION)_arm64.deb  (./linkd-aarch64, static: no Depends)
#   make deb ARCH=armhf   -> build/deb/linkd_$(VERSION)_armhf.deb  (./linkd-armhf, static: no Depends)
#   make deb              -> all three
#   DEB_VERSION=0.1.0-2   -> another package version (default $(VERSION))
#
# On a board: dpkg -i linkd_0.1.0_arm64.deb (tests/t_deb.sh installs, upgrades,
# removes and purges the amd64 one in a scratch root).

DEB_VERSION ?= $(if $(VERSION),$(VERSION),0.1.0)
DEB_OUT     := $(if $(BUILD),$(BUILD),build)/deb
DEB_ARCHES  := amd64 arm64 armhf
DEB_INPUTS  := packaging/build-deb.sh packaging/sysusers.conf packaging/debian/postinst packaging/debian/prerm \
               packaging/debian/postrm packaging/debian/copyright cross/linkd.service cross/linkd.conf
DEBS        += dpkg-dev

ifneq ($(filter deb,$(MAKECMDGOALS)),)
ifneq ($(ARCH),)
DEB_ARCH := $(patsubst x86_64,amd64,$(patsubst aarch64,arm64,$(ARCH)))
ifeq ($(filter $(DEB_ARCH),$(DEB_ARCHES)),)
$(error make deb: ARCH=$(ARCH): the Debian architectures are amd64, arm64 and armhf)
endif
# the cross builds run in a sub-make with cross.mk's own name for ARCH
override ARCH :=
endif
endif

.PHONY: deb deb-amd64 deb-arm64 deb-armhf
# make test (native) builds the three packages first, so tests/t_deb.sh only
# repackages: the ARM cross builds (minutes on a fresh machine) happen here,
# outside the test's time limit. (make test ARCH=... builds its cross binary itself.)
ifeq ($(ARCH)$(DEB_ARCH),)
test: deb
endif
deb: $(if $(DEB_ARCH),deb-$(DEB_ARCH),$(addprefix deb-,$(DEB_ARCHES)))

# The .deb is remade every time (a second with dpkg-deb): whether the binary
# changed is the sub-make's business.
deb-amd64: linkd
	@packaging/build-deb.sh amd64 linkd $(DEB_VERSION) $(DEB_OUT)
deb-arm64:
	@$(MAKE) --no-print-directory linkd-aarch64 ARCH=aarch64
	@packaging/build-deb.sh arm64 linkd-aarch64 $(DEB_VERSION) $(DEB_OUT)
deb-armhf:
	@$(MAKE) --no-print-directory linkd-armhf ARCH=armhf
	@packaging/build-deb.sh armhf linkd-armhf $(DEB_VERSION) $(DEB_OUT)
