package smtpd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// FuzzMessageReader is the differential test of the DATA path Postern owns (data.go): the same
// bytes after DATA go to two go-smtp servers behind the framer, one whose session reads go-smtp's
// own reader and one whose session reads messageReader, and both must give the same message
// bytes, the same read error and the same replies on the wire.
func FuzzMessageReader(f *testing.F) {
	for _, seed := range []string{
		"Subject: x\r\n\r\nbody\r\n.\r\n",
		"..dot\r\n.x\r\n..\r\n.\r\n",
		".\r\n",
		"\r\n.\r\n",
		"a\r\r\n.\r\nb\r\n.\r\n",
		"a\n.\r\nb\r\n.\r\n",
		"a\r\n.\rX\r\n.\r\n",
		".\r.\r\n.\r\n",
		"line\r\n\r\r\n.\r\n",
		"no end",
		"no end\r\n",
		"cut\r\n.\r",
		"\n.\n.\r\n",
		strings.Repeat("x", 2500) + "\r\n.\r\n",
		strings.Repeat("y", 9000) + "\r\n.\r\n",
		strings.Repeat("0123456789\r\n", 20) + ".\r\n",
		"a\r\n.\r\nQUIT\r\n",
	} {
		f.Add([]byte(seed), uint8(0))
		f.Add([]byte(seed), uint8(17))
	}
	f.Fuzz(func(t *testing.T, body []byte, limit uint8) {
		max := int64(limit) // the server's MaxMessageBytes; 0: none
		want := runData(t, body, max, false)
		got := runData(t, body, max, true)
		if !bytes.Equal(got.msg, want.msg) {
			t.Errorf("message: got %q, want (go-smtp) %q", got.msg, want.msg)
		}
		if got.err != want.err {
			t.Errorf("read error: got %q, want (go-smtp) %q", got.err, want.err)
		}
		if got.wire != want.wire {
			t.Errorf("replies: got %q, want (go-smtp) %q", got.wire, want.wire)
		}
	})
}

// TestMessageReaderIsUsed: a message that comes with DATA is read by messageReader, never by
// go-smtp's reader beyond its final dot.
func TestMessageReaderIsUsed(t *testing.T) {
	res := runData(t, []byte(".. dotted\r\n.\r\n"), 0, true)
	if !res.own || res.msg == nil || string(res.msg) != ". dotted\r\n" {
		t.Fatalf("own reader used %v, message %q", res.own, res.msg)
	}
}

type dataResult struct {
	msg  []byte
	err  string
	wire string
	own  bool // the session read messageReader
}

// runData sends one transaction with body after DATA (then QUIT, then the end of the stream) to a
// go-smtp server behind the framer, whose session reads the message with messageReader if own,
// else with go-smtp's reader.
func runData(t *testing.T, body []byte, max int64, own bool) dataResult {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dl := newDrainListener(l, 5*time.Second)
	be := &diffBackend{own: own, max: max}
	srv := smtp.NewServer(be)
	srv.Domain = "postern.test"
	srv.MaxMessageBytes = max
	srv.MaxLineLength = 0
	srv.ReadTimeout = 5 * time.Second
	srv.WriteTimeout = 5 * time.Second
	srv.ErrorLog = nopLog{}
	go srv.Serve(dl)
	defer srv.Close()

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var wire bytes.Buffer
	read := make(chan struct{})
	go func() {
		io.Copy(&wire, c)
		close(read)
	}()
	in := append([]byte("EHLO a.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"), body...)
	in = append(in, "\r\nQUIT\r\n"...)
	c.Write(in)
	c.(*net.TCPConn).CloseWrite()
	<-read
	be.mu.Lock()
	defer be.mu.Unlock()
	return dataResult{msg: be.msg, err: be.err, wire: wire.String(), own: be.usedOwn}
}

type diffBackend struct {
	own bool
	max int64

	mu      sync.Mutex
	msg     []byte
	err     string
	usedOwn bool
}

func (b *diffBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	dc, _ := c.Conn().(*drainConn)
	return &diffSession{b: b, dc: dc}, nil
}

type diffSession struct {
	b  *diffBackend
	dc *drainConn
}

func (s *diffSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *diffSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *diffSession) Reset()                               {}
func (s *diffSession) Logout() error                        { return nil }

func (s *diffSession) Data(r io.Reader) error {
	if s.b.own {
		if mr := s.dc.messageReader(s.b.max); mr != nil {
			defer mr.Close()
			r = mr
			s.b.mu.Lock()
			s.b.usedOwn = true
			s.b.mu.Unlock()
		}
	}
	// Reads of an odd size, so that lines are split across reads.
	var msg []byte
	buf := make([]byte, 7)
	var err error
	for {
		var n int
		n, err = r.Read(buf)
		msg = append(msg, buf[:n]...)
		if err != nil {
			break
		}
	}
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.b.msg = msg
	if err == io.EOF {
		return nil
	}
	s.b.err = err.Error()
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	return fmt.Errorf("reading the message: %w", err)
}

type nopLog struct{}

func (nopLog) Printf(string, ...any) {}
func (nopLog) Println(...any)        {}
