package harness

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Fault is what a FaultProxy does to the SMTP sessions passing through it.
type Fault int32

const (
	// FaultNone passes every session through unchanged.
	FaultNone Fault = iota
	// FaultCutData closes both sides of a session after the first line of a message's data: the
	// server never sees the end of the message, the client never gets a reply.
	FaultCutData
	// Fault421 answers every new connection, and the next command of every open session, with
	// "421 4.3.2" and closes.
	Fault421
	// FaultNoReplyAfterData passes a message's final dot to the server, swallows the server's
	// reply and closes both sides: the server has the message, the client cannot know it. This is
	// the one window in which SMTP itself may deliver a message twice.
	FaultNoReplyAfterData
	// FaultBlackHole accepts new connections and never says a word; the next command of an open
	// session is swallowed and never answered.
	FaultBlackHole
	faultCount
)

var faultNames = [...]string{"none", "cut-data", "421", "no-reply-after-data", "black-hole"}

func (f Fault) String() string {
	if f >= 0 && int(f) < len(faultNames) {
		return faultNames[f]
	}
	return fmt.Sprintf("Fault(%d)", int32(f))
}

// FaultProxy sits between Postern and one organisation's listener of the upstream Postfix and
// injects faults at chosen points of the SMTP dialogue. It passes the plain-text part through,
// and at STARTTLS it ends TLS on both sides itself (presenting the test CA's server
// certificate to the client, trusting the test CA towards the server), so that it sees the
// commands, the data and the replies of the protected part too. Point a project at Port with
// ProjectOptions.Port; nothing else changes.
type FaultProxy struct {
	// Port is the proxy's port on 127.0.0.1.
	Port int

	target    string
	serverTLS *tls.Config
	clientTLS *tls.Config
	ln        net.Listener
	fault     atomic.Int32

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	injected [faultCount]int
	open     int // sessions open now
	maxOpen  int // the most sessions open at once
	closed   bool
	wg       sync.WaitGroup
}

// Addr is the proxy's host:port.
func (p *FaultProxy) Addr() string { return fmt.Sprintf("127.0.0.1:%d", p.Port) }

// SetFault makes the proxy inject f from now on (FaultNone: pass everything through).
func (p *FaultProxy) SetFault(f Fault) { p.fault.Store(int32(f)) }

// Fault is the fault injected now.
func (p *FaultProxy) Fault() Fault { return Fault(p.fault.Load()) }

// Injected returns how many times f was injected: sessions cut, refused, silenced or replies
// swallowed.
func (p *FaultProxy) Injected(f Fault) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.injected[f]
}

// MaxOpen is the largest number of sessions (client connections) that were open at once.
func (p *FaultProxy) MaxOpen() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxOpen
}

func (p *FaultProxy) count(f Fault) {
	p.mu.Lock()
	p.injected[f]++
	p.mu.Unlock()
}

// StartFaultProxy starts a proxy in front of target (host:port of a listener that requires
// STARTTLS with ca's certificate) and registers its stop as a cleanup of t.
func StartFaultProxy(t T, ca *CA, target string) *FaultProxy {
	t.Helper()
	p, err := NewFaultProxy(ca, target)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// NewFaultProxy starts a proxy in front of target; Close stops it.
func NewFaultProxy(ca *CA, target string) (*FaultProxy, error) {
	cert, err := tls.LoadX509KeyPair(ca.CertFile, ca.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("fault proxy: loading the test certificate: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("fault proxy: listening: %w", err)
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("fault proxy: target %q: %w", target, err)
	}
	p := &FaultProxy{
		Port:      ln.Addr().(*net.TCPAddr).Port,
		target:    target,
		serverTLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		clientTLS: ca.ClientTLS(host),
		ln:        ln,
		conns:     map[net.Conn]struct{}{},
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Close stops listening, closes every session and waits for them to end.
func (p *FaultProxy) Close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.ln.Close()
	p.wg.Wait()
}

func (p *FaultProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *FaultProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *FaultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			continue
		}
		p.mu.Lock()
		p.open++
		p.maxOpen = max(p.maxOpen, p.open)
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer func() {
				p.mu.Lock()
				p.open--
				p.mu.Unlock()
			}()
			defer p.untrack(c)
			p.serve(c)
		}()
	}
}

// replyTag says what a reply of the server answers, so that the proxy knows the reply to a
// message's final dot.
type replyTag int

const (
	tagCommand replyTag = iota
	tagData             // the reply to DATA: 354 opens the data
	tagDataEnd          // the reply to the final dot
)

func (p *FaultProxy) serve(c net.Conn) {
	switch f := p.Fault(); f {
	case Fault421:
		p.count(f)
		_, _ = io.WriteString(c, "421 4.3.2 fault proxy: service not available\r\n")
		return
	case FaultBlackHole:
		p.count(f)
		_, _ = io.Copy(io.Discard, c)
		return
	}
	s, err := net.DialTimeout("tcp", p.target, 10*time.Second)
	if err != nil {
		_, _ = io.WriteString(c, "421 4.4.1 fault proxy: cannot reach the server\r\n")
		return
	}
	if !p.track(s) {
		return
	}
	defer p.untrack(s)

	// The plain-text part: one command, one reply, until STARTTLS succeeds.
	cr, sr := bufio.NewReader(c), bufio.NewReader(s)
	greeting, err := readReply(sr)
	if err != nil {
		return
	}
	if _, err := c.Write(greeting); err != nil {
		return
	}
	for {
		line, err := cr.ReadString('\n')
		if err != nil {
			return
		}
		if _, err := io.WriteString(s, line); err != nil {
			return
		}
		reply, err := readReply(sr)
		if err != nil {
			return
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
		if strings.EqualFold(strings.TrimSpace(line), "STARTTLS") && strings.HasPrefix(string(reply), "220") {
			break
		}
	}
	tc := tls.Server(c, p.serverTLS)
	ts := tls.Client(s, p.clientTLS)
	if err := ts.Handshake(); err != nil {
		return
	}
	if err := tc.Handshake(); err != nil {
		return
	}
	p.relay(c, s, tc, ts)
}

// relay passes the protected part of a session, injecting the fault set at each step.
func (p *FaultProxy) relay(c, s net.Conn, tc, ts *tls.Conn) {
	var (
		tags   = make(chan replyTag, 1024)
		inData atomic.Bool
		wmu    sync.Mutex // serialises writes to the client
		once   sync.Once
	)
	kill := func() { once.Do(func() { c.Close(); s.Close() }) }
	defer kill()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer kill()
		sr := bufio.NewReader(ts)
		for {
			reply, err := readReply(sr)
			if err != nil {
				return
			}
			tag := tagCommand
			select {
			case tag = <-tags:
			default:
			}
			switch {
			case tag == tagData && strings.HasPrefix(string(reply), "354"):
				inData.Store(true)
			case tag == tagDataEnd && p.Fault() == FaultNoReplyAfterData:
				p.count(FaultNoReplyAfterData)
				return
			}
			wmu.Lock()
			_, err = tc.Write(reply)
			wmu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	defer func() { kill(); <-done }()

	cr := bufio.NewReader(tc)
	dataLines := 0
	for {
		line, err := cr.ReadString('\n')
		if err != nil {
			return
		}
		if inData.Load() {
			if p.Fault() == FaultCutData && dataLines >= 1 {
				p.count(FaultCutData)
				return
			}
			dataLines++
			if line == ".\r\n" || line == ".\n" {
				inData.Store(false)
				dataLines = 0
				tags <- tagDataEnd
			}
			if _, err := io.WriteString(ts, line); err != nil {
				return
			}
			continue
		}
		switch f := p.Fault(); f {
		case Fault421:
			p.count(f)
			wmu.Lock()
			_, _ = io.WriteString(tc, "421 4.3.2 fault proxy: service not available\r\n")
			wmu.Unlock()
			return
		case FaultBlackHole:
			p.count(f)
			_, _ = io.Copy(io.Discard, cr)
			return
		}
		verb, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if strings.EqualFold(verb, "DATA") {
			tags <- tagData
		} else {
			tags <- tagCommand
		}
		if _, err := io.WriteString(ts, line); err != nil {
			return
		}
	}
}

// readReply reads one whole SMTP reply, every line of a multi-line one, as it came.
func readReply(r *bufio.Reader) ([]byte, error) {
	var b []byte
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		b = append(b, line...)
		if len(line) < 4 || line[3] != '-' {
			return b, nil
		}
	}
}
