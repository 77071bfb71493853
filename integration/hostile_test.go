//go:build integration

package integration

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/integration/harness"
)

// Hostile input on a running Postern: every listener (socketmap, LMTP, SMTP, milter, admin HTTP
// and the sign-in pages on it) gets malformed, oversized, byte-at-a-time and abruptly cut input,
// and a flood of connections. Each must answer with a protocol error or a close within its
// configured deadline (short ones here), never crash Postern, never relay a message cut short,
// and turn a flood into waiting or refused connections, not into exhausted descriptors. After
// each attack Postern still serves.

// hostileDeadline is the command, data and packet timeout the test configures.
const hostileDeadline = 2 * time.Second

// hostileConn dials addr (a unix socket path or host:port).
func hostileConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("connecting to %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reads from c until Postern closes it, and fails t unless that happens within d.
// It returns everything read.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) string {
	t.Helper()
	began := time.Now()
	c.SetReadDeadline(began.Add(d))
	b, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("postern did not close the connection within %s (read %q)", d, b)
	}
	return string(b)
}

// slowly writes s one byte every gap until the write fails, and returns how many were written.
func slowly(c net.Conn, s string, gap time.Duration) int {
	for i := 0; i < len(s); i++ {
		if _, err := c.Write([]byte{s[i]}); err != nil {
			return i
		}
		time.Sleep(gap)
	}
	return len(s)
}

// posternPID finds the process running Postern's config.
func posternPID(t *testing.T, p *harness.Postern) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, d := range entries {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmd), "serve\x00--config\x00"+p.Config) {
			return pid
		}
	}
	t.Fatalf("no process serves %s", p.Config)
	return 0
}

// openFiles counts the descriptors of pid.
func openFiles(pid int) int {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(fds)
}

func TestHostileInput(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	conf := fmt.Sprintf(`smtpd: {command_timeout: %[1]s, data_timeout: %[1]s}
milter: {idle_timeout: 3s, packet_timeout: %[1]s}`, hostileDeadline)
	e := startEnv(t, harness.Options{PosternConfig: conf, Milter: true, LogLevel: "info"})
	// The generated config has its own listen section: cap each listener's connections there.
	if err := e.Postern.Stop(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(e.Postern.Config)
	if err != nil {
		t.Fatal(err)
	}
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	smtpAddr := fmt.Sprintf("127.0.0.1:%d", port)
	capped := strings.Replace(string(raw), "\nlisten:\n", "\nlisten:\n  smtp: "+smtpAddr+
		"\n  max_connections: {lmtp: 5, smtp: 5, socketmap: 5, milter: 5, admin: 5}\n", 1)
	if capped == string(raw) {
		t.Fatalf("no listen section in postern's config:\n%s", raw)
	}
	if err := os.WriteFile(e.Postern.Config, []byte(capped), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.Postern.Start(ctx); err != nil {
		t.Fatal(err)
	}
	a := e.Upstream.Org("client-a")
	user, _ := a.User()
	addProjects(t, ctx, e, harness.ProjectOptions{Name: "client-a", Org: "client-a"})
	pid := posternPID(t, e.Postern)

	// stillServes checks, after each attack, that Postern runs and routes and relays mail.
	stillServes := func(t *testing.T) {
		t.Helper()
		if exited, err := e.Postern.Exited(); exited {
			t.Fatalf("postern exited: %v\n%s", err, e.Postern.Log())
		}
		if r, err := e.Postern.Lookup(ctx, user); err != nil || !strings.HasPrefix(r, "OK ") {
			t.Errorf("after the attack the socketmap answers %q, %v", r, err)
		}
		m := &harness.Mail{From: user, To: []string{"alice@dest.test"}}
		submit(t, ctx, e, m)
		if _, err := e.Upstream.WaitForMessage(ctx, "alice@dest.test", harness.WithID(m.ID)); err != nil {
			t.Errorf("after the attack a message did not arrive: %v", err)
		}
	}

	t.Run("socketmap", func(t *testing.T) {
		sock := e.Postern.SocketmapSocket
		// Broken framing: a PERM reply when one can be framed, and a close.
		for name, input := range map[string]string{
			"not a netstring":  "hello world\n",
			"no comma":         "5:hellox",
			"oversized length": "99999999999:",
			"oversized":        "20000:" + strings.Repeat("a", 20000) + ",",
		} {
			c := hostileConn(t, sock)
			c.Write([]byte(input))
			got := closedWithin(t, c, 5*time.Second)
			if got != "" && !strings.Contains(got, "PERM") {
				t.Errorf("%s: answered %q, want a PERM reply or a close", name, got)
			}
		}
		// A well-framed request that means nothing: a PERM reply, and the session goes on.
		for name, input := range map[string]string{
			"no space": "7:senders,",
			"binary":   "4:\x00\xff\x00\xff,",
		} {
			c := hostileConn(t, sock)
			c.Write([]byte(input))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := harness.ReadNetstring(bufio.NewReader(c))
			if err != nil || !strings.HasPrefix(got, "PERM") {
				t.Errorf("%s: answered %q, %v; want a PERM reply", name, got, err)
			}
		}
		// Cut in the middle of a request: nothing to answer, the connection is dropped.
		c := hostileConn(t, sock)
		c.Write([]byte("30:senders alice@"))
		c.Close()
		stillServes(t)
	})

	// LMTP on its unix socket and SMTP on loopback: the same server, two framings of its replies.
	for _, proto := range []string{"lmtp", "smtp"} {
		t.Run(proto, func(t *testing.T) {
			sock, hello := e.Postern.LMTPSocket, "LHLO"
			if proto == "smtp" {
				sock, hello = smtpAddr, "EHLO"
			}
			greet := func(c net.Conn) *bufio.Reader {
				r := bufio.NewReader(c)
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "220") {
					t.Fatalf("greeting %q, %v", l, err)
				}
				return r
			}
			reply := func(c net.Conn, r *bufio.Reader) string {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				var all string
				for {
					l, err := r.ReadString('\n')
					all += l
					if err != nil || len(l) < 4 || l[3] != '-' {
						return all
					}
				}
			}

			// Malformed commands get 5xx syntax errors, and the session goes on.
			c := hostileConn(t, sock)
			r := greet(c)
			for _, cmd := range []string{"\x00\xff\xfe garbage", "MAIL FROM:<<<>>>", "RCPT TO:", hello} {
				fmt.Fprintf(c, "%s\r\n", cmd)
				if got := reply(c, r); !strings.HasPrefix(got, "5") {
					t.Errorf("%q answered %q, want a 5xx", cmd, got)
				}
			}
			c.Close()

			// An oversized command line: an error and a close, not a read without end.
			c = hostileConn(t, sock)
			greet(c)
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte(hello + " " + strings.Repeat("x", 1<<20) + "\r\n"))
			closedWithin(t, c, 10*time.Second)

			// A command sent a byte at a time, slower than command_timeout allows: 421 and a close.
			c = hostileConn(t, sock)
			greet(c)
			began := time.Now()
			go slowly(c, hello+" slow.test\r\n", 400*time.Millisecond)
			got := closedWithin(t, c, hostileDeadline+5*time.Second)
			t.Logf("byte-at-a-time command: %q after %s", strings.TrimSpace(got), time.Since(began).Round(100*time.Millisecond))
			if !strings.HasPrefix(got, "421") {
				t.Errorf("byte-at-a-time command answered %q, want 421", got)
			}

			// A message cut in the middle of DATA, by a close and by a stall past data_timeout: never
			// relayed.
			for _, how := range []string{"close", "stall"} {
				id := "hostile-cut-" + proto + "-" + how
				c = hostileConn(t, sock)
				r = greet(c)
				for _, cmd := range []string{hello + " hostile.test", "MAIL FROM:<" + user + ">", "RCPT TO:<alice@dest.test>", "DATA"} {
					fmt.Fprintf(c, "%s\r\n", cmd)
					if got := reply(c, r); !strings.HasPrefix(got, "2") && !strings.HasPrefix(got, "3") {
						t.Fatalf("%s answered %q", cmd, got)
					}
				}
				fmt.Fprintf(c, "From: %s\r\nTo: alice@dest.test\r\nMessage-ID: <%s@hostile.test>\r\n%s: %s\r\nSubject: cut\r\n\r\n%s",
					user, id, harness.TestIDHeader, id, strings.Repeat("body line\r\n", 1000))
				if how == "close" {
					c.Close()
				} else {
					// A 4xx (for LMTP, per recipient: the upstream transaction abandoned), then 421.
					got := closedWithin(t, c, hostileDeadline+5*time.Second)
					if !strings.HasPrefix(got, "4") || !strings.Contains(got, "421 ") {
						t.Errorf("a stalled DATA answered %q, want 4xx and 421", got)
					}
				}
			}
			stillServes(t) // the next message arrives; the cut ones must not have
			msgs, err := e.Upstream.Mailbox("alice@dest.test").Messages()
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range msgs {
				if strings.HasPrefix(m.ID(), "hostile-cut-") {
					t.Errorf("a message cut short was relayed: %s", m.ID())
				}
			}
		})
	}

	t.Run("milter", func(t *testing.T) {
		sock := e.Postern.MilterSocket
		packet := func(cmd byte, data string) []byte {
			b := make([]byte, 5, 5+len(data))
			binary.BigEndian.PutUint32(b, uint32(1+len(data)))
			b[4] = cmd
			return append(b, data...)
		}
		for name, input := range map[string][]byte{
			"oversized length": {0x7f, 0xff, 0xff, 0xff, 'O'},
			"zero length":      {0, 0, 0, 0},
			"unknown command":  packet('!', "junk"),
			"bad negotiation":  packet('O', "\x00"),
			"body before all":  packet('B', strings.Repeat("x", 100)),
		} {
			c := hostileConn(t, sock)
			c.Write(input)
			closedWithin(t, c, hostileDeadline+5*time.Second)
			_ = name
		}
		// A packet cut short, and one sent a byte at a time past packet_timeout: closed.
		c := hostileConn(t, sock)
		c.Write(packet('O', "\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff")[:7])
		closedWithin(t, c, hostileDeadline+5*time.Second)
		c = hostileConn(t, sock)
		go slowly(c, string(packet('O', "\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff")), 400*time.Millisecond)
		closedWithin(t, c, hostileDeadline+5*time.Second)
		stillServes(t)
	})

	t.Run("admin and sign-in", func(t *testing.T) {
		addr := e.Postern.AdminAddr
		raw := func(req string) string {
			c := hostileConn(t, addr)
			c.Write([]byte(req))
			return closedWithin(t, c, 15*time.Second)
		}
		status := func(resp string) int {
			f := strings.Fields(resp)
			if len(f) < 2 {
				return 0
			}
			n, _ := strconv.Atoi(f[1])
			return n
		}
		for name, tc := range map[string]struct {
			req  string
			want int
		}{
			"garbage":            {"\x00\xff garbage\r\n\r\n", 400},
			"bad version":        {"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505},
			"oversized header":   {"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("a", 1<<20) + "\r\n\r\n", 431},
			"sign-in link junk":  {"GET /signin?l=%00%ff" + strings.Repeat("A", 4000) + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400},
			"callback junk":      {"GET /signin/callback?state=%ff%00&code=" + strings.Repeat("x", 5000) + "&error=%0d%0a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400},
			"callback no params": {"GET /signin/callback HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400},
			"huge form":          {"POST /signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 2000002\r\nConnection: close\r\n\r\nl=" + strings.Repeat("A", 2000000), 400},
		} {
			got := status(raw(tc.req))
			if got >= 500 && got != 505 {
				t.Errorf("%s: status %d, a server error", name, got)
			} else if got/100 != tc.want/100 {
				t.Errorf("%s: status %d, want %dxx", name, got, tc.want/100)
			}
		}
		// A header sent a byte at a time: the server's header deadline ends it.
		c := hostileConn(t, addr)
		began := time.Now()
		go slowly(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "+strings.Repeat("s", 200)+"\r\n\r\n", 200*time.Millisecond)
		closedWithin(t, c, 20*time.Second)
		t.Logf("byte-at-a-time header closed after %s", time.Since(began).Round(100*time.Millisecond))
		// A request cut short.
		c = hostileConn(t, addr)
		c.Write([]byte("GET /signin/callback?state=abc HTTP/1.1\r\nHo"))
		c.Close()
		if resp, err := http.Get("http://" + addr + "/healthz"); err != nil || resp.StatusCode != 200 {
			t.Errorf("/healthz after the attacks: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
		stillServes(t)
	})

	t.Run("flood", func(t *testing.T) {
		before := openFiles(pid)
		var conns []net.Conn
		for _, addr := range []string{e.Postern.LMTPSocket, smtpAddr, e.Postern.SocketmapSocket, e.Postern.MilterSocket, e.Postern.AdminAddr} {
			for i := 0; i < 100; i++ {
				network := "tcp"
				if strings.HasPrefix(addr, "/") {
					network = "unix"
				}
				c, err := net.DialTimeout(network, addr, 200*time.Millisecond)
				if err != nil {
					continue // refused or the listen queue is full: what a flood should get
				}
				conns = append(conns, c)
			}
		}
		time.Sleep(time.Second)
		during := openFiles(pid)
		// The caps (5 per listener, 5 listeners) bound what Postern holds; the rest wait in the
		// kernel's listen queues or were refused.
		t.Logf("%d connections open against postern; its descriptors: %d before, %d during", len(conns), before, during)
		if during-before > 5*5+10 {
			t.Errorf("postern holds %d more descriptors during the flood, more than its caps allow", during-before)
		}
		// An LMTP connection beyond the cap is not greeted while the flood holds the slots.
		for _, c := range conns {
			c.Close()
		}
		stillServes(t)
	})
}
