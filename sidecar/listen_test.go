package sidecar

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// echo serves l: every connection answers each byte with the same byte.
func echo(t *testing.T, l net.Listener) (accepted *atomic.Int64) {
	t.Helper()
	accepted = &atomic.Int64{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return accepted
}

func dialEcho(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c, bufio.NewReader(c)
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader) {
	t.Helper()
	if _, err := c.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	if b, err := r.ReadByte(); err != nil || b != 'x' {
		t.Fatalf("echo: %q %v", b, err)
	}
}

// At its cap a listener serves no new connection until one closes; the new one waits in the
// kernel's queue meanwhile and is served then.
func TestGuardedListenerCapsConnections(t *testing.T) {
	t.Parallel()
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := guardListener(nl, "test", 2, slog.New(slog.DiscardHandler))
	accepted := echo(t, l)
	addr := nl.Addr().String()

	c1, r1 := dialEcho(t, addr)
	roundTrip(t, c1, r1)
	c2, r2 := dialEcho(t, addr)
	roundTrip(t, c2, r2)
	waitUntil(t, "Accept waits for a free slot", func() bool { return l.full.Load() == 1 })
	c3, r3 := dialEcho(t, addr) // connects: the kernel queues it
	if _, err := c3.Write([]byte{'x'}); err != nil {
		t.Fatal(err)
	}
	// Accept is blocked until a slot frees, so the third connection cannot have been accepted.
	if n, open := accepted.Load(), l.open(); n != 2 || open != 2 {
		t.Fatalf("accepted %d, open %d at a cap of 2", n, open)
	}
	c1.Close()
	if b, err := r3.ReadByte(); err != nil || b != 'x' {
		t.Fatalf("the waiting connection after one closed: %q %v", b, err)
	}
	roundTrip(t, c2, r2)
	if n, open := accepted.Load(), l.open(); n != 3 || open > 2 {
		t.Errorf("accepted %d, open %d", n, open)
	}
}

// flakyListener fails its first Accepts as a process out of file descriptors does.
type flakyListener struct {
	net.Listener
	failures atomic.Int64
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.failures.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// A failed accept is retried: the server behind the listener never sees it, and the slot it took
// is not lost.
func TestGuardedListenerRetriesFailedAccepts(t *testing.T) {
	t.Parallel()
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: nl}
	fl.failures.Store(5)
	l := guardListener(fl, "test", 1, slog.New(slog.DiscardHandler))
	go func() {
		c, r := dialEcho(t, nl.Addr().String())
		c.Write([]byte{'x'})
		r.ReadByte()
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	if n := l.failures.Load(); n != 5 {
		t.Errorf("%d failures counted, want 5", n)
	}
	c.Close()
	c.Close() // a second Close gives back nothing
	if n := len(l.slots); n != 0 || l.open() != 0 {
		t.Errorf("%d slots taken, %d open after the only connection closed", n, l.open())
	}

	// Closing the listener ends an Accept in its backoff.
	fl.failures.Store(1 << 30)
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	waitUntil(t, "Accept retries", func() bool { return l.failures.Load() > 6 })
	l.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if n := len(l.slots); n != 0 {
		t.Errorf("%d slots taken after a failed Accept", n)
	}
}
