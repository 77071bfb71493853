package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	envelope "github.com/postern/postern/sidecar/address"
)

// A transaction (MAIL, RCPT, DATA, the message) runs on a signed-in session (session.go). With an
// upstream that offers PIPELINING (RFC 2920), MAIL, the recipients and DATA go out in one write
// and the message follows the 354 reply: two round trips per message instead of three plus one
// per recipient. An upstream that sends more than it was asked for leaves the connection broken,
// never in a state where the wrong reply is read.

// command is one command of a transaction and the reply code class it expects.
type command struct {
	stage  string
	line   string
	expect int // for textproto.ReadResponse: 250, 25 (any 25x) or 354
}

// mailCommand formats MAIL FROM: BODY=8BITMIME whenever the upstream offers 8BITMIME, SIZE when
// known and the upstream offers SIZE, SMTPUTF8 and REQUIRETLS when asked for (refuse has checked
// the upstream offers them). The sender is written as
// address.Path does; one that cannot be is refused here (553 5.1.7).
func (c *Conn) mailCommand(from string, opts *smtp.MailOptions) (command, *Error) {
	path, err := envelope.Path(from)
	if err != nil {
		return command{}, &Error{Stage: StageMail, Addr: c.addr, Code: 553, Enhanced: smtp.EnhancedCode{5, 1, 7}, Message: "sender address rejected", Local: true, Err: err}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "MAIL FROM:<%s>", path)
	if c.has("8BITMIME") {
		b.WriteString(" BODY=8BITMIME")
	}
	if opts != nil {
		if opts.Size > 0 && c.has("SIZE") {
			fmt.Fprintf(&b, " SIZE=%d", opts.Size)
		}
		if opts.UTF8 {
			b.WriteString(" SMTPUTF8")
		}
		if opts.RequireTLS {
			b.WriteString(" REQUIRETLS")
		}
	}
	return command{stage: StageMail, line: b.String(), expect: 250}, nil
}

// rcptCommand formats RCPT TO, the recipient written as address.Path does; one that cannot be is
// refused here (553 5.1.3).
func (c *Conn) rcptCommand(to string) (command, *Error) {
	path, err := envelope.Path(to)
	if err != nil {
		return command{}, &Error{Stage: StageRcpt, Addr: c.addr, Code: 553, Enhanced: smtp.EnhancedCode{5, 1, 3}, Message: "recipient address rejected", Local: true, Err: err}
	}
	return command{stage: StageRcpt, line: "RCPT TO:<" + path + ">", expect: 25}, nil
}

// exchange sends cmds and reads their replies, all within one Options.CommandTimeout: all in one
// write when the upstream offers PIPELINING, and one by one otherwise, in which case it stops at
// the first refusal of MAIL or DATA. replies holds an *Error for each refused command (nil:
// accepted; a command not sent counts as refused by the last reply). A failure to talk to the
// upstream returns err and leaves c broken.
func (c *Conn) exchange(ctx context.Context, cmds []command) (replies []*Error, err *Error) {
	end := c.guard.begin(ctx, c.opts.CommandTimeout)
	defer end()
	replies = make([]*Error, len(cmds))
	send := func(cmds []command) *Error {
		var b strings.Builder
		for _, cmd := range cmds {
			b.WriteString(cmd.line)
			b.WriteString("\r\n")
		}
		if cmds[0].stage == StageMail {
			c.enter(stateTx)
		}
		if _, err := io.WriteString(c.wire, b.String()); err != nil {
			return c.ioError(ctx, cmds[0].stage, err, c.opts.CommandTimeout)
		}
		return nil
	}
	read := func(i int) (e *Error) {
		_, replies[i], e = c.readReply(ctx, cmds[i].stage, cmds[i].expect, c.opts.CommandTimeout)
		return e
	}
	finish := func() *Error {
		if c.rd.R.Buffered() > 0 {
			c.enter(stateBroken)
			return &Error{Stage: cmds[len(cmds)-1].stage, Addr: c.addr, Message: "the upstream sent more replies than commands it was given"}
		}
		return nil
	}

	if c.pipelining {
		if e := send(cmds); e != nil {
			return nil, e
		}
		for i := range cmds {
			if e := read(i); e != nil {
				if i > 0 && replies[0] != nil && cmds[0].stage == StageMail {
					// The upstream refused MAIL and hung up: its refusal stands for the rest.
					for j := i; j < len(cmds); j++ {
						replies[j] = replies[0]
					}
					return replies, nil
				}
				return nil, e
			}
		}
		return replies, finish()
	}
	for i, cmd := range cmds {
		if e := send(cmds[i : i+1]); e != nil {
			return nil, e
		}
		if e := read(i); e != nil {
			return nil, e
		}
		if replies[i] != nil && cmd.stage != StageRcpt {
			for j := i + 1; j < len(cmds); j++ {
				replies[j] = replies[i]
			}
			break
		}
	}
	return replies, finish()
}

// Mail starts a transaction: MAIL FROM with BODY=8BITMIME whenever the upstream offers 8BITMIME,
// and SIZE and SMTPUTF8 where it offers them. SMTPUTF8 goes with
// MAIL when opts asks for it or when the sender needs it (address.NeedsSMTPUTF8), and, while MAIL
// waits to go out with the recipients, when a recipient needs it. What the upstream declared it
// cannot take is refused here with a permanent *Error (Local set): an 8-bit or binary body without
// 8BITMIME (554 5.6.3), an internationalised address without SMTPUTF8 (553 5.6.7), REQUIRETLS
// without REQUIRETLS (554 5.7.30), a declared size above the upstream's SIZE (552 5.3.4); so is a
// sender no quoting can carry (553 5.1.7, see address.Path).
//
// With an upstream that offers PIPELINING, MAIL waits to go out with the first recipient (Rcpt,
// Send), whose call then returns the upstream's refusal of MAIL, if any, as an *Error of stage
// mail.
func (c *Conn) Mail(ctx context.Context, from string, opts *smtp.MailOptions) error {
	if e := c.unusable(StageMail); e != nil {
		return e
	}
	var o smtp.MailOptions
	if opts != nil {
		o = *opts
	}
	o.UTF8 = o.UTF8 || envelope.NeedsSMTPUTF8(from)
	if e := c.refuse(&o); e != nil {
		return e
	}
	cmd, e := c.mailCommand(from, &o)
	if e != nil {
		return e
	}
	c.mailErr = nil
	c.queue = []command{cmd}
	c.mailFrom, c.mailOpts = from, o
	if c.pipelining {
		return nil
	}
	return c.flush(ctx)
}

// flush sends the queued MAIL on its own.
func (c *Conn) flush(ctx context.Context) error {
	cmds := c.queue
	c.queue = nil
	replies, e := c.exchange(ctx, cmds)
	if e != nil {
		return e
	}
	if r := replies[0]; r != nil {
		c.mailErr = r
		c.enter(stateReady)
		return r
	}
	return nil
}

// Rcpt adds a recipient and returns the upstream's answer. A 5xx reply is permanent for this
// recipient only.
func (c *Conn) Rcpt(ctx context.Context, to string, _ *smtp.RcptOptions) error {
	errs, err := c.rcpts(ctx, []string{to}, false)
	if err != nil {
		return err
	}
	if errs[0] != nil {
		return errs[0]
	}
	return nil
}

// rcpts sends the queued MAIL, RCPT for each of to and, with data, DATA. It returns the reply to
// each RCPT; err is the refusal of MAIL or DATA, or a failure to talk to the upstream. A recipient
// that cannot be sent (see recipient) is refused here and never goes out; with data and no
// recipient to send, nothing goes out and err says no recipient was accepted.
func (c *Conn) rcpts(ctx context.Context, to []string, data bool) (rcptErrs []*Error, err *Error) {
	stage := StageRcpt
	if data {
		stage = StageData
	}
	if e := c.unusable(stage); e != nil {
		return nil, e
	}
	if c.mailErr != nil {
		return nil, c.mailErr
	}
	mailQueued := len(c.queue) > 0
	cmds := slices.Clone(c.queue)
	rcptErrs = make([]*Error, len(to))
	sent := make([]int, 0, len(to)) // the index in to of each RCPT in cmds
	for i, t := range to {
		cmd, e := c.recipient(t, cmds)
		if e != nil {
			rcptErrs[i] = e
			continue
		}
		cmds = append(cmds, cmd)
		sent = append(sent, i)
	}
	if len(to) > 0 && len(sent) == 0 {
		// Nothing to send: MAIL, if queued, waits for a recipient that can go.
		if data {
			return rcptErrs, &Error{Stage: StageData, Addr: c.addr, Code: 554, Enhanced: smtp.EnhancedCode{5, 5, 0}, Message: "no recipient could be sent upstream", Local: true}
		}
		return rcptErrs, nil
	}
	if mailQueued {
		c.queue = nil
	}
	if data {
		cmds = append(cmds, command{stage: StageData, line: "DATA", expect: 354})
	}
	replies, e := c.exchange(ctx, cmds)
	if e != nil {
		return nil, e
	}
	if mailQueued {
		if r := replies[0]; r != nil {
			c.mailErr = r
			c.enter(stateReady)
			if data && replies[len(replies)-1] == nil {
				c.abortData(ctx) // a 354 after all: end the empty message
			}
			return nil, r
		}
		replies = replies[1:]
	}
	for j, i := range sent {
		rcptErrs[i] = replies[j]
	}
	if !data {
		return rcptErrs, nil
	}
	if r := replies[len(sent)]; r != nil {
		return rcptErrs, r
	}
	if len(to) > 0 && !slices.ContainsFunc(replies[:len(sent)], func(e *Error) bool { return e == nil }) {
		c.abortData(ctx) // a 354 although no recipient was accepted
		return rcptErrs, &Error{Stage: StageData, Addr: c.addr, Code: 554, Enhanced: smtp.EnhancedCode{5, 5, 0}, Message: "the upstream accepted no recipient", Local: true}
	}
	return rcptErrs, nil
}

// recipient returns the RCPT command for to, to go after cmds (which start with MAIL when MAIL is
// still queued), or its local refusal: an address no quoting can carry (553 5.1.3), or one that
// needs SMTPUTF8 (553 5.6.7) when the upstream does not offer it or MAIL already went without it.
// A recipient that needs SMTPUTF8 while MAIL waits in cmds[0] without it rewrites MAIL with it.
func (c *Conn) recipient(to string, cmds []command) (command, *Error) {
	cmd, e := c.rcptCommand(to)
	if e != nil {
		return command{}, e
	}
	if !envelope.NeedsSMTPUTF8(to) || c.mailOpts.UTF8 {
		return cmd, nil
	}
	local := func(msg string) *Error {
		return &Error{Stage: StageRcpt, Addr: c.addr, Code: 553, Enhanced: smtp.EnhancedCode{5, 6, 7}, Message: msg, Local: true}
	}
	if !c.has("SMTPUTF8") {
		return command{}, local("the upstream does not accept internationalised addresses (no SMTPUTF8)")
	}
	if len(cmds) == 0 || cmds[0].stage != StageMail {
		return command{}, local("an internationalised recipient in a transaction started without SMTPUTF8")
	}
	o := c.mailOpts
	o.UTF8 = true
	mail, e := c.mailCommand(c.mailFrom, &o)
	if e != nil {
		return command{}, e
	}
	cmds[0], c.mailOpts = mail, o
	return cmd, nil
}

// abortData ends a DATA the upstream accepted although no recipient was: an empty message, which
// it must refuse, and RSET at release.
func (c *Conn) abortData(ctx context.Context) {
	end := c.guard.begin(ctx, c.opts.CommandTimeout)
	defer end()
	if err := c.cmd("."); err != nil {
		c.ioError(ctx, StageData, err, c.opts.CommandTimeout)
		return
	}
	if _, _, err := c.read(0); err != nil {
		c.ioError(ctx, StageData, err, c.opts.CommandTimeout)
		return
	}
	c.enter(stateTx)
}

// Data sends DATA and the message to the recipients Rcpt added, and returns the upstream's final
// reply as an *Error if it was not 2xx. If reading r fails, the connection is closed before the
// final dot, so the upstream never takes a truncated message.
func (c *Conn) Data(ctx context.Context, r io.Reader) error {
	if _, err := c.rcpts(ctx, nil, true); err != nil {
		return err
	}
	return c.body(ctx, r)
}

// Send sends the recipients to (which Rcpt has not added), DATA and the message: with an upstream
// that offers PIPELINING, MAIL, every RCPT and DATA in one write. rcptErrs holds the upstream's
// refusal of each recipient (nil: accepted); err is the outcome for the accepted ones: nil when
// the upstream took the message, the refusal of MAIL, DATA or the message, or a failure to talk to
// the upstream. The message is sent only if a recipient was accepted, and read from r only then.
func (c *Conn) Send(ctx context.Context, to []string, r io.Reader) (rcptErrs []*Error, err error) {
	rcptErrs, e := c.rcpts(ctx, to, true)
	if e != nil {
		return rcptErrs, e
	}
	return rcptErrs, c.body(ctx, r)
}

// body sends the message after the upstream's 354 and reads its final reply.
func (c *Conn) body(ctx context.Context, r io.Reader) error {
	end := c.guard.begin(ctx, c.opts.DataTimeout)
	defer end()
	bufs, _ := c.bodies.Get().(*bodyBuffers)
	if bufs == nil {
		bufs = &bodyBuffers{w: bufio.NewWriterSize(nil, bodyBufferSize), copy: make([]byte, bodyBufferSize)}
	}
	defer func() {
		bufs.w.Reset(nil)
		c.bodies.Put(bufs)
	}()
	bufs.w.Reset(c.wire)
	src, body := &sourceReader{r: r}, &bodyWriter{w: bufs.w}
	c.trace.setMode(traceBody)
	_, err := io.CopyBuffer(body, src, bufs.copy)
	if err == nil {
		err = body.finish()
	}
	c.trace.setMode(traceCommands)
	if err != nil {
		if src.err != nil {
			c.enter(stateBroken)
			return &Error{Stage: StageData, Addr: c.addr, Message: "reading the message failed; the upstream transaction was abandoned", Err: src.err}
		}
		return c.ioError(ctx, StageData, err, c.opts.DataTimeout)
	}
	msg, refused, e := c.readReply(ctx, StageData, 250, c.opts.DataTimeout)
	if e != nil {
		return e
	}
	c.enter(stateReady) // the upstream gave its final word on this message
	if refused != nil {
		return refused
	}
	if c.rd.R.Buffered() > 0 {
		c.enter(stateBroken)
	}
	c.reply = msg
	return nil
}

// readReply reads the reply to one command of a transaction. A negative reply is refused; a
// failure to read one, or a 421 (the upstream is closing), is failed, and leaves c broken.
func (c *Conn) readReply(ctx context.Context, stage string, expect int, timeout time.Duration) (msg string, refused, failed *Error) {
	_, msg, err := c.read(expect)
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se):
		refused = replyError(stage, c.addr, se)
		if refused.Code == 421 {
			c.enter(stateBroken)
			return msg, nil, refused
		}
		return msg, refused, nil
	case err != nil:
		return msg, nil, c.ioError(ctx, stage, err, timeout)
	}
	return msg, nil, nil
}

// bodyBufferSize is the write buffer of a message body: one TLS record's worth of plaintext.
const bodyBufferSize = 16 << 10

// bodyBuffers are what sending one message body needs: the write buffer and the buffer it is
// read into.
type bodyBuffers struct {
	w    *bufio.Writer
	copy []byte
}

// sourceReader remembers its reader's error, telling a message that could not be read from an
// upstream that could not be written to.
type sourceReader struct {
	r   io.Reader
	err error
}

func (s *sourceReader) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}
