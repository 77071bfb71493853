package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/integration/bench/sink"
)

// SinkLoad is the sink measured alone with a Go load client, to show it is not what limits the
// end-to-end paths.
type SinkLoad struct {
	Mode        string  `json:"mode"`
	Size        int     `json:"size_bytes"`
	Concurrency int     `json:"concurrency"`
	Count       int     `json:"messages"`
	Seconds     float64 `json:"seconds"`
	Rate        float64 `json:"msgs_per_sec"`
}

// Sink load modes.
const (
	// LoadPooled sends every message over a few signed-in connections, as Postern does.
	LoadPooled = "starttls+auth, pooled"
	// LoadPerMessage opens a connection with STARTTLS and AUTH for every message, as Postfix's
	// SMTP client does with sender-dependent authentication.
	LoadPerMessage = "starttls+auth, connection per message"
)

// LoadSink sends count messages of size bytes to the sink at addr with conc clients signed in as
// user (STARTTLS trusting tlsCfg's roots) and returns the rate the sink accepted them at.
func LoadSink(ctx context.Context, s *sink.Sink, tlsCfg *tls.Config, user, password, mode string, size, conc, count int) (SinkLoad, error) {
	res := SinkLoad{Mode: mode, Size: size, Concurrency: conc, Count: count}
	rcpt := fmt.Sprintf("load-%d-%d-%d@sink.test", size, conc, time.Now().UnixNano())
	body := message(size)
	// A TLS session cache, as Postfix's SMTP client has (smtp_tls_session_cache_database).
	tlsCfg = tlsCfg.Clone()
	tlsCfg.ClientSessionCache = tls.NewLRUClientSessionCache(conc)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conc)
	t0 := time.Now()
	for range conc {
		wg.Go(func() {
			var c *smtp.Client
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for next.Add(1) <= int64(count) {
				if c == nil {
					var err error
					if c, err = dialSink(ctx, s.Addr(), tlsCfg, user, password); err != nil {
						errs <- err
						return
					}
				}
				if err := c.SendMail("load@sink.test", []string{rcpt}, strings.NewReader(body)); err != nil {
					errs <- fmt.Errorf("sending to the sink: %w", err)
					return
				}
				if mode == LoadPerMessage {
					_ = c.Quit()
					c = nil
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return res, err
	}
	a := s.Arrivals(rcpt)
	if a.Count != int64(count) {
		return res, fmt.Errorf("the sink counted %d of %d messages", a.Count, count)
	}
	res.Seconds = a.Last.Sub(t0).Seconds()
	res.Rate = float64(count) / res.Seconds
	return res, nil
}

func dialSink(ctx context.Context, addr string, tlsCfg *tls.Config, user, password string) (*smtp.Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to the sink: %w", err)
	}
	c, err := smtp.NewClientStartTLS(nc, tlsCfg)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("STARTTLS with the sink: %w", err)
	}
	if err := c.Auth(sasl.NewPlainClient("", user, password)); err != nil {
		c.Close()
		return nil, fmt.Errorf("signing in to the sink: %w", err)
	}
	return c, nil
}

// message is a message of about size bytes: a few header fields and a body of 76-character lines.
func message(size int) string {
	var b strings.Builder
	b.WriteString("From: load@sink.test\r\nTo: sink@sink.test\r\nSubject: load\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.String()
}
