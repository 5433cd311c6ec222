package observe

import (
	"sync"
	"time"

	"github.com/warmpool/warmpool/vm"
)

// EventCapacity is the number of recent events a Recorder keeps. Older
// events are dropped.
const EventCapacity = 100

// EventKind names what happened in an Event.
type EventKind string

// Kinds of Event.
const (
	// EventEvicted is a warm VM removed from the pool before its destroy.
	EventEvicted EventKind = "evicted"
	// EventRestoreFailed is a pool restore that failed, after which the
	// bucket backs off.
	EventRestoreFailed EventKind = "restore_failed"
	// EventDestroyFailed is a destroy of a pool-owned VM that returned an
	// error, so the VM may still be running.
	EventDestroyFailed EventKind = "destroy_failed"
)

// Event is one eviction or failure, as shown on the status page.
type Event struct {
	Time  time.Time   `json:"time"`
	Kind  EventKind   `json:"kind"`
	Stack vm.StackKey `json:"stack"`
	VMID  string      `json:"vm_id"`
	// Reason is the eviction reason (unhealthy, age, probe, unregister or
	// close), empty for failures.
	Reason string `json:"reason,omitempty"`
	// Error is the error that caused the event, empty when there is none,
	// for example for an eviction by age.
	Error string `json:"error,omitempty"`
	// RetryIn is the backoff after a failed restore.
	RetryIn time.Duration `json:"retry_in_ns,omitempty"`
}

// eventRing is a fixed-size ring of the most recent events.
type eventRing struct {
	// mu guards events, next and full. Nothing blocks while it is held.
	mu     sync.Mutex
	events []Event
	next   int  // index the next event is written to
	full   bool // whether the ring has wrapped at least once
}

func newEventRing(capacity int) *eventRing {
	return &eventRing{events: make([]Event, capacity)}
}

func (r *eventRing) add(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()

	r.events[r.next] = e
	r.next++
	if r.next == len(r.events) {
		r.next = 0
		r.full = true
	}
}

// list returns a copy of the events, newest first.
func (r *eventRing) list() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()

	count := r.next
	if r.full {
		count = len(r.events)
	}
	out := make([]Event, 0, count)
	for i := 1; i <= count; i++ {
		index := (r.next - i + len(r.events)) % len(r.events)
		out = append(out, r.events[index])
	}
	return out
}
