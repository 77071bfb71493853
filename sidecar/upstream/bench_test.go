package upstream_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
	"github.com/postern/postern/sidecar/upstream/upstreamtest"
)

// benchMessage is a message of about size bytes.
func benchMessage(size int) string {
	var b strings.Builder
	b.WriteString("From: noreply@client.example\r\nTo: x@dest.example\r\nSubject: bench\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.String()
}

// BenchmarkDelivery relays one 1 KB message over STARTTLS and AUTH PLAIN to an in-process
// upstream: pooled takes a signed-in connection from the pool (Postern's steady state),
// new-connection opens and signs in a connection for every message (what Postfix's SMTP client
// does with sender-dependent authentication).
func BenchmarkDelivery(b *testing.B) {
	msg := benchMessage(1024)
	for _, tc := range []struct {
		name    string
		discard bool
	}{{"pooled", false}, {"new-connection", true}} {
		b.Run(tc.name, func(b *testing.B) {
			srv := upstreamtest.NewServer(b, upstreamtest.Options{TLS: project.TLSStartTLS, Users: users()})
			pools := upstream.NewPools(upstream.Options{Logger: slog.New(slog.DiscardHandler), LocalName: "postern.test"})
			b.Cleanup(func() { pools.Close() })
			p := proj("bench", srv)
			auth := basic("PLAIN")
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				c, err := pools.Acquire(ctx, p, auth)
				if err != nil {
					b.Fatal(err)
				}
				if err := send(ctx, c, []string{to}, msg); err != nil {
					c.Discard()
					b.Fatal(err)
				}
				if tc.discard {
					c.Discard()
				} else {
					c.Release()
				}
			}
		})
	}
}
