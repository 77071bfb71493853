package milter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/textproto"
	"strings"

	gomilter "github.com/emersion/go-milter"

	"github.com/postern/postern/sidecar/address"
	"github.com/postern/postern/sidecar/project"
	policy "github.com/postern/postern/sidecar/reply"
)

// session is the Milter of one connection. go-milter calls it from the connection's one goroutine,
// so it needs no locking. Its message state starts afresh at every MAIL FROM and every abort.
type session struct {
	srv  *Server
	conn *conn

	// mailArgs are the strings of the last SMFIC_MAIL packet, set by the frame tee just before
	// MailFrom: "<sender>" then the ESMTP parameters.
	mailArgs []string

	msg message
}

// message is what the session knows about the message under way.
type message struct {
	// active is true from a Postern sender's MAIL FROM until the message is decided.
	active   bool
	sender   string
	queueID  string
	auth     string
	mailAddr string
	project  project.Project
	maxRcpt  int
	maxBytes int64
	// rcpts counts the recipients let through; refused counts those answered with 452.
	rcpts   int
	refused int
	// from holds the values of every From header field.
	from []string
	// size counts header and body bytes so far.
	size int64
}

var _ gomilter.Milter = (*session)(nil)

func (s *session) setMailArgs(args []string) { s.mailArgs = args }

// Connect is never called: the milter asks Postfix not to send connect events.
func (s *session) Connect(string, string, uint16, net.IP, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

// Helo is never called: the milter asks Postfix not to send HELO events.
func (s *session) Helo(string, *gomilter.Modifier) (gomilter.Response, error) {
	return gomilter.RespContinue, nil
}

// MailFrom starts a message: step 1 of the package flow.
func (s *session) MailFrom(from string, m *gomilter.Modifier) (gomilter.Response, error) {
	args := s.mailArgs
	s.mailArgs = nil
	s.msg = message{
		sender:   from,
		auth:     macro(m, "auth_authen"),
		mailAddr: macro(m, "mail_addr"),
	}
	s.noteMacros(m)

	domain := domainOf(from)
	if domain == "" || !s.srv.opts.Domains.ServesDomain(domain) {
		s.conn.log.Debug("milter accepts mail from a sender Postern does not serve", "sender", from, "queue_id", s.msg.queueID)
		return gomilter.RespAccept, nil
	}

	if err := sendable(from); err != nil {
		return s.refuse("mail", policy.For(policy.BadSender, policy.Facts{Reason: err.Reason}), err.Error()), nil
	}

	opts := &s.srv.opts
	ctx, cancel := context.WithTimeout(s.conn.ctx, opts.LookupTimeout)
	p, err := opts.Resolver.Resolve(ctx, from)
	timedOut := errors.Is(ctx.Err(), context.DeadlineExceeded)
	cancel()
	if err != nil {
		switch {
		case opts.IsNoProject(err):
			return s.refuse("mail", policy.For(policy.NoProject, policy.Facts{Sender: clean(from)}), "the sender belongs to no project"), nil
		case opts.IsUnavailable(err) || timedOut || errors.Is(err, context.DeadlineExceeded):
			return s.refuse("mail", policy.For(policy.Unavailable, policy.Facts{}), fmt.Sprintf("resolving the sender: %v", err)), nil
		default:
			return s.refuse("mail", policy.For(policy.Temporary, policy.Facts{}), fmt.Sprintf("resolving the sender: %v", err)), nil
		}
	}
	s.msg.project = p
	s.msg.maxRcpt, s.msg.maxBytes = s.srv.limitsFor(p)

	if p.IsRemoved() {
		return s.refuse("mail", policy.For(policy.Removed, policy.Facts{Project: clean(p.Name)}), "the project was removed"), nil
	}
	if !p.Enabled {
		return s.refuse("mail", policy.For(policy.Disabled, policy.Facts{Project: clean(p.Name)}), "the project is disabled"), nil
	}
	if opts.Credentials != nil {
		if state, reason := opts.Credentials.State(p); state == project.TokenNeedsReauth {
			return s.refuse("mail", policy.For(policy.NeedsSignIn, policy.Facts{Project: clean(p.Name)}),
				"credential needs re-authorisation: "+reason), nil
		}
	}
	if size, ok := sizeParam(from, args); ok && s.msg.maxBytes > 0 && size > s.msg.maxBytes {
		return s.tooLarge("mail", fmt.Sprintf("declared SIZE=%d", size)), nil
	}
	s.msg.active = true
	return gomilter.RespContinue, nil
}

// RcptTo counts recipients: step 2 of the package flow.
func (s *session) RcptTo(rcpt string, m *gomilter.Modifier) (gomilter.Response, error) {
	s.noteMacros(m)
	if !s.msg.active {
		return gomilter.RespContinue, nil
	}
	if err := sendable(rcpt); err != nil {
		r := fromPolicy(policy.For(policy.BadRecipient, policy.Facts{Reason: err.Reason}))
		s.logDecision("rcpt", "refuse recipient", r.text, err.Error(), "recipient", rcpt)
		return r.response(), nil
	}
	if s.msg.maxRcpt > 0 && s.msg.rcpts >= s.msg.maxRcpt {
		s.msg.refused++
		r := fromPolicy(policy.For(policy.TooManyRecipients, policy.Facts{Project: clean(s.msg.project.Name), Limit: int64(s.msg.maxRcpt)}))
		if s.msg.refused == 1 {
			// Logged for the first refused recipient only; the final decision carries the count.
			s.logDecision("rcpt", "refuse recipient", r.text, fmt.Sprintf("recipient %d is over the limit", s.msg.rcpts+1), "recipient", rcpt)
		}
		return r.response(), nil
	}
	s.msg.rcpts++
	return gomilter.RespContinue, nil
}

// Header collects the From fields and counts bytes. go-milter's own header map is not used (the
// connection wrapper only bounds it).
func (s *session) Header(name, value string, m *gomilter.Modifier) (gomilter.Response, error) {
	if !s.msg.active {
		return gomilter.RespContinue, nil
	}
	// "Name: value\r\n", with Postfix's "\n" between the lines of a folded field sent as "\r\n".
	s.msg.size += int64(len(name) + 2 + len(value) + 2 + strings.Count(value, "\n"))
	if strings.EqualFold(name, "From") {
		s.msg.from = append(s.msg.from, value)
	}
	return gomilter.RespContinue, nil
}

// Headers checks the From addresses: step 3 of the package flow.
func (s *session) Headers(_ textproto.MIMEHeader, m *gomilter.Modifier) (gomilter.Response, error) {
	s.noteMacros(m)
	if !s.msg.active {
		return gomilter.RespAccept, nil
	}
	if r := s.checkFrom(); r != nil {
		return r, nil
	}
	s.msg.size += 2 // the empty line before the body
	if s.msg.maxBytes == 0 {
		return s.accept("eoh", "no size limit applies, body not needed"), nil
	}
	if s.msg.size > s.msg.maxBytes {
		return s.tooLarge("eoh", fmt.Sprintf("header fields alone are %d bytes", s.msg.size)), nil
	}
	return gomilter.RespContinue, nil
}

// BodyChunk counts the body: step 4 of the package flow.
func (s *session) BodyChunk(chunk []byte, m *gomilter.Modifier) (gomilter.Response, error) {
	if !s.msg.active {
		return gomilter.RespContinue, nil
	}
	s.msg.size += int64(len(chunk))
	if s.msg.maxBytes > 0 && s.msg.size > s.msg.maxBytes {
		return s.tooLarge("body", fmt.Sprintf("more than %d bytes received", s.msg.size)), nil
	}
	return gomilter.RespContinue, nil
}

// Body ends the message.
func (s *session) Body(m *gomilter.Modifier) (gomilter.Response, error) {
	s.noteMacros(m)
	if !s.msg.active {
		return gomilter.RespAccept, nil
	}
	if s.msg.maxBytes > 0 && s.msg.size > s.msg.maxBytes {
		return s.tooLarge("eom", fmt.Sprintf("%d bytes", s.msg.size)), nil
	}
	return s.accept("eom", fmt.Sprintf("%d bytes within the limit", s.msg.size)), nil
}

// Abort forgets the message: Postfix sends it after RSET, a rejected transaction, or a message
// the milter accepted early.
func (s *session) Abort(*gomilter.Modifier) error {
	s.msg = message{}
	return nil
}

// sendable returns why addr cannot be written into an upstream command (address.Path), or nil.
// Postfix may hand the milter an address with its quotes or without them; either way a control
// character, which no quoting carries, is refused.
func sendable(addr string) *address.SyntaxError {
	if _, err := address.Path(addr); err != nil {
		var se *address.SyntaxError
		if errors.As(err, &se) {
			return se
		}
		return &address.SyntaxError{Reason: err.Error()}
	}
	return nil
}

// checkFrom returns the refusal for a From header the project may not use, or nil.
func (s *session) checkFrom() gomilter.Response {
	var addrs []string
	for _, v := range s.msg.from {
		list, empty, err := parseAddressList(v)
		if err != nil {
			return s.refuse("eoh", policy.For(policy.BadFrom, policy.Facts{}),
				fmt.Sprintf("parsing From %q: %v", truncate(v, 200), err))
		}
		if empty {
			continue
		}
		for _, a := range list {
			addrs = append(addrs, a.Address)
		}
	}
	if len(addrs) == 0 {
		return s.refuse("eoh", policy.For(policy.NoFrom, policy.Facts{}),
			fmt.Sprintf("%d From fields, no address", len(s.msg.from)))
	}
	p := s.msg.project
	for _, a := range addrs {
		if !p.MaySendAs(a) {
			facts := policy.Facts{Address: clean(a), Project: clean(p.Name), Reason: sendAsSummary(p.SendAsList())}
			return s.refuse("eoh", policy.For(policy.SendAsDenied, facts),
				fmt.Sprintf("From %s is not in the project's send-as list", a))
		}
	}
	return nil
}

func (s *session) tooLarge(stage, reason string) gomilter.Response {
	return s.refuse(stage, policy.For(policy.TooLarge, policy.Facts{Project: clean(s.msg.project.Name), Limit: s.msg.maxBytes}), reason)
}

// refuse ends the message with a reply and logs the decision. The reply goes as SMFIR_REPLYCODE,
// which go-milter treats as "continue", so the session keeps its state; the message state is reset
// here and again at the next MAIL FROM or abort.
func (s *session) refuse(stage string, pr policy.Reply, reason string) gomilter.Response {
	r := fromPolicy(pr)
	action := "reject"
	if pr.Code < 500 {
		action = "tempfail"
	}
	s.logDecision(stage, action, r.text, reason)
	s.msg.active = false
	return r.response()
}

// accept ends the message with "accept" and logs the decision.
func (s *session) accept(stage, reason string) gomilter.Response {
	s.logDecision(stage, "accept", "", reason, "recipients", s.msg.rcpts, "recipients_refused", s.msg.refused)
	s.msg.active = false
	return gomilter.RespAccept
}

func (s *session) logDecision(stage, action, replyText, reason string, extra ...any) {
	attrs := []any{
		"stage", stage,
		"action", action,
		"project", s.msg.project.Name,
		"sender", s.msg.sender,
		"queue_id", s.msg.queueID,
	}
	if s.msg.auth != "" {
		attrs = append(attrs, "sasl_username", s.msg.auth)
	}
	if s.msg.mailAddr != "" && s.msg.mailAddr != s.msg.sender {
		attrs = append(attrs, "mail_addr", s.msg.mailAddr)
	}
	if replyText != "" {
		attrs = append(attrs, "reply", replyText)
	}
	attrs = append(attrs, "reason", reason)
	attrs = append(attrs, extra...)
	s.conn.log.Log(s.conn.ctx, slog.LevelInfo, "milter decision", attrs...)
}

// noteMacros keeps the queue id, which Postfix knows only once the queue file exists (after the
// first accepted recipient, by default).
func (s *session) noteMacros(m *gomilter.Modifier) {
	if id := macro(m, "i"); id != "" {
		s.msg.queueID = id
	}
}

// macro returns the value of a Sendmail macro, whether Postfix named it "x" or "{x}".
func macro(m *gomilter.Modifier, name string) string {
	if m == nil || m.Macros == nil {
		return ""
	}
	if v, ok := m.Macros[name]; ok {
		return v
	}
	return m.Macros["{"+name+"}"]
}
