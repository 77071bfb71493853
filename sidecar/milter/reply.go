package milter

import (
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strconv"
	"strings"

	gomilter "github.com/emersion/go-milter"

	policy "github.com/postern/postern/sidecar/reply"
)

// smtpReply is a reply the milter asks Postfix to give: "code enhanced text".
type smtpReply struct {
	text string
}

// maxReplyText keeps a reply well inside SMTP's 512-octet line (RFC 5321 section 4.5.3.1.5).
const maxReplyText = 450

func reply(code int, enhanced, text string) smtpReply {
	return smtpReply{text: fmt.Sprintf("%d %s %s", code, enhanced, truncate(text, maxReplyText))}
}

// fromPolicy is the reply the policy (package reply) gives for a state, made safe for the milter
// protocol: printable ASCII only.
func fromPolicy(r policy.Reply) smtpReply {
	b := []byte(r.Text)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return reply(r.Code, r.EnhancedString(), string(b))
}

// response is the SMFIR_REPLYCODE packet. Postfix reads the text the way Sendmail does, as a format
// string: it turns "%%" into "%" and drops a lone "%", so every "%" is doubled here.
func (r smtpReply) response() *gomilter.CustomResponse {
	return gomilter.NewResponseStr(byte(gomilter.ActReplyCode), strings.ReplaceAll(r.text, "%", "%%"))
}

// clean makes an untrusted value safe to put into a reply: printable ASCII only (anything else
// becomes '?'), at most 100 characters.
func clean(s string) string {
	b := []byte(truncate(s, 100))
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

// truncate cuts s to at most n bytes, marking the cut with "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// sendAsSummary lists what a mailbox may send as, trimmed to a few entries.
func sendAsSummary(list []string) string {
	const show = 5
	if len(list) == 0 {
		return "no address (the project lists none)"
	}
	parts := make([]string, 0, show)
	for i, a := range list {
		if i == show {
			break
		}
		parts = append(parts, clean(a))
	}
	s := strings.Join(parts, ", ")
	if len(list) > show {
		s += fmt.Sprintf(" and %d more", len(list)-show)
	}
	return s
}

// domainOf returns the lower-cased domain of local@domain, or "" for anything else.
func domainOf(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return ""
	}
	return strings.ToLower(strings.TrimSuffix(addr[at+1:], "."))
}

// sizeParam returns the RFC 1870 SIZE= parameter of MAIL FROM (the largest, should a client send
// two). args are the strings of the SMFIC_MAIL packet; they count only when their first one is the
// sender go-milter passed to MailFrom, so parameters of some other packet are never used.
func sizeParam(sender string, args []string) (size int64, ok bool) {
	if len(args) == 0 || strings.Trim(args[0], "<>") != sender {
		return 0, false
	}
	for _, a := range args[1:] {
		k, v, found := strings.Cut(a, "=")
		if !found || !strings.EqualFold(k, "SIZE") {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			continue
		}
		size, ok = max(size, n), true
	}
	return size, ok
}

// parseAddressList parses the value of a From field as Postfix sends it (lines of a folded field
// separated by "\n"). empty is true for a field with nothing in it. Encoded words in display names
// are never decoded into text, so an unknown charset there does not make the address unreadable.
func parseAddressList(v string) (list []*mail.Address, empty bool, err error) {
	v = strings.NewReplacer("\r", "", "\n", "").Replace(v)
	if strings.TrimSpace(v) == "" {
		return nil, true, nil
	}
	p := mail.AddressParser{WordDecoder: &mime.WordDecoder{
		CharsetReader: func(_ string, input io.Reader) (io.Reader, error) { return input, nil },
	}}
	list, err = p.ParseList(v)
	return list, false, err
}
