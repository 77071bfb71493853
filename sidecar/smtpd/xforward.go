package smtpd

import (
	"bytes"
	"strconv"
	"strings"
	"sync"
)

// XFORWARD (www.postfix.org/XFORWARD_README.html) is how Postfix's lmtp and smtp clients tell the
// server about the message they deliver, with lmtp_send_xforward_command = yes (the shipped
// master.cf sets it). Postern wants one attribute: IDENT, Postfix's queue id of the message, so
// that every log line of a delivery can be joined with Postfix's own lines for it.
//
// go-smtp knows no XFORWARD, so the framer (framing.go) handles it below go-smtp:
//
//  1. When go-smtp answers EHLO or LHLO, the framer adds "250-XFORWARD NAME ADDR PROTO HELO
//     IDENT SOURCE" to the reply, after its first line. Postfix sends XFORWARD only to a server
//     that announces it.
//  2. An XFORWARD command line never reaches go-smtp: the framer takes it, keeps its attributes
//     (xtext-decoded) and answers "250 2.0.0 Ok" itself. Postfix sends it before MAIL FROM, in
//     one or more commands; with PIPELINING its reply still comes before MAIL's, as the line
//     before MAIL is answered before go-smtp reads MAIL.
//  3. At MAIL FROM the session takes the attributes (takeXForward), which ends them: each
//     transaction gets only what was sent for it.

// xforwardCapability is the EHLO keyword Postern announces.
const xforwardCapability = "XFORWARD NAME ADDR PROTO HELO IDENT SOURCE"

// maxXForwardValue bounds one attribute's value kept for the log.
const maxXForwardValue = 255

// xforward holds the attributes of the transaction to come.
type xforward struct {
	mu    sync.Mutex
	attrs map[string]string
}

// isXForward reports whether line is an XFORWARD command.
func isXForward(line []byte) bool {
	return len(line) >= 8 && strings.EqualFold(string(line[:8]), "XFORWARD") &&
		(len(line) == 8 || line[8] == ' ' || line[8] == '\r' || line[8] == '\n')
}

// isHello reports whether line is an EHLO or LHLO command.
func isHello(line []byte) bool {
	return len(line) >= 4 && (strings.EqualFold(string(line[:4]), "EHLO") || strings.EqualFold(string(line[:4]), "LHLO"))
}

// command takes one XFORWARD command line and returns the reply to it.
func (x *xforward) command(line []byte) []byte {
	args := strings.Fields(strings.TrimRight(string(line[8:]), "\r\n"))
	if len(args) == 0 {
		return []byte("501 5.5.4 Syntax: XFORWARD attribute=value...\r\n")
	}
	parsed := make(map[string]string, len(args))
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		k = strings.ToUpper(k)
		if !ok || !strings.Contains(" "+xforwardCapability[len("XFORWARD"):]+" ", " "+k+" ") {
			return []byte("501 5.5.4 Bad XFORWARD attribute name: " + clean(k, 30) + "\r\n")
		}
		v, ok = xtextDecode(v)
		if !ok {
			return []byte("501 5.5.4 Bad XFORWARD attribute value\r\n")
		}
		if v == "[UNAVAILABLE]" || v == "[TEMPUNAVAIL]" {
			v = ""
		}
		parsed[k] = clean(v, maxXForwardValue)
	}
	x.mu.Lock()
	if x.attrs == nil {
		x.attrs = map[string]string{}
	}
	for k, v := range parsed {
		x.attrs[k] = v
	}
	x.mu.Unlock()
	return []byte("250 2.0.0 Ok\r\n")
}

// take returns the attributes received since the last take and forgets them.
func (x *xforward) take() map[string]string {
	x.mu.Lock()
	defer x.mu.Unlock()
	a := x.attrs
	x.attrs = nil
	return a
}

// xtextDecode decodes RFC 3461 xtext: "+XX" is the byte of hex XX.
func xtextDecode(s string) (string, bool) {
	if !strings.Contains(s, "+") {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '+' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		n, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", false
		}
		b.WriteByte(byte(n))
		i += 2
	}
	return b.String(), true
}

// withCapability adds the XFORWARD keyword to go-smtp's reply to EHLO or LHLO (all of it or its
// first lines: go-smtp writes one line a call), after its first line.
func withCapability(b []byte) []byte {
	i := bytes.Index(b, []byte("\r\n"))
	if i < 0 || len(b) < 4 || !bytes.HasPrefix(b, []byte("250")) {
		return b
	}
	out := make([]byte, 0, len(b)+len(xforwardCapability)+8)
	switch b[3] {
	case '-':
		out = append(out, b[:i+2]...)
		out = append(out, "250-"+xforwardCapability+"\r\n"...)
		out = append(out, b[i+2:]...)
	case ' ':
		// A one-line reply: it becomes the first line of two.
		out = append(out, "250-"...)
		out = append(out, b[4:i+2]...)
		out = append(out, "250 "+xforwardCapability+"\r\n"...)
		out = append(out, b[i+2:]...)
	default:
		return b
	}
	return out
}
