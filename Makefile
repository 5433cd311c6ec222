# Build targets of warmpool. The guest and the templates live in CACHE_DIR,
# and each step reuses what an earlier run left there.

GO        ?= go
CACHE_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/warmpool
BIN       ?= bin/warmpool

# Stack and settings of `make template` and `make bench`.
ACCEL        ?= auto
NAME         ?= bench
VCPUS        ?= 1
MEMORY       ?= 128
SAMPLES      ?= 50
DEPTH        ?= 2
TEMPLATE_DIR ?= $(CACHE_DIR)/templates/make-$(NAME)-$(VCPUS)cpu-$(MEMORY)mib-$(ACCEL)
STACK_FLAGS   = --name $(NAME) --vcpus $(VCPUS) --memory $(MEMORY)

.PHONY: deps build guest template bench test

# Debian packages the guest build, the QEMU provider and the browser test
# need, and the Go modules. Runs apt-get as root, or through sudo.
DEB_PACKAGES = qemu-system-x86 qemu-utils linux-image-cloud-amd64 busybox-static cpio \
	chromium iproute2 ca-certificates
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

deps:
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends $(DEB_PACKAGES)
	$(GO) mod download

build:
	$(GO) build -o $(BIN) ./cmd/warmpool

# Kernel and initramfs of the QEMU guest, from Debian's
# linux-image-cloud-amd64 and busybox-static and the Go agent.
guest:
	$(GO) run ./guest/cmd/build-guest -out $(CACHE_DIR)/guest

# A QEMU template snapshot of the guest in TEMPLATE_DIR, made once.
template: build guest
	@if [ -e $(TEMPLATE_DIR)/snapshot.json ]; then \
		echo "template exists: $(TEMPLATE_DIR)"; \
	else \
		$(BIN) template --provider qemu --accel $(ACCEL) --cache-dir $(CACHE_DIR) \
			$(STACK_FLAGS) --out $(TEMPLATE_DIR); \
	fi

# Cold restore against warm acquire on real QEMU VMs.
bench: build guest template
	$(BIN) bench --provider qemu --accel $(ACCEL) --cache-dir $(CACHE_DIR) $(STACK_FLAGS) \
		--snapshot $(TEMPLATE_DIR) --samples $(SAMPLES) --depth $(DEPTH)

# The whole test suite, as CI runs it. The QEMU, Chromium and Firecracker
# emulator tests need qemu-system-x86, linux-image-cloud-amd64,
# busybox-static, cpio and chromium from Debian, and root for TAP devices.
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
