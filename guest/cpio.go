package guest

import (
	"fmt"
	"io"
)

// cpioEntry is one member of an initramfs archive.
type cpioEntry struct {
	Name string // path without a leading slash, such as "bin/busybox"
	Mode uint32 // file type and permission bits, as in struct stat
	Data []byte // file contents, or the target of a symbolic link

	// RdevMajor and RdevMinor are the device numbers of a device node.
	RdevMajor, RdevMinor uint32
}

// Mode bits of the cpio "newc" format, the same as Linux's S_IF* values.
const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

// writeCPIO writes entries as an uncompressed cpio archive in the "newc"
// format that the Linux kernel unpacks as an initramfs. Owners are root,
// mtimes are zero and inode numbers are assigned in order, so the same
// entries always produce the same bytes.
func writeCPIO(w io.Writer, entries []cpioEntry) error {
	for i, e := range entries {
		if err := writeCPIOEntry(w, uint32(i+1), e); err != nil {
			return fmt.Errorf("cpio: write %s: %w", e.Name, err)
		}
	}
	trailer := cpioEntry{Name: "TRAILER!!!"}
	if err := writeCPIOEntry(w, 0, trailer); err != nil {
		return fmt.Errorf("cpio: write trailer: %w", err)
	}
	return nil
}

func writeCPIOEntry(w io.Writer, inode uint32, e cpioEntry) error {
	nlink := uint32(1)
	if e.Mode&0o170000 == modeDir {
		nlink = 2
	}

	// The header is "070701" followed by 13 fields of 8 hex digits. They
	// are inode, mode, uid, gid, nlink, mtime, file size, device major and
	// minor, rdev major and minor, and name size including its NUL. The
	// last is a checksum, which the newc format leaves at zero.
	header := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		inode, e.Mode, 0, 0, nlink, 0, len(e.Data), 0, 0,
		e.RdevMajor, e.RdevMinor, len(e.Name)+1, 0)

	// The name and the data each end on a 4-byte boundary, counted from
	// the start of the header.
	name := header + e.Name + "\x00"
	if _, err := io.WriteString(w, name+padding(len(name))); err != nil {
		return err
	}
	if _, err := w.Write(e.Data); err != nil {
		return err
	}
	_, err := io.WriteString(w, padding(len(e.Data)))
	return err
}

func padding(n int) string {
	return "\x00\x00\x00"[:(4-n%4)%4]
}
