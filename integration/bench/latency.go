package bench

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// LatencyProxy puts a distant upstream on loopback (the kernel here has no netem): a TCP proxy in
// front of a server that holds every chunk it reads for half the round-trip time before passing
// it on, in each direction, so that a request and its answer take one round trip more than on
// loopback. Chunks keep their order; a connection's close is passed on after its last chunk.
// The round-trip time can change between measurements (SetRTT); a chunk read after the change
// takes the new one.
type LatencyProxy struct {
	ln     net.Listener
	target string
	half   atomic.Int64 // nanoseconds each chunk is held
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// StartLatencyProxy listens on a free loopback port and forwards every connection to target.
func StartLatencyProxy(target string) (*LatencyProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("latency proxy: %w", err)
	}
	p := &LatencyProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Port is the proxy's TCP port.
func (p *LatencyProxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// SetRTT sets the round-trip time the proxy adds.
func (p *LatencyProxy) SetRTT(d time.Duration) { p.half.Store(int64(d / 2)) }

// RTT is the round-trip time the proxy adds.
func (p *LatencyProxy) RTT() time.Duration { return 2 * time.Duration(p.half.Load()) }

// Close stops the proxy and closes every connection.
func (p *LatencyProxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *LatencyProxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *LatencyProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(c)
		}()
	}
}

func (p *LatencyProxy) handle(client net.Conn) {
	// Connecting takes a round trip too: the client's SYN is answered after it.
	time.Sleep(2 * time.Duration(p.half.Load()))
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	p.track(client, true)
	p.track(server, true)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client) }()
	go func() { defer wg.Done(); p.pipe(client, server) }()
	wg.Wait()
	client.Close()
	server.Close()
	p.track(client, false)
	p.track(server, false)
}

// chunk is what one read took in, due at due; nil data ends the direction.
type chunk struct {
	data []byte
	due  time.Time
}

// pipe copies src to dst, each chunk held for half the round trip.
func (p *LatencyProxy) pipe(dst, src net.Conn) {
	q := make(chan chunk, 1024)
	go func() {
		defer close(q)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			quickAck(src)
			if n > 0 {
				q <- chunk{data: b[:n], due: time.Now().Add(time.Duration(p.half.Load()))}
			}
			if err != nil {
				return
			}
		}
	}()
	failed := false
	for c := range q {
		if failed {
			continue
		}
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.data); err != nil {
			failed = true
			src.Close()
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok && !failed {
		tc.CloseWrite()
	} else {
		dst.Close()
	}
}

// quickAck acknowledges what was read at once (see the sink's quickAckConn): a delayed ACK would
// add up to 40 ms that is not the distance being modelled.
func quickAck(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	if rc, err := tc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
		})
	}
}
