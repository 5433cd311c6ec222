package daemon

import (
	"errors"
	"net/http"
	"testing"
)

// checkDecodeError fails unless err is nil or an apiError with a 4xx status
// and a message.
func checkDecodeError(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v (%T) is not an apiError", err, err)
	}
	if ae.status < 400 || ae.status > 499 {
		t.Fatalf("status %d for %q, want 4xx", ae.status, ae.msg)
	}
	if ae.msg == "" {
		t.Fatal("empty error message")
	}
}

func FuzzDecodeAcquireRequest(f *testing.F) {
	seeds := []string{
		`{"stack":{"name":"py","version":"3.12","vcpus":1,"memory_mib":256}}`,
		`{"stack":{"name":"py","version":"3.12","vcpus":1,"memory_mib":256},"wait_ms":100,"cold_fallback":true}`,
		`{"stack":{"name":"py"}} {}`,
		`{"stack":{"name":"py","cpus":1}}`,
		`{"wait_ms":-1}`,
		`{"wait_ms":1e400}`,
		`[`, `null`, ``, `"x"`, `{"stack":null}`,
		"{\"stack\":{\"name\":\"\xff\"}}",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeAcquireRequest(body, nil)
		checkDecodeError(t, err)
		if err != nil {
			return
		}
		if verr := req.Stack.Validate(); verr != nil {
			t.Fatalf("accepted an invalid stack key: %v", verr)
		}
		if req.WaitMS < 0 || req.WaitMS > maxWaitMS {
			t.Fatalf("accepted wait_ms %d", req.WaitMS)
		}
	})
}

func FuzzDecodeRegisterRequest(f *testing.F) {
	seeds := []string{
		`{"key":{"name":"py","version":"3","vcpus":1,"memory_mib":64},"snapshot":{"path":"p"}}`,
		`{"key":{},"snapshot":{},"min_depth":-1,"max_depth":null}`,
		`{"key":1}`, `{}`, `{"min_depth":99999999999999999999}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		_, err := decodeRegisterRequest(body, nil)
		checkDecodeError(t, err)
	})
}

func FuzzParseStackPath(f *testing.F) {
	f.Add("py", "3.12", "1", "256")
	f.Add("..", "1", "-1", "99999999999999999999")
	f.Add("a b", "", "0x10", "16")
	f.Fuzz(func(t *testing.T, name, version, vcpus, memory string) {
		key, err := parseStackPath(name, version, vcpus, memory)
		checkDecodeError(t, err)
		if err == nil {
			if verr := key.Validate(); verr != nil {
				t.Fatalf("accepted an invalid key: %v", verr)
			}
		}
	})
}

func TestDecodeTooLargeBody(t *testing.T) {
	_, err := decodeAcquireRequest(nil, &http.MaxBytesError{Limit: maxBodyBytes})
	var ae *apiError
	if !errors.As(err, &ae) || ae.status != http.StatusRequestEntityTooLarge {
		t.Errorf("err = %v, want a 413 apiError", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(validConfig))
	f.Add([]byte("provider: {kind: sim}\nstacks: [{key: {name: a}}]\n"))
	f.Add([]byte("provider: &a {kind: sim}\npool: *a\n"))
	f.Add([]byte("listen: {socket_mode: 0o777, tcp: '[::1]:1'}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig("fuzz.yaml", data)
		if err != nil {
			return
		}
		for _, s := range cfg.Stacks {
			if verr := s.Key.Validate(); verr != nil {
				t.Fatalf("accepted an invalid stack key: %v", verr)
			}
		}
		if cfg.Listen.TCP != "" {
			if lerr := checkLoopback(cfg.Listen.TCP); lerr != nil {
				t.Fatalf("accepted a non-loopback address: %v", lerr)
			}
		}
	})
}

func TestDecodeAcquireInvalidKeyMessage(t *testing.T) {
	_, err := decodeAcquireRequest([]byte(`{"stack":{"name":"../x","version":"1","vcpus":1,"memory_mib":64}}`), nil)
	want := `stack key: invalid name "../x": use 1-64 letters, digits, '.', '_' or '-'`
	if err == nil || err.Error() != want {
		t.Errorf("error = %v, want %q", err, want)
	}
}
