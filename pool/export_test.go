package pool

import (
	"context"

	"github.com/warmpool/warmpool/vm"
)

// PutBack returns a handed-out VM to the warm VMs of key, as if it had never
// been acquired. It exists for benchmarks, which recycle VMs the way a
// connection pool's Release does; the pool itself never takes VMs back.
func (p *Pool) PutBack(key vm.StackKey, h Handle) {
	b := p.reg.Load().byKey[key]
	b.mu.Lock()
	b.warm.push(entry{inst: h.Instance})
	b.mu.Unlock()
}

// WaitIdle waits until no refiller, worker or background destroy runs. It
// returns only after Close, because the refiller runs until then.
func (p *Pool) WaitIdle() {
	p.workers.wait(context.Background(), nil)
	p.background.wait(context.Background(), nil)
}
