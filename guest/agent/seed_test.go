//go:build linux

package main

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestRandPoolInfoLayout(t *testing.T) {
	seed := bytes.Repeat([]byte{0x5a}, 33)
	b := randPoolInfo(seed)
	if got := binary.NativeEndian.Uint32(b[0:]); got != 33*8 {
		t.Errorf("entropy_count = %d, want %d", got, 33*8)
	}
	if got := binary.NativeEndian.Uint32(b[4:]); got != 33 {
		t.Errorf("buf_size = %d, want 33", got)
	}
	if len(b) != 8+36 {
		t.Errorf("length = %d, want 44: buf rounds up to whole __u32 words", len(b))
	}
	if !bytes.Equal(b[8:8+33], seed) {
		t.Errorf("buf does not start with the seed")
	}
}
