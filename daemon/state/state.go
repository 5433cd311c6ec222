// Package state records on disk every VM the daemon starts, so that a
// daemon restarted after a crash can find its VMs again and either adopt or
// destroy them.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/warmpool/warmpool/vm"
)

// State is the lifecycle stage of a recorded VM.
type State string

const (
	// Restoring marks a VM whose Provider.Restore has started but not
	// finished. Its process and files may exist only in part.
	Restoring State = "restoring"
	// Warm marks a VM in the pool, ready to be handed out.
	Warm State = "warm"
	// HandedOut marks a VM returned by an acquire. It belongs to the caller.
	HandedOut State = "handed_out"
	// DestroyFailed marks a VM whose destroy returned an error, so parts
	// of it may still run. The next start destroys it again.
	DestroyFailed State = "destroy_failed"
)

// Record is one VM as stored on disk.
type Record struct {
	vm.Instance
	State     State     `json:"state"`
	UpdatedAt time.Time `json:"updated_at"`
}

var bucketVMs = []byte("vms")

// ErrNotFound is returned by Get for an id with no record.
var ErrNotFound = errors.New("state: no record for VM")

// Store is a bbolt database of Records keyed by VM id. It is safe for
// concurrent use.
type Store struct {
	db *bolt.DB
}

// Open opens or creates the store file state.db in dir, creating dir with
// mode 0700 and its missing parents with mode 0755 (both less the umask).
// The parents stay searchable because the API socket may sit in one of
// them. Open fails after timeout if another process holds the file lock,
// which means another daemon uses the same state directory.
func Open(dir string, timeout time.Duration) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("state: create parent of %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("state: create directory: %w", err)
	}
	path := filepath.Join(dir, "state.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("state: open %s: locked by another process (is another daemon using this state directory?)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("state: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketVMs)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("state: create bucket: %w", err)
	}
	return &Store{db: db}, nil
}

// Close closes the database file.
func (s *Store) Close() error {
	return s.db.Close()
}

// Put writes rec, replacing any record with the same id. It returns after
// the write is on disk. Each call is its own transaction with one fsync.
// bbolt's Batch would group concurrent calls, but it delays each call by up
// to 10ms to gather a batch, which the acquire path cannot afford.
func (s *Store) Put(rec Record) error {
	if err := vm.ValidateID(rec.ID); err != nil {
		return fmt.Errorf("state: put: %w", err)
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("state: put %s: encode: %w", rec.ID, err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVMs).Put([]byte(rec.ID), data)
	})
	if err != nil {
		return fmt.Errorf("state: put %s: %w", rec.ID, err)
	}
	return nil
}

// PutIf writes rec only if the stored record for the same id is in state
// from, and reports whether it wrote. The check and the write are one
// transaction, so a concurrent Put that moved the record on is never undone.
func (s *Store) PutIf(rec Record, from State) (bool, error) {
	if err := vm.ValidateID(rec.ID); err != nil {
		return false, fmt.Errorf("state: put: %w", err)
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("state: put %s: encode: %w", rec.ID, err)
	}
	var wrote bool
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketVMs)
		var old Record
		if err := json.Unmarshal(b.Get([]byte(rec.ID)), &old); err != nil || old.State != from {
			return nil
		}
		wrote = true
		return b.Put([]byte(rec.ID), data)
	})
	if err != nil {
		return false, fmt.Errorf("state: put %s: %w", rec.ID, err)
	}
	return wrote, nil
}

// Delete removes the record for id. Deleting a missing record returns nil.
func (s *Store) Delete(id string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVMs).Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("state: delete %s: %w", id, err)
	}
	return nil
}

// Get returns the record for id, or an error wrapping ErrNotFound.
func (s *Store) Get(id string) (Record, error) {
	var rec Record
	err := s.db.View(func(tx *bolt.Tx) error {
		data := tx.Bucket(bucketVMs).Get([]byte(id))
		if data == nil {
			return fmt.Errorf("%w %q", ErrNotFound, id)
		}
		return json.Unmarshal(data, &rec)
	})
	return rec, err
}

// List returns every record, sorted by id. A record that cannot be decoded
// is returned with only its ID set and State empty, so that the caller can
// still destroy whatever is left of that VM.
func (s *Store) List() ([]Record, error) {
	var recs []Record
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketVMs).ForEach(func(k, v []byte) error {
			var rec Record
			if err := json.Unmarshal(v, &rec); err != nil || rec.ID != string(k) {
				rec = Record{Instance: vm.Instance{ID: string(k)}}
			}
			recs = append(recs, rec)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("state: list: %w", err)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	return recs, nil
}

// ListState returns the records in state st, sorted by id.
func (s *Store) ListState(st State) ([]Record, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	var recs []Record
	for _, rec := range all {
		if rec.State == st {
			recs = append(recs, rec)
		}
	}
	return recs, nil
}
