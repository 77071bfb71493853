package sidecar

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/postern/postern/sidecar/admin"
	"github.com/postern/postern/sidecar/backoff"
	"github.com/postern/postern/sidecar/config"
)

// listen opens addr: a unix socket when it is a path (starts with '/' or "unix:"), else a
// loopback TCP address. Unix sockets get the configured group and mode so that Postfix's delivery
// agents, which run as the postfix user, can connect, and nobody else can.
func listen(addr, group string, mode fs.FileMode) (net.Listener, error) {
	path, isUnix := strings.CutPrefix(addr, "unix:")
	if !isUnix && !strings.HasPrefix(addr, "/") {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", addr, err)
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("listening on %s: only loopback addresses are allowed", addr)
		}
		return net.Listen("tcp", addr)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket directory for %s: %w", path, err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := setSocketAccess(path, group, mode); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// listenAdmin opens the listener of the server called name at addr: for the admin and sign-in
// listeners with admin.tls any TCP address (config.Validate has required TLS and a token for one
// not on loopback), for every other server what listen allows.
func listenAdmin(name, addr string, cfg *config.Config, mode fs.FileMode) (net.Listener, error) {
	if (name == "admin" || name == "signin") && cfg.Admin.TLS.On() {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listening on %s: %w", addr, err)
		}
		return l, nil
	}
	return listen(addr, cfg.Listen.SocketGroup, mode)
}

// adminTLSConfig loads admin.tls: nil when it is off.
func adminTLSConfig(cfg *config.Config, log *slog.Logger) (*tls.Config, error) {
	t := cfg.Admin.TLS
	if !t.On() || (cfg.Listen.Admin == "" && cfg.Listen.SignIn == "") {
		return nil, nil
	}
	cert, err := admin.NewCertificate(t.CertFile, t.KeyFile, log.With("component", "admin"))
	if err != nil {
		return nil, err
	}
	return cert.TLSConfig(), nil
}

// removeStaleSocket removes a socket left by a previous run, but refuses to remove anything that
// is not a socket, and refuses when another process still answers on it.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket: move it away or choose another path", path)
	}
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by another process: is another postern running?", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	return nil
}

func setSocketAccess(path, group string, mode fs.FileMode) error {
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return fmt.Errorf("socket group %q for %s: %w (set listen.socket_group to the group Postfix's delivery agents run as, usually postfix)", group, path, err)
		}
		gid, _ := strconv.Atoi(g.Gid)
		if err := os.Lchown(path, -1, gid); err != nil && !errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("setting group of %s: %w", path, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("setting mode of %s: %w", path, err)
	}
	return nil
}

// guardedListener is what every server of Postern accepts from. It caps the connections open at
// once: at the cap, Accept waits for one to close, and a new connection waits in the kernel's
// listen queue meanwhile, holding none of Postern's file descriptors. And it retries a failed
// accept (out of file descriptors, a connection aborted in the queue) after 5 ms, doubling to 1 s
// as net/http does, so that no server ever stops for it: Accept fails only once the listener is
// closed.
type guardedListener struct {
	net.Listener
	name  string
	max   int
	log   *slog.Logger
	slots chan struct{} // one per open connection, and one for an Accept under way
	done  chan struct{} // closed by Close
	once  sync.Once

	conns    atomic.Int64 // open connections
	full     atomic.Int64 // times Accept found every slot taken
	failures atomic.Int64 // failed accepts, retried
}

func guardListener(l net.Listener, name string, limit int, log *slog.Logger) *guardedListener {
	return &guardedListener{Listener: l, name: name, max: limit, log: log, slots: make(chan struct{}, limit), done: make(chan struct{})}
}

func (l *guardedListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	default:
		l.full.Add(1)
		select {
		case l.slots <- struct{}{}:
		case <-l.done:
			return nil, l.closedError()
		}
	}
	failures := 0
	for {
		nc, err := l.Listener.Accept()
		if err == nil {
			l.conns.Add(1)
			return &guardedConn{Conn: nc, l: l}, nil
		}
		if errors.Is(err, net.ErrClosed) {
			<-l.slots
			return nil, err
		}
		l.failures.Add(1)
		failures++
		delay := backoff.Accept().Delay(failures)
		l.log.Warn("accepting a connection failed; retrying", "server", l.name, "err", err, "retry_in", delay)
		select {
		case <-time.After(delay):
		case <-l.done:
			<-l.slots
			return nil, l.closedError()
		}
	}
}

func (l *guardedListener) closedError() error {
	return &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
}

func (l *guardedListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// open is the number of connections open now.
func (l *guardedListener) open() int { return int(l.conns.Load()) }

// guardedConn gives its slot back when it closes.
type guardedConn struct {
	net.Conn
	l    *guardedListener
	once sync.Once
}

func (c *guardedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.conns.Add(-1)
		<-c.l.slots
	})
	return err
}

// raiseFileLimit raises the soft limit of open files to the hard limit (Go's runtime does so
// itself on Linux; this covers the rest and says what the limit is), and warns when it is below
// need.
func raiseFileLimit(log *slog.Logger, need uint64) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("reading the limit of open files", "err", err)
		return
	}
	if lim.Cur < lim.Max {
		raised := lim
		raised.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			log.Warn("raising the limit of open files to the hard limit", "soft", lim.Cur, "hard", lim.Max, "err", err)
		} else {
			lim = raised
		}
	}
	log.Info("limit of open files", "soft", lim.Cur, "hard", lim.Max)
	if lim.Cur < need {
		log.Warn("the limit of open files is below what the listeners may open (listen.max_connections) with the upstream connections; raise it (LimitNOFILE= with systemd, ulimit -n) or lower the caps",
			"limit", lim.Cur, "need", need)
	}
}

// fileLimitNeeded is how many files Postern may hold open with every listener at its cap: a
// connection each, another for the upstream connection of each delivery, and some to spare (the
// store, logs, credential provider plugins).
func fileLimitNeeded(l config.Listen) uint64 {
	m := l.MaxConnections
	n := 64
	for _, s := range []struct {
		addr  string
		conns int
		per   int
	}{
		{l.LMTP, m.LMTP, 2}, {l.SMTP, m.SMTP, 2}, {l.Socketmap, m.Socketmap, 1}, {l.Milter, m.Milter, 1}, {l.Admin, m.Admin, 1}, {l.SignIn, m.Admin, 1},
	} {
		if s.addr != "" {
			n += s.conns * s.per
		}
	}
	return uint64(n)
}
