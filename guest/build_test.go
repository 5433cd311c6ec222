package guest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/warmpool/warmpool/internal/testenv"
)

// parsedEntry is a cpio member as read back by readCPIO.
type parsedEntry struct {
	name   string
	mode   uint32
	data   []byte
	rdev   [2]uint32
	offset int
}

// readCPIO parses a newc archive independently of writeCPIO, checking the
// 4-byte alignment of every name and data section.
func readCPIO(t *testing.T, b []byte) []parsedEntry {
	t.Helper()
	var entries []parsedEntry
	pos := 0
	for {
		if pos%4 != 0 {
			t.Fatalf("header at offset %d is not 4-byte aligned", pos)
		}
		if len(b) < pos+110 || string(b[pos:pos+6]) != "070701" {
			t.Fatalf("no newc header at offset %d", pos)
		}
		field := func(i int) uint32 {
			start := pos + 6 + 8*i
			v, err := strconv.ParseUint(string(b[start:start+8]), 16, 32)
			if err != nil {
				t.Fatalf("header field %d at offset %d: %v", i, pos, err)
			}
			return uint32(v)
		}
		mode, size, nameSize := field(1), int(field(6)), int(field(11))
		nameStart := pos + 110
		name := string(b[nameStart : nameStart+nameSize-1])
		if b[nameStart+nameSize-1] != 0 {
			t.Fatalf("name %q is not NUL-terminated", name)
		}
		dataStart := (nameStart + nameSize + 3) &^ 3
		if name == "TRAILER!!!" {
			return entries
		}
		entries = append(entries, parsedEntry{
			name:   name,
			mode:   mode,
			data:   b[dataStart : dataStart+size],
			rdev:   [2]uint32{field(9), field(10)},
			offset: pos,
		})
		pos = (dataStart + size + 3) &^ 3
	}
}

func TestWriteCPIORoundTrip(t *testing.T) {
	in := []cpioEntry{
		{Name: "bin", Mode: modeDir | 0o755},
		{Name: "bin/a", Mode: modeRegular | 0o755, Data: []byte("12345")},
		{Name: "bin/link", Mode: modeSymlink | 0o777, Data: []byte("a")},
		{Name: "dev/console", Mode: modeCharDev | 0o600, RdevMajor: 5, RdevMinor: 1},
		{Name: "empty", Mode: modeRegular | 0o644},
	}
	var buf bytes.Buffer
	if err := writeCPIO(&buf, in); err != nil {
		t.Fatalf("writeCPIO: %v", err)
	}

	out := readCPIO(t, buf.Bytes())
	if len(out) != len(in) {
		t.Fatalf("read %d entries, want %d", len(out), len(in))
	}
	for i, e := range in {
		if out[i].name != e.Name {
			t.Errorf("entry %d name = %q, want %q", i, out[i].name, e.Name)
		}
		if out[i].mode != e.Mode {
			t.Errorf("%s mode = %o, want %o", e.Name, out[i].mode, e.Mode)
		}
		if !bytes.Equal(out[i].data, e.Data) {
			t.Errorf("%s data = %q, want %q", e.Name, out[i].data, e.Data)
		}
		if out[i].rdev != [2]uint32{e.RdevMajor, e.RdevMinor} {
			t.Errorf("%s rdev = %v, want %d,%d", e.Name, out[i].rdev, e.RdevMajor, e.RdevMinor)
		}
	}

	var again bytes.Buffer
	writeCPIO(&again, in)
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Errorf("two writes of the same entries differ")
	}
}

// TestWriteCPIOReadByGNUCpio checks the archive with Debian's cpio, which
// reads it the way the kernel does.
func TestWriteCPIOReadByGNUCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		testenv.Skipf(t, "cpio not found in PATH; install Debian's cpio to run this test")
	}
	var buf bytes.Buffer
	entries := []cpioEntry{
		{Name: "dir", Mode: modeDir | 0o755},
		{Name: "dir/file", Mode: modeRegular | 0o644, Data: []byte("hello\n")},
	}
	if err := writeCPIO(&buf, entries); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-it")
	cmd.Stdin = &buf
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -it: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "dir/file") {
		t.Errorf("cpio -it listed %q, want dir/file", out)
	}
}

func TestBuildKeyChangesWithInputs(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "kernel")
	busybox := filepath.Join(dir, "busybox")
	os.WriteFile(kernel, []byte("kernel 1"), 0o644)
	os.WriteFile(busybox, []byte("busybox 1"), 0o644)

	base, err := buildKey(kernel, busybox, "go1.26")
	if err != nil {
		t.Fatalf("buildKey: %v", err)
	}
	if again, _ := buildKey(kernel, busybox, "go1.26"); again != base {
		t.Errorf("same inputs gave keys %s and %s", base, again)
	}
	if other, _ := buildKey(kernel, busybox, "go1.27"); other == base {
		t.Errorf("another Go version gave the same key")
	}
	os.WriteFile(kernel, []byte("kernel 2"), 0o644)
	if other, _ := buildKey(kernel, busybox, "go1.26"); other == base {
		t.Errorf("another kernel gave the same key")
	}
	if _, err := buildKey(filepath.Join(dir, "missing"), busybox, "go1.26"); err == nil {
		t.Errorf("buildKey with a missing kernel returned nil")
	}
}

func TestBuildRejectsMissingInputs(t *testing.T) {
	if _, err := Build(t.Context(), Options{}); err == nil || !strings.Contains(err.Error(), "missing output directory") {
		t.Errorf("Build without OutDir = %v, want missing output directory error", err)
	}
	out := filepath.Join(t.TempDir(), "guest")
	_, err := Build(t.Context(), Options{OutDir: out, Kernel: "/nonexistent/vmlinuz", Busybox: "/nonexistent/busybox"})
	if err == nil {
		t.Fatalf("Build with a missing kernel returned nil")
	}
	if _, statErr := os.Stat(out); statErr == nil {
		t.Errorf("a failed Build created %s", out)
	}
}

// TestBuildIsCachedAndRepeatable builds the real guest twice into different
// directories and checks that both initramfs images are identical and that
// a second build into the same directory is a cache hit.
func TestBuildIsCachedAndRepeatable(t *testing.T) {
	if _, err := FindKernel(t.Context()); err != nil {
		testenv.Skipf(t, "no guest kernel on this host: %v", err)
	}
	if _, err := FindBusybox(t.Context()); err != nil {
		testenv.Skipf(t, "no busybox on this host: %v", err)
	}
	first, err := Build(t.Context(), Options{OutDir: filepath.Join(t.TempDir(), "a")})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if first.Cached {
		t.Errorf("first build into an empty directory reported a cache hit")
	}
	second, err := Build(t.Context(), Options{OutDir: filepath.Join(t.TempDir(), "b")})
	if err != nil {
		t.Fatalf("second Build: %v", err)
	}
	a, _ := os.ReadFile(first.Initrd)
	b, _ := os.ReadFile(second.Initrd)
	if !bytes.Equal(a, b) {
		t.Errorf("two builds of the same inputs gave different initramfs images")
	}

	cached, err := Build(t.Context(), Options{OutDir: filepath.Dir(first.Initrd)})
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	if !cached.Cached {
		t.Errorf("rebuild with unchanged inputs was not a cache hit")
	}

	names := map[string]bool{}
	for _, e := range readCPIO(t, a) {
		names[e.name] = true
	}
	for _, want := range []string{"init", "bin/busybox", "dev/console"} {
		if !names[want] {
			t.Errorf("initramfs lacks %s", want)
		}
	}
}

// writeFakeInputs writes a fake kernel and busybox into dir.
func writeFakeInputs(t *testing.T, dir string) (kernel, busybox string) {
	t.Helper()
	kernel = filepath.Join(dir, "vmlinuz-src")
	busybox = filepath.Join(dir, "busybox-src")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(busybox, []byte("busybox"), 0o755); err != nil {
		t.Fatal(err)
	}
	return kernel, busybox
}

func TestBuildCachedNeedsNoGo(t *testing.T) {
	dir := t.TempDir()
	kernel, busybox := writeFakeInputs(t, dir)
	out := filepath.Join(dir, "guest")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	key, err := buildKey(kernel, busybox, "go1.26.0")
	if err != nil {
		t.Fatal(err)
	}
	manifest := fmt.Sprintf(`{"key":%q,"go_version":"go1.26.0"}`, key)
	for name, data := range map[string]string{KernelFile: "k", InitrdFile: "i", ManifestFile: manifest} {
		if err := os.WriteFile(filepath.Join(out, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	opts := Options{OutDir: out, Kernel: kernel, Busybox: busybox, GoBinary: "/nonexistent/go"}
	g, err := Build(t.Context(), opts)
	if err != nil {
		t.Fatalf("Build of a cached guest without Go: %v", err)
	}
	if !g.Cached {
		t.Errorf("Build did not report the cached guest as cached")
	}

	// With a changed kernel a build is needed, and the error states that
	// Go is missing.
	if err := os.WriteFile(kernel, []byte("other kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Build(t.Context(), opts)
	if err == nil || !strings.Contains(err.Error(), "needs the Go toolchain") {
		t.Errorf("Build without Go = %v, want an error naming the Go toolchain", err)
	}
}

func TestWriteFileAtomicConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vmlinuz")
	const writers = 8
	errs := make(chan error, writers)
	for i := range writers {
		go func() {
			errs <- writeFileAtomic(path, bytes.Repeat([]byte{byte(i)}, 1<<20), 0o644)
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Errorf("writeFileAtomic: %v", err)
		}
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d files after the writes, want only vmlinuz", len(entries))
	}
}
