package harness

// Postern's milter in the harness: Options.Milter makes Postern listen on Dir/milter.sock and the
// front Postfix load contrib/postfix/main-milter.cf verbatim, so Postfix asks the milter about
// every message submitted to Front.SMTPAddr. The milter answers during the SMTP session, so the
// tests look at each reply of the session (Front.Transact) rather than only at the end of data.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/emersion/go-smtp"
)

// MilterMainFile is the contrib file with the milter's main.cf lines.
const MilterMainFile = "main-milter.cf"

// Reply is one SMTP reply: its code, enhanced code ("4.5.3") and text. A zero Code means the
// command was not sent.
type Reply struct {
	Code     int
	Enhanced string
	Text     string
}

// String renders the reply as a server would send it.
func (r Reply) String() string {
	if r.Code == 0 {
		return "(not sent)"
	}
	if r.Enhanced == "" {
		return fmt.Sprintf("%d %s", r.Code, r.Text)
	}
	return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
}

// OK reports whether the reply is positive (2xx or 3xx).
func (r Reply) OK() bool { return r.Code >= 200 && r.Code < 400 }

// Transaction is every reply of one submitted message.
type Transaction struct {
	Mail Reply
	// Rcpt holds one reply per envelope recipient, in order.
	Rcpt []Reply
	// Data is the reply to the end of data; zero when no recipient was accepted. go-smtp keeps
	// only the text of a positive reply, so its Code is 250 and its Enhanced empty.
	Data Reply
	// QueueID is the Postfix queue ID from a positive Data reply.
	QueueID string
}

// Transact submits m to the front Postfix like an application that carries on after a refused
// recipient: MAIL FROM, every RCPT TO, and DATA when at least one recipient was accepted. A
// refusal comes back in the Transaction; the error is for everything else (connection, protocol).
func (f *Front) Transact(ctx context.Context, m *Mail) (Transaction, error) {
	return transact(ctx, f.SMTPAddr(), "app.test", m)
}

func transact(ctx context.Context, addr, helo string, m *Mail) (Transaction, error) {
	var tx Transaction
	raw := m.Bytes()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return tx, fmt.Errorf("connecting to %s: %w", addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	cl := smtp.NewClient(conn)
	defer cl.Close()
	if err := cl.Hello(helo); err != nil {
		return tx, fmt.Errorf("greeting %s: %w", addr, err)
	}
	var ok bool
	if tx.Mail, ok, err = replyOf(cl.Mail(m.From, nil)); err != nil {
		return tx, fmt.Errorf("MAIL FROM:<%s> at %s: %w", m.From, addr, err)
	}
	if !ok {
		_ = cl.Quit()
		return tx, nil
	}
	accepted := 0
	for _, r := range m.To {
		reply, ok, err := replyOf(cl.Rcpt(r, nil))
		if err != nil {
			return tx, fmt.Errorf("RCPT TO:<%s> at %s: %w", r, addr, err)
		}
		tx.Rcpt = append(tx.Rcpt, reply)
		if ok {
			accepted++
		}
	}
	if accepted == 0 {
		_ = cl.Quit()
		return tx, nil
	}
	w, err := cl.Data()
	if err != nil {
		return tx, fmt.Errorf("DATA at %s: %w", addr, err)
	}
	if _, err := w.Write(raw); err != nil {
		return tx, fmt.Errorf("writing the message to %s: %w", addr, err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		if tx.Data, _, err = replyOf(err); err != nil {
			return tx, fmt.Errorf("ending DATA at %s: %w", addr, err)
		}
		_ = cl.Quit()
		return tx, nil
	}
	tx.Data = Reply{Code: 250, Text: resp.StatusText}
	if mm := queuedAsRE.FindStringSubmatch(resp.StatusText); mm != nil {
		tx.QueueID = mm[1]
	}
	_ = cl.Quit()
	return tx, nil
}

// replyOf turns a command's outcome into a Reply: ok for success, the server's refusal as a Reply,
// and any other error as an error.
func replyOf(err error) (Reply, bool, error) {
	if err == nil {
		return Reply{Code: 250}, true, nil
	}
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return Reply{}, false, err
	}
	return Reply{Code: se.Code, Enhanced: enhanced(se.EnhancedCode), Text: se.Message}, false, nil
}

func enhanced(c smtp.EnhancedCode) string {
	if c == (smtp.EnhancedCode{}) || c == smtp.NoEnhancedCode {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
}

// CutMilter makes Postern's milter unreachable while Postern keeps running: it removes the
// milter's socket file, so Postfix's connection attempts fail as they do when nothing listens
// there, and Postfix applies the milter's default_action.
func (p *Postern) CutMilter() error {
	if p.MilterSocket == "" {
		return errors.New("cutting postern's milter: postern has no milter socket")
	}
	if err := os.Remove(p.MilterSocket); err != nil {
		return fmt.Errorf("cutting postern's milter: %w", err)
	}
	return nil
}

// MilterDecisions returns the lines of Postern's log that record a milter decision, optionally only
// those that mention every one of the given strings.
func (p *Postern) MilterDecisions(containing ...string) []string {
	var out []string
	for _, l := range strings.Split(p.Log(), "\n") {
		if !strings.Contains(l, "milter decision") {
			continue
		}
		all := true
		for _, c := range containing {
			if !strings.Contains(l, c) {
				all = false
				break
			}
		}
		if all {
			out = append(out, l)
		}
	}
	return out
}
