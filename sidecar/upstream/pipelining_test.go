package upstream_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
)

// scripted is an upstream on loopback that speaks plain-text SMTP from a script and records which
// commands arrived together. Without PIPELINING offered it fails if a command arrives while an
// earlier one is unanswered.
type scripted struct {
	t          *testing.T
	ln         net.Listener
	pipelining bool
	// replies answers one transaction's commands (MAIL, RCPTs, DATA), given their lines; fewer
	// replies than commands make the upstream hang up after them.
	replies func(cmds []string) []string
	done    chan error
	bodies  chan string   // each message, its lines ending in LF
	batches chan []string // the commands of a transaction that arrived before each answer
}

func startScripted(t *testing.T, pipelining bool, replies func(cmds []string) []string) *scripted {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scripted{t: t, ln: ln, pipelining: pipelining, replies: replies, done: make(chan error, 1), bodies: make(chan string, 10), batches: make(chan []string, 100)}
	go func() { s.done <- s.serve() }()
	t.Cleanup(func() {
		ln.Close()
		select {
		case err := <-s.done:
			if err != nil {
				t.Errorf("upstream: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("upstream did not finish")
		}
	})
	return s
}

// dial opens a connection to s without AUTH, released at the end of the test.
func (s *scripted) dial(ctx context.Context) *upstream.Conn {
	s.t.Helper()
	pools, _ := newPools(s.t, upstream.Options{})
	c, err := pools.Acquire(ctx, s.project(), upstream.Auth{})
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(c.Release)
	return c
}

func (s *scripted) project() project.Project {
	port := s.ln.Addr().(*net.TCPAddr).Port
	return project.Project{Name: "scripted", Enabled: true, Senders: []string{from},
		Upstream: project.Upstream{Host: "127.0.0.1", Port: port, TLS: project.TLSNone}}
}

func (s *scripted) serve() error {
	nc, err := s.ln.Accept()
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(nc)
	tp := textproto.NewReader(br)
	reply := func(lines ...string) error {
		_, err := fmt.Fprint(nc, strings.Join(lines, "\r\n")+"\r\n")
		return err
	}
	// readCmd reads one command; without PIPELINING nothing may follow it yet.
	readCmd := func() (string, error) {
		line, err := tp.ReadLine()
		if err == nil && !s.pipelining && br.Buffered() > 0 {
			err = fmt.Errorf("%q arrived with more behind it from a client told there is no PIPELINING", line)
		}
		return line, err
	}
	if err := reply("220 scripted ESMTP"); err != nil {
		return err
	}
	for {
		line, err := readCmd()
		if err != nil {
			return fmt.Errorf("reading a command: %w", err)
		}
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		switch verb {
		case "EHLO":
			ext := []string{"250-scripted", "250-8BITMIME"}
			if s.pipelining {
				ext = append(ext, "250-PIPELINING")
			}
			reply(append(ext, "250 SIZE")...)
		case "RSET", "NOOP":
			reply("250 2.0.0 ok")
		case "QUIT":
			reply("221 2.0.0 bye")
			return nil
		case "MAIL":
			// A transaction: commands are answered whenever nothing more has arrived (with
			// PIPELINING, MAIL to DATA come as one batch), until DATA or a refused MAIL.
			cmds, answered := []string{line}, 0
			for {
				isData := strings.EqualFold(cmds[len(cmds)-1], "DATA")
				if isData || br.Buffered() == 0 {
					out := s.replies(cmds)
					if len(out) < len(cmds) { // the script hangs up after these replies
						return reply(out[answered:]...)
					}
					if err := reply(out[answered:]...); err != nil {
						return err
					}
					s.batches <- cmds[answered:]
					answered = len(cmds)
					if !strings.HasPrefix(out[0], "2") {
						break // MAIL refused: no transaction
					}
					if isData {
						if strings.HasPrefix(out[len(out)-1], "354") {
							b, err := tp.ReadDotBytes()
							if err != nil {
								return fmt.Errorf("reading the message: %w", err)
							}
							s.bodies <- string(b)
							if err := reply("250 2.0.0 Ok: queued as X42"); err != nil {
								return err
							}
						}
						break
					}
				}
				next, err := readCmd()
				if err != nil {
					return fmt.Errorf("reading the transaction after %q: %w", cmds, err)
				}
				cmds = append(cmds, next)
			}
		case "RCPT", "DATA":
			reply("503 5.5.1 MAIL first")
		default:
			return fmt.Errorf("unexpected %q", line)
		}
	}
}

// acceptAllBut answers MAIL with 250, RCPT with 250 except for refused addresses, and DATA
// with 354 or, when no recipient was accepted, 554.
func acceptAllBut(refused ...string) func([]string) []string {
	return func(cmds []string) []string {
		out, ok := []string{"250 2.1.0 ok"}, false
		for _, c := range cmds[1:] {
			switch r := strings.TrimSuffix(strings.TrimPrefix(c, "RCPT TO:<"), ">"); {
			case strings.EqualFold(c, "DATA") && ok:
				out = append(out, "354 go ahead")
			case strings.EqualFold(c, "DATA"):
				out = append(out, "554 5.5.1 no valid recipients")
			case contains(refused, r):
				out = append(out, "550 5.1.1 <"+r+"> unknown")
			default:
				out, ok = append(out, "250 2.1.5 ok"), true
			}
		}
		return out
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestSendPipelinesTheTransaction(t *testing.T) {
	t.Parallel()
	for _, pipelining := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipelining=%v", pipelining), func(t *testing.T) {
			t.Parallel()
			srv := startScripted(t, pipelining, acceptAllBut("gone@dest.example"))
			ctx := ctxFor(t)
			c := srv.dial(ctx)
			for i := range 2 { // twice over one connection
				if err := c.Mail(ctx, from, nil); err != nil {
					t.Fatal(err)
				}
				refused, err := c.Send(ctx, []string{"a@dest.example", "gone@dest.example", "b@dest.example"}, strings.NewReader(body))
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				if len(refused) != 3 || refused[0] != nil || refused[2] != nil || refused[1] == nil || refused[1].Code != 550 {
					t.Fatalf("message %d: refused = %v, want only gone@ with 550", i, refused)
				}
				if got := <-srv.bodies; got != lf(body) {
					t.Errorf("message %d: upstream got %q", i, got)
				}
				want := 1
				if !pipelining {
					want = 5 // MAIL, three RCPTs, DATA
				}
				if n := batches(srv); n != want {
					t.Errorf("message %d: the transaction reached the upstream in %d batches, want %d", i, n, want)
				}
				if !strings.Contains(c.LastReply(), "X42") {
					t.Errorf("LastReply = %q", c.LastReply())
				}
			}
		})
	}
}

func TestSendWithNoRecipientAccepted(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	tests := []struct {
		name    string
		replies func([]string) []string
	}{
		{"DATA refused", acceptAllBut("gone@dest.example")},
		// Some servers say 354 anyway: the client ends the empty message at once.
		{"DATA accepted anyway", func(cmds []string) []string {
			return []string{"250 ok", "550 5.1.1 unknown", "354 go ahead"}[:len(cmds)]
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := startScripted(t, true, tt.replies)
			c := srv.dial(ctx)
			if err := c.Mail(ctx, from, nil); err != nil {
				t.Fatal(err)
			}
			refused, err := c.Send(ctx, []string{"gone@dest.example"}, strings.NewReader(body))
			if len(refused) != 1 || refused[0] == nil || refused[0].Code != 550 {
				t.Fatalf("refused = %v, want a 550", refused)
			}
			if e := asError(t, err); e.Code/100 != 5 {
				t.Errorf("err = %v, want the message refused", err)
			}
			select {
			case b := <-srv.bodies:
				if b != "" {
					t.Errorf("the upstream got a message %q; want at most an empty one", b)
				}
			default:
			}
		})
	}
}

func TestPipelinedMailRefused(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	first := true
	srv := startScripted(t, true, func(cmds []string) []string {
		if first {
			first = false
			return []string{"550 5.7.60 SendAsDenied", "503 5.5.1 MAIL first"}[:len(cmds)]
		}
		return acceptAllBut()(cmds)
	})
	c := srv.dial(ctx)
	if err := c.Mail(ctx, from, nil); err != nil {
		t.Fatalf("Mail = %v; with PIPELINING it goes out with the recipients", err)
	}
	err := c.Rcpt(ctx, "a@dest.example", nil)
	if e := asError(t, err); e.Stage != upstream.StageMail || e.Code != 550 || e.Enhanced[2] != 60 {
		t.Fatalf("Rcpt = %#v, want the refusal of MAIL", e)
	}
	// The rest of the transaction gets the same answer, without asking the upstream again.
	if err := c.Data(ctx, strings.NewReader(body)); err == nil || asError(t, err).Code != 550 {
		t.Fatalf("Data = %v, want the refusal of MAIL", err)
	}
	// The connection goes on with the next transaction.
	if err := c.Mail(ctx, from, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(ctx, "a@dest.example", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Data(ctx, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if got := <-srv.bodies; got != lf(body) {
		t.Errorf("upstream got %q", got)
	}
}

func lf(s string) string { return strings.ReplaceAll(s, "\r\n", "\n") }

// batches counts the batches recorded since the last call.
func batches(s *scripted) int {
	n := 0
	for {
		select {
		case <-s.batches:
			n++
		default:
			return n
		}
	}
}

func TestPipelinedMailRefusedAndHungUp(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t)
	srv := startScripted(t, true, func(cmds []string) []string { return []string{"554 5.7.1 go away"} })
	c := srv.dial(ctx)
	if err := c.Mail(ctx, from, nil); err != nil {
		t.Fatal(err)
	}
	refused, err := c.Send(ctx, []string{"a@dest.example", "b@dest.example"}, strings.NewReader(body))
	// The refusal of MAIL is the answer, not the lost connection after it.
	if e := asError(t, err); e.Stage != upstream.StageMail || e.Code != 554 || refused != nil {
		t.Fatalf("Send = %v, %#v; want the refusal of MAIL for the whole message", refused, e)
	}
}
