package smtpd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/sidecar/address"
	"github.com/postern/postern/sidecar/credential"
	"github.com/postern/postern/sidecar/health"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/upstream"
)

// session is one Postfix connection. go-smtp calls Mail, Rcpt, Data, LMTPData and Reset one at a
// time from the connection's goroutine; Logout may come from another goroutine (server close) while
// one of them runs, so it only cancels ctx and leaves the clean-up to the running call.
type session struct {
	srv    *Server
	dc     *drainConn // nil if the listener was not wrapped
	lmtp   bool
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger

	mu     sync.Mutex
	busy   bool // a session method is running
	closed bool // Logout was called
	tx     *transaction
}

// transaction is one MAIL FROM ... DATA exchange passed through to one upstream connection.
type transaction struct {
	log     *slog.Logger
	sender  string
	project project.Project
	conn    *upstream.Conn
	rcpts   []string
	// taken counts the recipients taken from the project's recipients-per-day budget and not
	// given back.
	taken int
	// utf8 is set when MAIL FROM carried SMTPUTF8: only then may an address hold more than ASCII.
	utf8 bool
	// broken holds the failure that left the upstream connection's state unknown; the rest of the
	// transaction is answered with it.
	broken  error
	started time.Time
}

// wrap adds the transaction's names to err, for replyFor. A nil err stays nil.
func (tx *transaction) wrap(err error) error {
	if err == nil {
		return nil
	}
	return &txError{sender: tx.sender, project: tx.project.Name, err: err}
}

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.LMTPSession = (*session)(nil)
)

// enter marks a session method as running; it reports false after Logout.
func (s *session) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.busy = true
	return true
}

// leave marks the end of a session method and finishes a Logout that came meanwhile.
func (s *session) leave() {
	s.mu.Lock()
	s.busy = false
	var tx *transaction
	if s.closed {
		tx, s.tx = s.tx, nil
	}
	s.mu.Unlock()
	s.finish(tx, nil)
}

// Mail starts a transaction: project, limits, credential, upstream connection, upstream MAIL.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if !s.enter() {
		return replyFor(stageMail, errShuttingDown)
	}
	defer s.leave()
	if s.tx != nil {
		// go-smtp lets MAIL through inside a transaction and keeps its recipients: refuse it, or
		// recipients of the old transaction could be reported delivered by the new one.
		return replyFor(stageMail, errNestedMail)
	}
	if s.dc != nil && !s.dc.begin() {
		return replyFor(stageMail, errShuttingDown)
	}
	if opts == nil {
		opts = &smtp.MailOptions{}
	}
	tx := &transaction{sender: from, utf8: opts.UTF8, started: time.Now(), log: s.log.With("sender", from)}
	if s.dc != nil {
		// Postfix's queue id (XFORWARD IDENT), so that these lines join Postfix's own.
		if id := s.dc.frame.xfwd.take()["IDENT"]; id != "" {
			tx.log = tx.log.With("queue_id", id)
		}
	}
	err := checkAddress(from, opts.UTF8)
	if err == nil {
		err = s.open(tx, opts)
	}
	if err != nil {
		reply := s.ended(tx, stageMail, err)
		s.logRefusal(tx.log, stageMail, reply, err, time.Since(tx.started))
		s.endTransaction()
		return reply
	}
	s.tx = tx
	return nil
}

// ended decides the reply to a transaction that ended at stage with err (nil: accepted) and
// records it in the health model (package health) with the reason the reply was decided by.
func (s *session) ended(tx *transaction, stage string, err error) *smtp.SMTPError {
	reply, why := decide(stage, tx.wrap(err))
	outcome, text := health.OutcomeDelivered, ""
	switch {
	case reply == nil:
	case reply.Code >= 500:
		outcome = health.OutcomeRefused
	default:
		outcome = health.OutcomeDeferred
	}
	if reply != nil {
		text = fmt.Sprintf("%d %d.%d.%d %s", reply.Code, reply.EnhancedCode[0], reply.EnhancedCode[1], reply.EnhancedCode[2], reply.Message)
	}
	s.srv.opts.Health.Record(health.Event{
		Project: tx.project.Name, Source: health.SourceDelivery, Stage: stage,
		Outcome: outcome, Reason: why, Text: text, Err: err, Took: time.Since(tx.started),
	})
	return reply
}

// timed runs one upstream round trip and records its time under step.
func (s *session) timed(step string, f func() error) error {
	start := time.Now()
	err := f()
	s.srv.opts.Health.ObserveUpstream(step, time.Since(start))
	return err
}

// open does the work of MAIL FROM. On success tx.conn holds an upstream connection in a transaction.
func (s *session) open(tx *transaction, opts *smtp.MailOptions) error {
	ctx := s.ctx
	p, err := s.srv.opts.Resolver.Resolve(ctx, tx.sender)
	if err != nil {
		return err
	}
	tx.project = p
	tx.log = tx.log.With("project", p.Name)
	if p.IsRemoved() {
		return errRemoved
	}
	if !p.Enabled {
		return errDisabled
	}
	p.Limits = p.EffectiveLimits() // with the provider's defaults
	tx.project = p
	if err := s.srv.limiter.CheckPaused(p.Name); err != nil {
		return err
	}
	if max := p.Limits.MaxMessageBytes; max > 0 && opts.Size > max {
		return &limitError{err: errMessageTooLarge, limit: max, detail: fmt.Sprintf("SIZE=%d over the project's limit of %d bytes", opts.Size, max)}
	}
	if err := s.srv.limiter.WaitMessage(ctx, p, time.Duration(s.srv.rateWait.Load())); err != nil {
		return err
	}

	var conn *upstream.Conn
	err = s.srv.opts.Credentials.SignIn(ctx, p, func(a upstream.Auth) error {
		return s.timed("acquire", func() (err error) {
			conn, err = s.srv.opts.Upstreams.Acquire(ctx, p, a)
			return err
		})
	})
	var ue *upstream.Error
	if err != nil && !errors.As(err, &ue) && !errors.Is(err, credential.ErrNeedsReauth) {
		return fmt.Errorf("%w: %w", errCredential, err)
	}
	if err != nil {
		return err
	}

	if max := conn.MaxSize(); max > 0 && opts.Size > max {
		conn.Release()
		return &limitError{err: errMessageTooLarge, limit: max, detail: fmt.Sprintf("SIZE=%d over the upstream's limit of %d bytes", opts.Size, max)}
	}
	if err := s.timed("mail", func() error {
		return conn.Mail(ctx, tx.sender, &smtp.MailOptions{Size: opts.Size, Body: opts.Body, UTF8: opts.UTF8})
	}); err != nil {
		s.quota(tx, err)
		giveBack(conn, err)
		return err
	}
	tx.conn = conn
	return nil
}

// Rcpt enforces the project's recipient limit and asks the upstream.
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if !s.enter() {
		return replyFor(stageRcpt, errShuttingDown)
	}
	defer s.leave()
	tx := s.tx
	if tx == nil {
		return replyFor(stageRcpt, errors.New("RCPT without a transaction"))
	}
	err := tx.broken
	if err == nil {
		err = checkAddress(to, tx.utf8)
	}
	if err == nil {
		err = s.rcpt(tx, to)
	}
	if err != nil {
		reply := s.ended(tx, stageRcpt, err)
		s.logRefusal(tx.log.With("recipient", to), stageRcpt, reply, err, time.Since(tx.started))
		s.srv.counts.recipient(tx.project.Name, reply.Code)
		return reply
	}
	tx.rcpts = append(tx.rcpts, to)
	return nil
}

// rcpt takes a recipient: the project's limits, then (SMTP) the upstream.
func (s *session) rcpt(tx *transaction, to string) error {
	if max := tx.project.Limits.MaxRecipients; max > 0 && len(tx.rcpts) >= max {
		return &limitError{err: errTooManyRecipients, limit: int64(max), detail: fmt.Sprintf("%d recipients accepted, the project's limit is %d", len(tx.rcpts), max)}
	}
	if err := s.srv.limiter.TakeRecipient(tx.project); err != nil {
		return err // the day's budget is used up: this recipient waits in Postfix's queue
	}
	tx.taken++
	if s.lmtp {
		// LMTP answers for each recipient after the message: the recipients go upstream with
		// DATA (in one round trip where the upstream pipelines), and a recipient the upstream
		// refuses gets its refusal then.
		return nil
	}
	err := s.timed("rcpt", func() error { return tx.conn.Rcpt(s.ctx, to, nil) })
	if err != nil {
		s.giveRecipients(tx, 1)
		s.quota(tx, err)
		if stateUnknown(err) {
			tx.broken = err
		}
	}
	return err
}

// Data streams the message to the upstream and returns its final reply (SMTP).
func (s *session) Data(r io.Reader) error {
	return asError(s.data(r, nil))
}

// LMTPData streams the message to the upstream and gives every accepted recipient the upstream's
// one final reply.
func (s *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	return asError(s.data(r, status))
}

func (s *session) data(r io.Reader, status smtp.StatusCollector) *smtp.SMTPError {
	if !s.enter() {
		return replyFor(stageData, errShuttingDown)
	}
	defer s.leave()
	tx := s.tx
	if tx == nil {
		return replyFor(stageData, errors.New("DATA without a transaction"))
	}
	s.tx = nil

	if mr := s.dc.messageReader(s.srv.opts.MaxMessageBytes); mr != nil {
		// DATA: the message is read in bulk from the framer (data.go), and go-smtp reads only the
		// final dot once the session has read the rest.
		defer mr.Close()
		r = mr
	}
	body := &countingReader{r: r, max: tx.project.Limits.MaxMessageBytes}
	err := tx.broken
	var accepted string
	var refused []*upstream.Error // LMTP: the upstream's refusal of each recipient, if any
	if err == nil {
		err = s.timed("data", func() (err error) {
			if status != nil {
				refused, err = tx.conn.Send(s.ctx, tx.rcpts, body)
			} else {
				err = tx.conn.Data(s.ctx, body)
			}
			return err
		})
		if err == nil {
			accepted = tx.conn.LastReply()
		}
		s.quota(tx, err)
		giveBack(tx.conn, err)
	} else {
		tx.conn.Discard()
	}
	n := len(tx.rcpts)
	var reply *smtp.SMTPError
	if err != nil || slices.Contains(refused, nil) || len(refused) < n {
		// The message's outcome; recipients the upstream refused each count at rcpt below.
		reply = s.ended(tx, stageData, err)
	}
	if err != nil {
		s.giveRecipients(tx, tx.taken) // the upstream took none of them
	}
	code := 0
	if reply != nil {
		code = reply.Code
	}
	if status != nil {
		// go-smtp writes each recipient's reply as soon as it is set: read the rest of a message
		// the upstream did not take first.
		io.Copy(io.Discard, r)
		for i, rcpt := range tx.rcpts {
			if i < len(refused) && refused[i] != nil {
				n--
				s.quota(tx, refused[i])
				if err == nil {
					s.giveRecipients(tx, 1)
				}
				rr := s.ended(tx, stageRcpt, refused[i])
				s.logRefusal(tx.log.With("recipient", rcpt), stageRcpt, rr, refused[i], time.Since(tx.started))
				s.srv.counts.recipient(tx.project.Name, rr.Code)
				status.SetStatus(rcpt, rr)
				continue
			}
			s.srv.counts.recipient(tx.project.Name, code)
			status.SetStatus(rcpt, asError(reply))
		}
	} else {
		for range tx.rcpts {
			s.srv.counts.recipient(tx.project.Name, code)
		}
	}
	log := tx.log.With("recipients", n, "bytes", body.n)
	switch {
	case n == 0:
		log.Info("no recipient accepted", "outcome", "refused", "duration", time.Since(tx.started))
	case reply == nil:
		log.Info("delivered", "outcome", "delivered", "upstream_id", upstreamID(accepted),
			"duration", time.Since(tx.started), "upstream_reply", clean(accepted, 300))
	default:
		s.logRefusal(log, stageData, reply, err, time.Since(tx.started))
	}
	return reply
}

// Reset ends the transaction (RSET, a new EHLO, or after DATA).
func (s *session) Reset() {
	if !s.enter() {
		return
	}
	defer s.leave()
	tx := s.tx
	s.tx = nil
	s.finish(tx, nil)
	s.endTransaction()
}

// Logout ends the session: ctx is cancelled, and the upstream connection goes back to its pool
// now, or when the call still running ends.
func (s *session) Logout() error {
	s.cancel()
	s.mu.Lock()
	s.closed = true
	var tx *transaction
	if !s.busy {
		tx, s.tx = s.tx, nil
	}
	s.mu.Unlock()
	s.finish(tx, nil)
	s.endTransaction()
	return nil
}

// finish returns an unfinished transaction's upstream connection: to the pool (which RSETs it)
// unless its state is unknown.
func (s *session) finish(tx *transaction, err error) {
	if tx == nil {
		return
	}
	s.giveRecipients(tx, tx.taken) // a transaction that ended before DATA sent none of them
	if tx.conn == nil {
		return
	}
	if tx.broken != nil {
		err = tx.broken
	}
	giveBack(tx.conn, err)
}

func (s *session) endTransaction() {
	if s.dc != nil {
		s.dc.end()
	}
}

// giveRecipients gives n of the recipients tx took from the project's recipients-per-day budget
// back: the upstream did not take them.
func (s *session) giveRecipients(tx *transaction, n int) {
	n = min(n, tx.taken)
	if n <= 0 {
		return
	}
	tx.taken -= n
	s.srv.limiter.ReturnRecipients(tx.project.Name, n)
}

// quota pauses tx's project when err is an upstream's reply reporting a provider's sending quota:
// the quota passes with time, and every message sent before then would be refused the same way.
func (s *session) quota(tx *transaction, err error) {
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		return
	}
	if name := ue.Quota(); name != "" {
		until := s.srv.limiter.Pause(tx.project.Name, name)
		tx.log.Warn("the upstream reported a sending quota: pausing the project", "quota", name, "until", until,
			"upstream_reply", replyText(ue))
	}
}

// logRefusal logs a failure: definite refusals at info, temporary ones at warn (with the cause),
// with the outcome Postfix hears (deferred or refused) and the time since MAIL FROM.
func (s *session) logRefusal(log *slog.Logger, stage string, reply *smtp.SMTPError, err error, took time.Duration) {
	level, outcome := slog.LevelWarn, "deferred"
	if reply.Code >= 500 {
		level, outcome = slog.LevelInfo, "refused"
	}
	log.Log(context.Background(), level, "refused", "outcome", outcome, "duration", took,
		"stage", stage, "reply", fmt.Sprintf("%d %d.%d.%d %s", reply.Code, reply.EnhancedCode[0], reply.EnhancedCode[1], reply.EnhancedCode[2], reply.Message),
		"err", err)
}

// checkAddress refuses an address that cannot go upstream as it is (address.Path), and one that
// holds more than ASCII in a transaction whose MAIL FROM did not carry SMTPUTF8 (RFC 6531), as
// Postfix's own SMTP server does.
func checkAddress(addr string, utf8 bool) error {
	if _, err := address.Path(addr); err != nil {
		return err
	}
	if !utf8 && address.NeedsSMTPUTF8(addr) {
		return errSMTPUTF8Undeclared
	}
	return nil
}

// giveBack releases conn after an exchange that ended with err, or discards it when err left the
// connection's state unknown.
func giveBack(conn *upstream.Conn, err error) {
	if stateUnknown(err) {
		conn.Discard()
		return
	}
	conn.Release()
}

// stateUnknown reports whether err leaves an upstream connection in an unknown state: anything
// but a reply from the upstream.
func stateUnknown(err error) bool {
	if err == nil {
		return false
	}
	var ue *upstream.Error
	return !errors.As(err, &ue) || ue.Code == 0 || ue.Code == 421
}

// countingReader counts the bytes of a message and fails once they pass max (0: no limit of its
// own; the server's limit is go-smtp's), or once a line passes maxLineLength: a check of the
// message itself, the same whether it came with DATA or in BDAT chunks.
type countingReader struct {
	r    io.Reader
	max  int64
	n    int64
	line int // bytes of the current line so far
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.max > 0 && c.n > c.max {
		return n, &limitError{err: errMessageTooLarge, limit: c.max, detail: fmt.Sprintf("message passed the project's limit of %d bytes", c.max)}
	}
	for rest := p[:n]; ; {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			c.line += len(rest)
			break
		}
		if c.line+i+1 > maxLineLength {
			c.line += i + 1
			break
		}
		c.line, rest = 0, rest[i+1:]
	}
	if c.line > maxLineLength {
		return n, fmt.Errorf("a line of the message passed %d bytes: %w", maxLineLength, errLineTooLong)
	}
	return n, err
}

// upstreamIDPatterns find the upstream's own queue id in its reply to the final dot.
var upstreamIDPatterns = []*regexp.Regexp{
	regexp.MustCompile(`(?i)queued as ([A-Za-z0-9._-]+)`),                // Postfix, Dovecot, many others
	regexp.MustCompile(`(?i)\bOK\s+\d+\s+([A-Za-z0-9._-]+)\s+-\s+gsmtp`), // Gmail
	regexp.MustCompile(`<([^<>\s]+@[^<>\s]+)>`),                          // Exchange Online's message id
}

// upstreamID returns the upstream's queue id from its accepting reply, or "".
func upstreamID(reply string) string {
	for _, re := range upstreamIDPatterns {
		if m := re.FindStringSubmatch(reply); m != nil {
			return m[1]
		}
	}
	return ""
}
