package state

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/warmpool/warmpool/vm"
)

func testRecord(id string, st State) Record {
	return Record{
		Instance: vm.Instance{
			ID:    id,
			Stack: vm.StackKey{Name: "py", Version: "3", VCPUs: 1, MemoryMiB: 128},
			PID:   4242,
			Files: []string{"/tmp/x/" + id},
		},
		State: st,
	}
}

func TestStorePutGetDelete(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	if err := s.Put(testRecord("a1", Restoring)); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(testRecord("a1", Warm)); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get("a1")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != Warm {
		t.Errorf("state = %q, want %q", got.State, Warm)
	}
	if got.PID != 4242 || len(got.Files) != 1 {
		t.Errorf("instance fields lost: %+v", got.Instance)
	}

	if err := s.Delete("a1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("a1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: err = %v, want ErrNotFound", err)
	}
	if err := s.Delete("a1"); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

func TestStoreRejectsInvalidID(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(testRecord("../etc", Warm)); !errors.Is(err, vm.ErrInvalidID) {
		t.Errorf("Put(../etc): err = %v, want ErrInvalidID", err)
	}
}

func TestStorePersistsAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i, id := range []string{"c", "a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := []State{Warm, HandedOut, Restoring}[i]
			if err := s.Put(testRecord(id, st)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	recs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.ID)
	}
	if len(ids) != 3 || ids[0] != "a" || ids[1] != "b" || ids[2] != "c" {
		t.Errorf("ids = %v, want [a b c]", ids)
	}
	handed, err := s.ListState(HandedOut)
	if err != nil {
		t.Fatal(err)
	}
	if len(handed) != 1 || handed[0].ID != "a" {
		t.Errorf("handed out = %+v, want only a", handed)
	}
}

func TestStoreSecondOpenTimesOut(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(dir, 50*time.Millisecond); err == nil {
		t.Fatal("second Open of a locked store succeeded")
	}
}

func TestStoreUndecodableRecordKeepsID(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVMs).Put([]byte("broken"), []byte("{not json"))
	})
	if err != nil {
		t.Fatal(err)
	}
	recs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].ID != "broken" || recs[0].State != "" {
		t.Errorf("records = %+v, want one with ID broken and no state", recs)
	}
	if _, err := os.Stat(filepath.Join(dir, "state.db")); err != nil {
		t.Error(err)
	}
}

func TestStorePutIfChecksState(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	wrote, err := s.PutIf(testRecord("m", Warm), Restoring)
	if err != nil {
		t.Fatal(err)
	}
	if wrote {
		t.Error("PutIf wrote a record that did not exist")
	}

	if err := s.Put(testRecord("m", HandedOut)); err != nil {
		t.Fatal(err)
	}
	wrote, err = s.PutIf(testRecord("m", Warm), Restoring)
	if err != nil {
		t.Fatal(err)
	}
	if wrote {
		t.Error("PutIf overwrote a handed-out record")
	}
	got, err := s.Get("m")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != HandedOut {
		t.Errorf("state = %q, want %q", got.State, HandedOut)
	}

	if err := s.Put(testRecord("m", Restoring)); err != nil {
		t.Fatal(err)
	}
	wrote, err = s.PutIf(testRecord("m", Warm), Restoring)
	if err != nil {
		t.Fatal(err)
	}
	if !wrote {
		t.Error("PutIf did not write over a restoring record")
	}
}

func TestOpenKeepsParentsReachable(t *testing.T) {
	// The group and others need search permission on the parents, because
	// the daemon's socket may sit next to the state directory.
	umask := syscall.Umask(0o022)
	defer syscall.Umask(umask)

	parent := filepath.Join(t.TempDir(), "warmpool")
	dir := filepath.Join(parent, "state")
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	info, err := os.Stat(parent)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != 0o755 {
		t.Errorf("parent mode = %v, want 0755", got)
	}
	info, err = os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != 0o700 {
		t.Errorf("state directory mode = %v, want 0700", got)
	}
}
