package milter

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/sidecar/project"
)

func packet(code byte, data string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(1+len(data)))
	return append(append(b, code), data...)
}

// postfixStream is what Postfix 3.7 sent for one message, as recorded on a real instance.
func postfixStream() []byte {
	var s []byte
	for _, p := range [][]byte{
		packet('O', "\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff"),
		packet('D', "M{mail_addr}\x00noreply@client-a.example\x00{mail_host}\x00client-a.example\x00"),
		packet('M', "<noreply@client-a.example>\x00size=194\x00SIZE=300\x00"),
		packet('D', "R{rcpt_addr}\x00x@dest.example\x00"),
		packet('R', "<x@dest.example>\x00"),
		packet('L', "From\x00noreply@client-a.example\x00"),
		packet('N', ""),
		packet('B', strings.Repeat("x", 300)),
		packet('E', ""),
		packet('A', ""),
		packet('M', "<other@client-a.example>\x00"),
		packet('Q', ""),
	} {
		s = append(s, p...)
	}
	return s
}

// chunkConn is a network connection whose reads return at most chunk bytes of r.
type chunkConn struct {
	net.Conn // nil: only the methods below are used
	r        []byte
	chunk    int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.r) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk)], c.r)
	c.r = c.r[n:]
	return n, nil
}

func (*chunkConn) SetReadDeadline(time.Time) error { return nil }
func (*chunkConn) RemoteAddr() net.Addr            { return nil }

// readerRun passes stream through a connection's packet reader, in network reads of at most chunk
// bytes, and returns the packets go-milter would read and the MAIL parameters the session got.
func readerRun(t testing.TB, stream []byte, chunk int) (packets []string, mailArgs [][]string) {
	s, err := New(Options{Resolver: nopResolver{}, Domains: nopResolver{}, IsNoProject: func(error) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	c := s.newConn(context.Background(), &chunkConn{r: stream, chunk: chunk})
	for {
		if err := c.readPacket(); err != nil {
			return packets, mailArgs
		}
		for _, p := range c.out {
			packets = append(packets, string(p))
			if len(p) > 4 && p[4] == 'M' {
				mailArgs = append(mailArgs, c.sess.mailArgs)
			}
		}
		c.out = nil
	}
}

func TestPacketReaderSeesMailParameters(t *testing.T) {
	t.Parallel()
	want := [][]string{{"<noreply@client-a.example>", "size=194", "SIZE=300"}, {"<other@client-a.example>"}}
	for _, chunk := range []int{1, 2, 3, 5, 7, 64, 1 << 20} {
		_, got := readerRun(t, postfixStream(), chunk)
		if !slices.EqualFunc(got, want, slices.Equal) {
			t.Errorf("writes of %d bytes: got %q, want %q", chunk, got, want)
		}
	}
}

// go-milter clears its header map only on SMFIC_ABORT: the reader puts one before every message,
// before the macros of its MAIL command or, without them, before the command itself.
func TestPacketReaderAbortsBeforeEveryMessage(t *testing.T) {
	t.Parallel()
	got, _ := readerRun(t, postfixStream(), 1<<20)
	var codes []byte
	for _, p := range got {
		codes = append(codes, p[4])
	}
	if want := "OADMDRLNBEAAMQ"; string(codes) != want {
		t.Errorf("go-milter reads packets %q, want %q", codes, want)
	}
	for _, p := range got {
		if p[4] == 'A' && p != string(abortPacket) {
			t.Errorf("abort packet %q", p)
		}
	}
}

func FuzzPacketReader(f *testing.F) {
	f.Add(postfixStream(), uint8(3))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1, 'M'}, uint8(1))
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8) {
		// However the network splits the stream, go-milter reads the same packets.
		whole, wholeArgs := readerRun(t, stream, len(stream)+1)
		split, splitArgs := readerRun(t, stream, int(chunk)+1)
		if !slices.Equal(whole, split) || !slices.EqualFunc(wholeArgs, splitArgs, slices.Equal) {
			t.Fatalf("whole: %q %q, in writes of %d: %q %q", whole, wholeArgs, int(chunk)+1, split, splitArgs)
		}
		for _, p := range whole {
			if len(p) > 4+maxPacketBytes {
				t.Fatalf("a packet of %d bytes passed", len(p))
			}
		}
	})
}

func TestSizeParam(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		sender string
		args   []string
		want   int64
		wantOK bool
	}{
		{"upper case", "a@b.example", []string{"<a@b.example>", "BODY=8BITMIME", "SIZE=1234"}, 1234, true},
		{"lower case", "a@b.example", []string{"<a@b.example>", "size=99"}, 99, true},
		{"two, the larger counts", "a@b.example", []string{"<a@b.example>", "size=16", "SIZE=999999"}, 999999, true},
		{"none", "a@b.example", []string{"<a@b.example>", "BODY=7BIT"}, 0, false},
		{"not a number", "a@b.example", []string{"<a@b.example>", "SIZE=lots"}, 0, false},
		{"another packet's", "a@b.example", []string{"<c@d.example>", "SIZE=5"}, 0, false},
		{"null sender", "", []string{"<>", "SIZE=5"}, 5, true},
		{"no packet seen", "a@b.example", nil, 0, false},
	}
	for _, c := range cases {
		got, ok := sizeParam(c.sender, c.args)
		if got != c.want || ok != c.wantOK {
			t.Errorf("%s: got %d %v, want %d %v", c.name, got, ok, c.want, c.wantOK)
		}
	}
}

func TestLimitsFor(t *testing.T) {
	t.Parallel()
	s, err := New(Options{Resolver: nopResolver{}, Domains: nopResolver{}, IsNoProject: func(error) bool { return false }})
	if err != nil {
		t.Fatal(err)
	}
	none, err := New(Options{Resolver: nopResolver{}, Domains: nopResolver{}, IsNoProject: func(error) bool { return false }, HostLimits: []HostLimit{}})
	if err != nil {
		t.Fatal(err)
	}
	const mib = 1 << 20
	cases := []struct {
		name      string
		srv       *Server
		host      string
		limits    project.Limits
		wantRcpt  int
		wantBytes int64
	}{
		{"exchange", s, "smtp.office365.com", project.Limits{}, 500, 35 * mib},
		{"exchange, upper case and trailing dot", s, "SMTP.Office365.COM.", project.Limits{}, 500, 35 * mib},
		{"outlook.com", s, "smtp-mail.outlook.com", project.Limits{}, 500, 35 * mib},
		{"gmail", s, "smtp.gmail.com", project.Limits{}, 100, 35 * mib},
		{"the domain itself is not *.domain", s, "office365.com", project.Limits{}, 0, 0},
		{"look-alike", s, "smtp.office365.com.evil.example", project.Limits{}, 0, 0},
		{"project limits win", s, "smtp.gmail.com", project.Limits{MaxRecipients: 10, MaxMessageBytes: 5}, 10, 5},
		{"project sets one, default gives the other", s, "smtp.gmail.com", project.Limits{MaxRecipients: 10}, 10, 35 * mib},
		{"unknown host", s, "mail.example.net", project.Limits{}, 0, 0},
		{"defaults turned off", none, "smtp.gmail.com", project.Limits{}, 0, 0},
	}
	for _, c := range cases {
		r, b := c.srv.limitsFor(project.Project{Upstream: project.Upstream{Host: c.host}, Limits: c.limits})
		if r != c.wantRcpt || b != c.wantBytes {
			t.Errorf("%s: got %d recipients %d bytes, want %d %d", c.name, r, b, c.wantRcpt, c.wantBytes)
		}
	}
}

type nopResolver struct{ Resolver }

func (nopResolver) ServesDomain(string) bool { return false }

func TestReplyText(t *testing.T) {
	t.Parallel()
	r := reply(550, "5.7.60", "From <"+clean("a%b\r\nX-Evil: 1 \u00e9@x.example")+"> is not allowed")
	if r.text != "550 5.7.60 From <a%b??X-Evil: 1 ??@x.example> is not allowed" {
		t.Errorf("text = %q", r.text)
	}
	if got := string(r.response().Response().Data); got != "550 5.7.60 From <a%%b??X-Evil: 1 ??@x.example> is not allowed\x00" {
		t.Errorf("packet = %q", got)
	}
	long := reply(550, "5.7.60", strings.Repeat("x", 2000))
	if len(long.text) > 512-2 {
		t.Errorf("a reply of %d octets does not fit an SMTP line", len(long.text))
	}
}

func FuzzParseAddressList(f *testing.F) {
	for _, s := range []string{"a@b.example", "A <a@b.example>, c@d.example", "=?x-unknown?Q?z?= <a@b.example>", "undisclosed:;", "", "\n\t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		list, empty, err := parseAddressList(v)
		if empty && (err != nil || len(list) != 0) {
			t.Fatalf("empty with %d addresses and error %v", len(list), err)
		}
	})
}
