package socketmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/project"
)

var _ Resolver = (*directory.Directory)(nil)

// testLookup serves map "senders": known@a.example is found, fail@a.example fails, slow@a.example
// waits for its ctx, block@a.example waits for the release channel.
type testLookup struct {
	calls   atomic.Int64
	started chan string
	release chan struct{}
}

func (l *testLookup) Lookup(ctx context.Context, mapName, key string) (string, bool, error) {
	l.calls.Add(1)
	if l.started != nil {
		l.started <- key
	}
	if mapName != "senders" {
		return "", false, ErrUnknownMap
	}
	switch key {
	case "known@a.example", "with space@a.example":
		return "lmtp:unix:/run/postern/lmtp.sock", true, nil
	case "fail@a.example":
		return "", false, errors.New("projects are unavailable")
	case "slow@a.example":
		<-ctx.Done()
		return "", false, ctx.Err()
	case "block@a.example":
		<-l.release
		return "released", true, nil
	}
	return "", false, nil
}

type served struct {
	network, addr string
	lookup        *testLookup
	cancel        context.CancelFunc
	done          chan error
}

func serve(t *testing.T, network string, srv Server) *served {
	t.Helper()
	var l net.Listener
	var err error
	if network == "unix" {
		l, err = net.Listen("unix", filepath.Join(t.TempDir(), "sm.sock"))
	} else {
		l, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, l, srv)
}

// serveOn serves on l, which may wrap a unix or TCP listener.
func serveOn(t *testing.T, l net.Listener, srv Server) *served {
	t.Helper()
	network, addr := l.Addr().Network(), l.Addr().String()
	s := &served{network: network, addr: addr, lookup: &testLookup{release: make(chan struct{})}, done: make(chan error, 1)}
	if srv.Lookup == nil {
		srv.Lookup = s.lookup.Lookup
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-s.done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

type client struct {
	t  *testing.T
	nc net.Conn
	r  *bufio.Reader
}

func (s *served) dial(t *testing.T) *client {
	t.Helper()
	nc, err := net.Dial(s.network, s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{t: t, nc: nc, r: bufio.NewReader(nc)}
}

func (c *client) send(raw string) {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, raw); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) request(mapName, key string) {
	c.t.Helper()
	s := mapName + " " + key
	c.send(fmt.Sprintf("%d:%s,", len(s), s))
}

func (c *client) reply() string {
	c.t.Helper()
	b, err := readNetstring(c.r, MaxReply+100)
	if err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	return string(b)
}

func (c *client) expectClosed() {
	c.t.Helper()
	if b, err := c.r.ReadByte(); err == nil {
		c.t.Fatalf("connection still open: read %q", b)
	}
}

var networks = []string{"unix", "tcp"}

func TestReplies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		request string // raw bytes
		want    string // reply prefix
	}{
		{"found", "23:senders known@a.example,", "OK lmtp:unix:/run/postern/lmtp.sock"},
		{"key with a space", "28:senders with space@a.example,", "OK lmtp:"},
		{"not found", "25:senders unknown@a.example,", "NOTFOUND "},
		{"lookup error", "22:senders fail@a.example,", "TEMP projects are unavailable"},
		{"lookup timeout", "22:senders slow@a.example,", "TIMEOUT "},
		{"unknown map", "23:aliases known@a.example,", "PERM unknown map name aliases"},
		{"no key", "7:senders,", "PERM request is not"},
		{"empty name", "16: known@a.example,", "PERM request is not"},
	}
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			s := serve(t, network, Server{LookupTimeout: 50 * time.Millisecond})
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					c := s.dial(t)
					c.send(tc.request)
					if got := c.reply(); !strings.HasPrefix(got, tc.want) {
						t.Fatalf("reply %q, want prefix %q", got, tc.want)
					}
					// The connection stays usable after every well-formed request.
					c.request("senders", "known@a.example")
					if got := c.reply(); !strings.HasPrefix(got, "OK ") {
						t.Fatalf("next reply %q", got)
					}
				})
			}
			// NOTFOUND keeps its space exactly.
			c := s.dial(t)
			c.request("senders", "nobody@a.example")
			if got := c.reply(); got != "NOTFOUND " {
				t.Fatalf("reply %q, want exactly %q", got, "NOTFOUND ")
			}
		})
	}
}

func TestKeepAliveAndPipelining(t *testing.T) {
	t.Parallel()
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			s := serve(t, network, Server{})
			c := s.dial(t)
			// Sequential requests on one connection.
			for range 10 {
				c.request("senders", "known@a.example")
				if got := c.reply(); !strings.HasPrefix(got, "OK ") {
					t.Fatalf("reply %q", got)
				}
			}
			// A burst written at once is answered in order.
			var burst strings.Builder
			keys := make([]string, 200)
			for i := range keys {
				keys[i] = "unknown@a.example"
				if i%3 == 0 {
					keys[i] = "known@a.example"
				}
				req := "senders " + keys[i]
				fmt.Fprintf(&burst, "%d:%s,", len(req), req)
			}
			c.send(burst.String())
			for i, k := range keys {
				want := "NOTFOUND "
				if k == "known@a.example" {
					want = "OK lmtp:unix:/run/postern/lmtp.sock"
				}
				if got := c.reply(); got != want {
					t.Fatalf("reply %d = %q, want %q", i, got, want)
				}
			}
		})
	}
}

func TestMalformedRequestsGetPermAndClose(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		input string
		want  string
	}{
		{"non-digit length", "x:senders a@b,", "PERM malformed netstring"},
		{"missing comma", "5:abcde;", "PERM malformed netstring"},
		{"no length", ":abc,", "PERM malformed netstring"},
		{"oversize", "10001:", "PERM netstring too long"},
		{"absurd length", "99999999999999999999:", "PERM netstring too long"},
		{"http instead", "GET / HTTP/1.1\r\n\r\n", "PERM malformed netstring"},
	}
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			s := serve(t, network, Server{})
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					c := s.dial(t)
					c.send(tc.input)
					if got := c.reply(); !strings.HasPrefix(got, tc.want) {
						t.Fatalf("reply %q, want prefix %q", got, tc.want)
					}
					c.expectClosed()
				})
			}
			if n := s.lookup.calls.Load(); n != 0 {
				t.Fatalf("malformed input reached Lookup %d times", n)
			}
		})
	}
}

func TestMaxRequestIsConfigurable(t *testing.T) {
	t.Parallel()
	s := serve(t, "tcp", Server{MaxRequest: 10})
	c := s.dial(t)
	c.request("senders", "known@a.example")
	if got := c.reply(); !strings.HasPrefix(got, "PERM netstring too long") {
		t.Fatalf("reply %q", got)
	}
	c.expectClosed()
}

func TestClientDisconnectsMidNetstring(t *testing.T) {
	t.Parallel()
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			s := serve(t, network, Server{})
			for _, partial := range []string{"2", "23:", "23:senders kn", "23:senders known@a.example"} {
				c := s.dial(t)
				c.send(partial)
				c.nc.Close()
			}
			// The server is unharmed and Lookup never saw a partial request.
			c := s.dial(t)
			c.request("senders", "known@a.example")
			if got := c.reply(); !strings.HasPrefix(got, "OK ") {
				t.Fatalf("reply %q", got)
			}
			if n := s.lookup.calls.Load(); n != 1 {
				t.Fatalf("Lookup called %d times, want 1", n)
			}
		})
	}
}

func TestIdleConnectionIsClosed(t *testing.T) {
	t.Parallel()
	s := serve(t, "unix", Server{IdleTimeout: 20 * time.Millisecond})
	c := s.dial(t)
	c.expectClosed()
}

func TestShutdownFinishesTheReplyInProgress(t *testing.T) {
	t.Parallel()
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			s := serve(t, network, Server{})
			s.lookup.started = make(chan string, 10)
			idle := s.dial(t)
			idle.request("senders", "nobody@a.example")
			<-s.lookup.started
			if got := idle.reply(); got != "NOTFOUND " {
				t.Fatalf("reply %q", got)
			}
			busy := s.dial(t)
			busy.request("senders", "block@a.example")
			<-s.lookup.started

			s.cancel()
			idle.expectClosed()
			close(s.lookup.release)
			if got := busy.reply(); got != "OK released" {
				t.Fatalf("the reply in progress was lost: %q", got)
			}
			busy.expectClosed()
			if err := <-s.done; err != nil {
				t.Fatalf("Serve = %v", err)
			}
			s.done <- nil // for the cleanup
			if _, err := net.Dial(network, s.addr); err == nil {
				t.Fatal("still accepting after shutdown")
			}
		})
	}
}

// flakyListener fails every accept some times, as a process out of file descriptors does,
// before it accepts.
type flakyListener struct {
	net.Listener
	failEach int
	failed   atomic.Int64
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if n := l.failed.Add(1); n <= int64(l.failEach) {
		return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	l.failed.Store(0)
	return l.Listener.Accept()
}

// Running out of file descriptors stops no lookup server: Serve waits and accepts again, and the
// connections it serves meanwhile go on.
func TestServeSurvivesFailedAccepts(t *testing.T) {
	t.Parallel()
	for _, network := range networks {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			var l net.Listener
			var err error
			if network == "unix" {
				l, err = net.Listen("unix", filepath.Join(t.TempDir(), "sm.sock"))
			} else {
				l, err = net.Listen("tcp", "127.0.0.1:0")
			}
			if err != nil {
				t.Fatal(err)
			}
			s := serveOn(t, &flakyListener{Listener: l, failEach: 4}, Server{})
			first := s.dial(t)
			first.request("senders", "known@a.example")
			if got := first.reply(); !strings.HasPrefix(got, "OK ") {
				t.Fatalf("reply %q", got)
			}
			// Accepting has failed again since; both connections are served.
			c := s.dial(t)
			c.request("senders", "known@a.example")
			if got := c.reply(); !strings.HasPrefix(got, "OK ") {
				t.Fatalf("after failed accepts: reply %q", got)
			}
			first.request("senders", "known@a.example")
			if got := first.reply(); !strings.HasPrefix(got, "OK ") {
				t.Fatalf("on the connection open before: reply %q", got)
			}
			select {
			case err := <-s.done:
				t.Fatalf("Serve returned: %v", err)
			default:
			}
		})
	}
}

func TestServeWithoutLookup(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var s Server
	if err := s.Serve(t.Context(), l); err == nil {
		t.Fatal("Serve without Lookup succeeded")
	}
}

type fakeResolver map[string]bool

func (f fakeResolver) Lookup(_ context.Context, sender string) (project.Project, bool, error) {
	if sender == "broken@a.example" {
		return project.Project{}, false, errors.New("projects are unavailable")
	}
	return project.Project{Name: "p"}, f[sender], nil
}

func TestSenders(t *testing.T) {
	t.Parallel()
	m := Senders{Resolver: fakeResolver{"known@a.example": true}, Transport: "lmtp:unix:/run/postern/lmtp.sock"}
	tests := []struct {
		name      string
		mapName   string
		key       string
		value     string
		found     bool
		unknown   bool
		temporary bool
	}{
		{"served sender", "senders", "known@a.example", "lmtp:unix:/run/postern/lmtp.sock", true, false, false},
		{"other sender", "senders", "other@a.example", "", false, false, false},
		{"unknown map", "aliases", "known@a.example", "", false, true, false},
		{"store down", "senders", "broken@a.example", "", false, false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v, found, err := m.Lookup(t.Context(), tc.mapName, tc.key)
			if v != tc.value || found != tc.found || errors.Is(err, ErrUnknownMap) != tc.unknown || (err != nil && !tc.unknown) != tc.temporary {
				t.Fatalf("Lookup = %q %v %v", v, found, err)
			}
		})
	}

	// Over the wire.
	s := serve(t, "unix", Server{Lookup: m.Lookup})
	c := s.dial(t)
	c.request("senders", "known@a.example")
	if got := c.reply(); got != "OK lmtp:unix:/run/postern/lmtp.sock" {
		t.Fatalf("reply %q", got)
	}
	c.request("senders", "broken@a.example")
	if got := c.reply(); !strings.HasPrefix(got, "TEMP ") {
		t.Fatalf("reply %q", got)
	}
}

func ExampleServer() {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &Server{Lookup: Senders{Resolver: fakeResolver{"noreply@client-a.example": true}, Transport: "lmtp:unix:/run/postern/lmtp.sock"}.Lookup}
	done := make(chan error)
	go func() { done <- srv.Serve(ctx, l) }()

	// What Postfix sends for `postmap -q noreply@client-a.example socketmap:inet:...:senders`.
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		panic(err)
	}
	fmt.Fprint(c, "32:senders noreply@client-a.example,31:senders other@elsewhere.example,")
	r := bufio.NewReader(c)
	for range 2 {
		reply, _ := readNetstring(r, MaxReply)
		fmt.Printf("%q\n", reply)
	}
	c.Close()
	cancel()
	<-done
	// Output:
	// "OK lmtp:unix:/run/postern/lmtp.sock"
	// "NOTFOUND "
}
