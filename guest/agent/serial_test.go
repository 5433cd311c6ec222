//go:build linux

package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/warmpool/warmpool/guest/vsockproto"
)

func TestSerialReply(t *testing.T) {
	var seeds [][]byte
	h := vsockproto.Handlers{
		Reseed: func(seed []byte) error {
			seeds = append(seeds, seed)
			if seed[0] == 0xff {
				return errors.New("ioctl failed")
			}
			return nil
		},
		Random: func() ([]byte, error) { return bytes.Repeat([]byte{0x0f}, vsockproto.RandomSize), nil },
	}
	good := strings.Repeat("01", vsockproto.MinSeedSize)
	bad := strings.Repeat("ff", vsockproto.MinSeedSize)
	cases := []struct {
		line, want string
	}{
		{"ping 7", "pong 7"},
		{"seed 8 " + good, "seeded 8"},
		{"seed 9 " + bad, "error 9 ioctl failed"},
		{"seed 10 abc", "error 10 invalid seed: not hex"},
		{"rand 11", "rand 11 " + strings.Repeat("0f", vsockproto.RandomSize)},
		{"ping", ""},
		{"hb 3", ""},
	}
	for _, tc := range cases {
		got, ok := serialReply(tc.line, h)
		if tc.want == "" {
			if ok {
				t.Errorf("serialReply(%q) = %q, want no reply", tc.line, got)
			}
			continue
		}
		if got != tc.want {
			t.Errorf("serialReply(%q) = %q, want %q", tc.line, got, tc.want)
		}
	}
	if len(seeds) != 2 {
		t.Errorf("reseed ran %d times, want 2", len(seeds))
	}
}
