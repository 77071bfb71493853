package smtpd

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/directory"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// BenchmarkLMTPDelivery is one message through Postern's hot path as Postfix drives it: an LMTP
// transaction on a connection Postfix keeps open (MAIL, RCPT, DATA), routed through the
// directory, relayed over a pooled STARTTLS + AUTH PLAIN connection to an in-process upstream.
func BenchmarkLMTPDelivery(b *testing.B) {
	for _, size := range []int{1024, 100 * 1024} {
		b.Run(map[int]string{1024: "1KB", 100 * 1024: "100KB"}[size], func(b *testing.B) {
			up := upstreamtest.NewServer(b, upstreamtest.Options{TLS: project.TLSStartTLS, Users: map[string]string{"user@a.example": password}})
			c := benchServer(b, basicProject("a", "a.example", up))
			msg := benchMessage(size)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if err := c.Mail("noreply@a.example", nil); err != nil {
					b.Fatal(err)
				}
				if err := c.Rcpt("x@dest.example", nil); err != nil {
					b.Fatal(err)
				}
				w, err := c.Data()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := w.Write([]byte(msg)); err != nil {
					b.Fatal(err)
				}
				if _, err := w.CloseWithLMTPResponse(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchServer serves LMTP for projects and returns a connected client (LHLO done).
func benchServer(b *testing.B, projects ...project.Project) *smtp.Client {
	b.Helper()
	log := slog.New(slog.DiscardHandler)
	dir := directory.New(&memStore{projects: projects}, directory.Options{Logger: log, MinReloadGap: time.Hour})
	if err := dir.Load(b.Context()); err != nil {
		b.Fatal(err)
	}
	pools := upstream.NewPools(upstream.Options{Logger: log, LocalName: "postern.test"})
	b.Cleanup(func() { pools.Close() })
	srv, err := New(Options{Resolver: dir, Credentials: (&fakeCreds{}).manager(), Upstreams: pools, Logger: log, Hostname: "postern.test"})
	if err != nil {
		b.Fatal(err)
	}
	tmp, err := os.MkdirTemp("", "smtpd")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(tmp) })
	sock := filepath.Join(tmp, "lmtp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.ServeLMTP(ctx, l) }()
	b.Cleanup(func() {
		cancel()
		<-served
	})
	nc, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	c := smtp.NewClientLMTP(nc)
	if err := c.Hello("postfix.test"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// benchMessage is a message of about size bytes in 78-character lines.
func benchMessage(size int) string {
	var sb strings.Builder
	sb.WriteString(body)
	line := strings.Repeat("x", 76) + "\r\n"
	for sb.Len() < size {
		sb.WriteString(line)
	}
	return sb.String()
}
