package importer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/postern/postern/sidecar/oauth"
	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

// GoogleTokenEndpoint is sasl-xoauth2's token endpoint when none is configured.
const GoogleTokenEndpoint = "https://accounts.google.com/o/oauth2/token"

// SASLSettings are the keys sasl-xoauth2 reads from its configuration file and, overriding them,
// from each token file.
type SASLSettings struct {
	ClientID             string
	ClientSecret         secret.Secret
	TokenEndpoint        string
	UseClientCredentials bool
	// ManageTokenExternally: another program keeps the access token; there is no refresh token.
	ManageTokenExternally bool
	// Proxy is sasl-xoauth2's own HTTP proxy (Postern's is oauth.http_proxy).
	Proxy string
}

// SASLToken is one sasl-xoauth2 token file.
type SASLToken struct {
	File         string
	AccessToken  secret.Secret
	RefreshToken secret.Secret
	// Expiry of the access token; zero when the file says 0 or nothing.
	Expiry time.Time
	// User is the mailbox, when the file names it.
	User string
	SASLSettings
}

// jsonValue is a JSON value sasl-xoauth2 reads as a string: a string, a number or a boolean.
type jsonValue struct {
	set bool
	s   string
}

func (v *jsonValue) UnmarshalJSON(b []byte) error {
	var x any
	if err := json.Unmarshal(b, &x); err != nil {
		return err
	}
	switch t := x.(type) {
	case string:
		v.s = t
	case float64:
		v.s = strconv.FormatFloat(t, 'f', -1, 64)
	case bool:
		v.s = strconv.FormatBool(t)
	case nil:
		return nil
	default:
		return &json.UnmarshalTypeError{Value: fmt.Sprintf("%T", t), Type: reflect.TypeFor[string]()}
	}
	v.set = true
	return nil
}

func (v jsonValue) yes() bool {
	switch strings.ToLower(v.s) {
	case "yes", "true", "1", "on":
		return true
	}
	return false
}

type saslFile struct {
	AccessToken           jsonValue `json:"access_token"`
	RefreshToken          jsonValue `json:"refresh_token"`
	Expiry                jsonValue `json:"expiry"`
	User                  jsonValue `json:"user"`
	ClientID              jsonValue `json:"client_id"`
	ClientSecret          jsonValue `json:"client_secret"`
	TokenEndpoint         jsonValue `json:"token_endpoint"`
	Proxy                 jsonValue `json:"proxy"`
	UseClientCredentials  jsonValue `json:"use_client_credentials"`
	ManageTokenExternally jsonValue `json:"manage_token_externally"`
}

// decodeJSON decodes one JSON object, with the line of a syntax error.
func decodeJSON(file string, b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return errAt(file, fmt.Sprintf("line %d", lineOf(b, se.Offset)), "not JSON: %v", se)
		case errors.As(err, &te):
			return errAt(file, fmt.Sprintf("line %d", lineOf(b, te.Offset)), "key %q: a string or a number was expected", te.Field)
		}
		return errAt(file, "", "not a JSON object: %v", err)
	}
	if dec.More() {
		return errAt(file, fmt.Sprintf("line %d", lineOf(b, dec.InputOffset())), "more than one JSON value")
	}
	return nil
}

func lineOf(b []byte, offset int64) int {
	offset = min(max(offset, 0), int64(len(b)))
	return bytes.Count(b[:offset], []byte("\n")) + 1
}

func (f saslFile) settings() SASLSettings {
	return SASLSettings{
		ClientID:              strings.TrimSpace(f.ClientID.s),
		ClientSecret:          secret.New(f.ClientSecret.s),
		TokenEndpoint:         strings.TrimSpace(f.TokenEndpoint.s),
		UseClientCredentials:  f.UseClientCredentials.yes(),
		ManageTokenExternally: f.ManageTokenExternally.yes(),
		Proxy:                 strings.TrimSpace(f.Proxy.s),
	}
}

// ParseSASLConfig parses sasl-xoauth2's configuration file (/etc/sasl-xoauth2.conf).
func ParseSASLConfig(file string, b []byte) (SASLSettings, error) {
	var f saslFile
	if err := decodeJSON(file, b, &f); err != nil {
		return SASLSettings{}, err
	}
	return f.settings(), nil
}

// ParseSASLToken parses one sasl-xoauth2 token file.
func ParseSASLToken(file string, b []byte) (SASLToken, error) {
	var f saslFile
	if err := decodeJSON(file, b, &f); err != nil {
		return SASLToken{}, err
	}
	t := SASLToken{
		File:         file,
		AccessToken:  secret.New(strings.TrimSpace(f.AccessToken.s)),
		RefreshToken: secret.New(strings.TrimSpace(f.RefreshToken.s)),
		User:         strings.TrimSpace(f.User.s),
		SASLSettings: f.settings(),
	}
	if e := strings.TrimSpace(f.Expiry.s); e != "" {
		n, err := strconv.ParseFloat(e, 64)
		if err != nil || n < 0 || n > 1<<40 {
			return SASLToken{}, errAt(file, "", "expiry %q is not a time in seconds since 1970", e)
		}
		if n > 0 {
			t.Expiry = time.Unix(int64(n), 0).UTC()
		}
	}
	if t.RefreshToken.IsZero() && t.AccessToken.IsZero() && !t.UseClientCredentials {
		return SASLToken{}, errAt(file, "", "neither refresh_token nor access_token: is this a sasl-xoauth2 token file?")
	}
	return t, nil
}

// MapEntry is one entry of a Postfix lookup table in its source form (the file postmap reads).
type MapEntry struct {
	Line       int
	Key, Value string
}

// ParsePostfixMap parses a Postfix lookup table source: "key value" lines, # comments, blank lines,
// and lines starting with whitespace continuing the one before.
func ParsePostfixMap(file string, b []byte) ([]MapEntry, error) {
	var out []MapEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(out) == 0 {
				return nil, errAt(file, fmt.Sprintf("line %d", n), "a continuation line with no entry before it")
			}
			out[len(out)-1].Value += " " + trimmed
			continue
		}
		i := strings.IndexAny(trimmed, " \t")
		if i < 0 {
			return nil, errAt(file, fmt.Sprintf("line %d", n), "entry %q has no value", trimmed)
		}
		key, value := trimmed[:i], strings.TrimSpace(trimmed[i:])
		out = append(out, MapEntry{Line: n, Key: key, Value: value})
	}
	if err := sc.Err(); err != nil {
		return nil, errAt(file, fmt.Sprintf("line %d", n+1), "%v", err)
	}
	return out, nil
}

// nexthop parses a Postfix next hop: "[host]:port", "host:port", "[host]" or "host", with an
// optional "smtp:" transport in front. port is 0 when not given.
func nexthop(s string) (host string, port int, ok bool) {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "smtp:"), "relay:")
	if s == "" || strings.ContainsAny(s, " \t@/") {
		return "", 0, false
	}
	hostPart, portPart := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", 0, false
		}
		hostPart, portPart = s[1:end], strings.TrimPrefix(s[end+1:], ":")
		if s[end+1:] != "" && !strings.HasPrefix(s[end+1:], ":") {
			return "", 0, false
		}
	} else if h, p, err := net.SplitHostPort(s); err == nil {
		hostPart, portPart = h, p
	} else if strings.Contains(s, ":") {
		return "", 0, false
	}
	if hostPart == "" {
		return "", 0, false
	}
	if portPart != "" {
		p, err := strconv.Atoi(portPart)
		if err != nil || p <= 0 || p > 65535 {
			return "", 0, false
		}
		port = p
	}
	return strings.ToLower(hostPart), port, true
}

// isSenderKey reports whether a sasl_passwd key is a sender (address or @domain), not a next hop.
func isSenderKey(k string) bool { return strings.Contains(k, "@") }

// SASLInput is everything SASLXOAuth2 reads. File names are used in errors and as Source.
type SASLInput struct {
	// Config is sasl-xoauth2's configuration; its zero value when there is none.
	Config SASLSettings
	// Tokens are the token files to import.
	Tokens []SASLToken
	// PasswdFile and Passwd are smtp_sasl_password_maps' source, if given.
	PasswdFile string
	Passwd     []MapEntry
	// RelayFile and Relay are sender_dependent_relayhost_maps' source, if given.
	RelayFile string
	Relay     []MapEntry
	// SamePath reports whether a path in sasl_passwd names the token file (chroot aware); nil
	// compares cleaned paths.
	SamePath func(passwdPath, tokenFile string) bool
}

// SASLXOAuth2 turns sasl-xoauth2 token files into accounts.
func SASLXOAuth2(in SASLInput) ([]Account, error) {
	same := in.SamePath
	if same == nil {
		same = func(a, b string) bool { return filepath.Clean(a) == filepath.Clean(b) }
	}
	var errs []error
	for _, e := range in.Relay {
		if _, _, ok := nexthop(e.Value); !ok {
			errs = append(errs, errAt(in.RelayFile, fmt.Sprintf("line %d", e.Line), "relay host %q is not [host]:port", e.Value))
		}
	}
	var out []Account
	for _, t := range in.Tokens {
		a, err := saslAccount(in, t, same)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, a)
	}
	return out, errors.Join(errs...)
}

func saslAccount(in SASLInput, t SASLToken, same func(a, b string) bool) (Account, error) {
	s := in.Config
	// The token file's keys override the configuration's.
	if t.ClientID != "" {
		s.ClientID = t.ClientID
	}
	if !t.ClientSecret.IsZero() {
		s.ClientSecret = t.ClientSecret
	}
	if t.TokenEndpoint != "" {
		s.TokenEndpoint = t.TokenEndpoint
	}
	s.UseClientCredentials = s.UseClientCredentials || t.UseClientCredentials
	s.ManageTokenExternally = s.ManageTokenExternally || t.ManageTokenExternally
	if t.Proxy != "" {
		s.Proxy = t.Proxy
	}
	a := Account{Source: t.File}
	if s.TokenEndpoint == "" {
		s.TokenEndpoint = GoogleTokenEndpoint
		a.Notes = append(a.Notes, "no token_endpoint: sasl-xoauth2's default, Google's")
	}
	if s.ClientID == "" {
		return a, errAt(t.File, "", "no client_id, neither here nor in sasl-xoauth2's configuration (give it with --sasl-config)")
	}
	ep, ok := providerOf(s.TokenEndpoint)
	if !ok {
		return a, errAt(t.File, "", "token endpoint %s is neither Microsoft's nor Google's: add this mailbox with 'postern project add --provider generic'", s.TokenEndpoint)
	}

	// What the Postfix tables say about this token file.
	mailbox := t.User
	var senders []string
	host, port := "", 0
	for _, e := range in.Passwd {
		user, path, ok := strings.Cut(e.Value, ":")
		if !ok || !same(path, t.File) {
			continue
		}
		where := fmt.Sprintf("%s line %d", in.PasswdFile, e.Line)
		if mailbox != "" && !strings.EqualFold(mailbox, user) {
			return a, errAt(in.PasswdFile, fmt.Sprintf("line %d", e.Line), "user %s, but the token file %s belongs to %s", user, t.File, mailbox)
		}
		mailbox = user
		if isSenderKey(e.Key) {
			senders = append(senders, e.Key)
			if h, p, ok := relayFor(in.Relay, e.Key); ok {
				host, port = h, p
			}
			a.Source += " (" + where + ", sender " + e.Key + ")"
			continue
		}
		h, p, ok := nexthop(e.Key)
		if !ok {
			return a, errAt(in.PasswdFile, fmt.Sprintf("line %d", e.Line), "key %q is neither a sender nor a [host]:port", e.Key)
		}
		host, port = h, p
		a.Source += " (" + where + ")"
	}
	if mailbox == "" {
		return a, errAt(t.File, "", "no mailbox: no sasl_passwd entry points at this file (give --sasl-passwd) and it has no \"user\"")
	}
	if host == "" {
		host, port = ep.host, ep.port
		a.Notes = append(a.Notes, fmt.Sprintf("no relay host in the Postfix tables: the provider's, %s:%d", host, port))
	}
	if port == 0 {
		port = 25 // Postfix's default for a next hop without a port
	}
	if s.Proxy != "" {
		a.Notes = append(a.Notes, "sasl-xoauth2 used an HTTP proxy: set oauth.http_proxy in Postern's configuration if it is still needed")
	}

	o := &project.OAuth{Provider: ep.provider, Tenant: ep.tenant, ClientID: s.ClientID, ClientSecret: s.ClientSecret}
	if s.UseClientCredentials {
		o.Grant = oauth.GrantClientCredentials
	}
	a.Project = oauthProject(mailbox, senders, upstream(host, port, false), o)
	switch {
	case s.UseClientCredentials:
		a.Notes = append(a.Notes, "client credentials: no person signs in")
	case s.ManageTokenExternally:
		a.Todo = append(a.Todo, "the token was kept by another program (manage_token_externally): the mailbox must be signed in")
	case t.RefreshToken.IsZero():
		a.Todo = append(a.Todo, "no refresh token in the file: the mailbox must be signed in")
	default:
		a.Token = &project.Token{
			AccessToken: t.AccessToken, RefreshToken: t.RefreshToken, Expiry: t.Expiry,
			TokenType: "Bearer", Account: mailbox, State: project.TokenOK,
		}
	}
	return a, nil
}

// relayFor looks a sender up in sender_dependent_relayhost_maps as Postfix does: the address,
// then its @domain.
func relayFor(relay []MapEntry, sender string) (string, int, bool) {
	keys := []string{sender}
	if at := strings.LastIndexByte(sender, '@'); at > 0 {
		keys = append(keys, sender[at:])
	}
	for _, k := range keys {
		for _, e := range relay {
			if strings.EqualFold(e.Key, k) {
				return nexthop(e.Value)
			}
		}
	}
	return "", 0, false
}
