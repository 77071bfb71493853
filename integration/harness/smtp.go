package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Mail is a message to send: its envelope and a simple text body.
type Mail struct {
	// From is the envelope sender; also the From header unless Header sets one.
	From string
	// To are the envelope recipients; also the To header unless Header sets one.
	To []string
	// Subject is the Subject header; empty means "Postern integration test <ID>".
	Subject string
	// Header holds extra or overriding header fields.
	Header map[string]string
	// Body is the text body; empty means a line naming ID.
	Body string
	// ID marks the message: it becomes the Message-ID's local part and the X-Postern-Test-ID
	// header. Empty means a random one, set by Bytes.
	ID string
}

// TestIDHeader is the header that carries Mail.ID.
const TestIDHeader = "X-Postern-Test-ID"

// NewID returns a random message marker.
func NewID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Bytes renders the message with CRLF line ends, setting m.ID when empty.
func (m *Mail) Bytes() []byte {
	if m.ID == "" {
		m.ID = NewID()
	}
	fields := map[string]string{
		"From":       m.From,
		"To":         strings.Join(m.To, ", "),
		"Subject":    m.Subject,
		"Date":       time.Now().Format(time.RFC1123Z),
		"Message-ID": fmt.Sprintf("<%s@postern.test>", m.ID),
		TestIDHeader: m.ID,
	}
	if fields["Subject"] == "" {
		fields["Subject"] = "Postern integration test " + m.ID
	}
	for k, v := range m.Header {
		fields[k] = v
	}
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	sort.Strings(names)
	var b bytes.Buffer
	for _, k := range names {
		fmt.Fprintf(&b, "%s: %s\r\n", k, fields[k])
	}
	body := m.Body
	if body == "" {
		body = "Test message " + m.ID + ".\r\n"
	}
	b.WriteString("\r\n")
	b.WriteString(strings.ReplaceAll(strings.ReplaceAll(body, "\r\n", "\n"), "\n", "\r\n"))
	if !bytes.HasSuffix(b.Bytes(), []byte("\r\n")) {
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// Client says how to reach an SMTP server.
type Client struct {
	// Addr is host:port.
	Addr string
	// StartTLS, when set, is used for STARTTLS before anything else.
	StartTLS *tls.Config
	// Username and Password, when Username is set, sign in with AUTH.
	Username, Password string
	// Mechanism is "PLAIN" (the default) or "LOGIN".
	Mechanism string
	// HeloName is the EHLO name; empty means "client.test".
	HeloName string
}

// Sent is the server's answer to a delivered message.
type Sent struct {
	// Reply is the text of the final 250 reply.
	Reply string
	// QueueID is the Postfix queue ID from "queued as ID", when the reply had one.
	QueueID string
}

var queuedAsRE = regexp.MustCompile(`queued as ([0-9A-Za-z]+)`)

// Send delivers m through c. A refusal by the server comes back as an error wrapping the
// server's *smtp.SMTPError (check it with errors.As).
func (c Client) Send(ctx context.Context, m *Mail) (Sent, error) {
	raw := m.Bytes()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.Addr)
	if err != nil {
		return Sent{}, fmt.Errorf("connecting to %s: %w", c.Addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	var cl *smtp.Client
	if c.StartTLS != nil {
		cl, err = smtp.NewClientStartTLS(conn, c.StartTLS)
		if err != nil {
			conn.Close()
			return Sent{}, fmt.Errorf("starting TLS with %s: %w", c.Addr, err)
		}
	} else {
		cl = smtp.NewClient(conn)
	}
	defer cl.Close()
	helo := c.HeloName
	if helo == "" {
		helo = "client.test"
	}
	if err := cl.Hello(helo); err != nil {
		return Sent{}, fmt.Errorf("greeting %s: %w", c.Addr, err)
	}
	if c.Username != "" {
		var a sasl.Client
		switch strings.ToUpper(c.Mechanism) {
		case "", "PLAIN":
			a = sasl.NewPlainClient("", c.Username, c.Password)
		case "LOGIN":
			a = sasl.NewLoginClient(c.Username, c.Password)
		default:
			return Sent{}, fmt.Errorf("signing in to %s: unknown mechanism %q", c.Addr, c.Mechanism)
		}
		if err := cl.Auth(a); err != nil {
			return Sent{}, fmt.Errorf("signing in to %s as %s: %w", c.Addr, c.Username, err)
		}
	}
	if err := cl.Mail(m.From, nil); err != nil {
		return Sent{}, fmt.Errorf("MAIL FROM:<%s> at %s: %w", m.From, c.Addr, err)
	}
	for _, r := range m.To {
		if err := cl.Rcpt(r, nil); err != nil {
			return Sent{}, fmt.Errorf("RCPT TO:<%s> at %s: %w", r, c.Addr, err)
		}
	}
	w, err := cl.Data()
	if err != nil {
		return Sent{}, fmt.Errorf("DATA at %s: %w", c.Addr, err)
	}
	if _, err := w.Write(raw); err != nil {
		return Sent{}, fmt.Errorf("writing the message to %s: %w", c.Addr, err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return Sent{}, fmt.Errorf("ending DATA at %s: %w", c.Addr, err)
	}
	_ = cl.Quit()
	s := Sent{Reply: resp.StatusText}
	if mm := queuedAsRE.FindStringSubmatch(resp.StatusText); mm != nil {
		s.QueueID = mm[1]
	}
	return s, nil
}

// SMTPCode returns the reply code and enhanced status code ("5.1.1") of an error that wraps an
// *smtp.SMTPError, or 0 and "" for any other error.
func SMTPCode(err error) (int, string) {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return 0, ""
	}
	enh := ""
	if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
		enh = fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return se.Code, enh
}
