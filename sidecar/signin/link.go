package signin

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/postern/postern/sidecar/project"
	"github.com/postern/postern/sidecar/secret"
)

// KeySize is the size of a new key file, in bytes; shorter keys are refused.
const KeySize = 32

// MaxLinkTTL is the longest a link may live: longer, it would be a standing credential.
const MaxLinkTTL = 30 * 24 * time.Hour

// Errors of Verify, for the page that explains them.
var (
	// ErrLinkInvalid: the link is malformed, was changed, or was signed with another key.
	ErrLinkInvalid = errors.New("the sign-in link is not valid")
	// ErrLinkExpired: the link was valid, and its time is up.
	ErrLinkExpired = errors.New("the sign-in link has expired")
)

// Link is what a sign-in link carries, under its signature.
type Link struct {
	// Project names the project whose mailbox signs in.
	Project string `json:"p"`
	// Mailbox is the account that must sign in: the project's auth.username when the link was made.
	Mailbox string `json:"m"`
	// Expiry is when the link stops working (Unix seconds on the wire).
	Expiry time.Time `json:"-"`
	// Nonce makes the link single-use: it is recorded once a sign-in with it completes.
	Nonce string `json:"n"`
}

// wireLink is the signed form of a Link.
type wireLink struct {
	V int `json:"v"`
	Link
	E int64 `json:"e"`
}

const linkVersion = 1

// Links signs and checks sign-in links with a key.
type Links struct {
	macKey []byte
	base   string
}

// NewLinks returns the signer of links to the sign-in pages at baseURL (the admin listener as
// browsers reach it) with key (from LoadKey).
func NewLinks(key []byte, baseURL string) (*Links, error) {
	if len(key) < KeySize {
		return nil, fmt.Errorf("the sign-in key has %d bytes, fewer than %d", len(key), KeySize)
	}
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("the sign-in base URL %q is not an http or https URL", baseURL)
	}
	return &Links{macKey: derive(key, "postern signin link v1"), base: strings.TrimRight(baseURL, "/")}, nil
}

// derive makes a key for one purpose from the key file's key.
func derive(key []byte, purpose string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(purpose))
	return m.Sum(nil)
}

// Base is the base URL of the sign-in pages, without a trailing slash.
func (l *Links) Base() string { return l.base }

// New makes a link for the mailbox of p, valid for ttl from now. It returns the URL to send to the
// mailbox owner and what it carries.
func (l *Links) New(p project.Project, ttl time.Duration, now time.Time) (string, Link, error) {
	if err := Eligible(p); err != nil {
		return "", Link{}, err
	}
	if ttl <= 0 || ttl > MaxLinkTTL {
		return "", Link{}, fmt.Errorf("link lifetime %v: must be more than 0 and at most %v", ttl, MaxLinkTTL)
	}
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return "", Link{}, fmt.Errorf("making a link nonce: %w", err)
	}
	link := Link{
		Project: p.Name,
		Mailbox: p.Auth.Username,
		Expiry:  now.Add(ttl).Truncate(time.Second),
		Nonce:   base64.RawURLEncoding.EncodeToString(nonce),
	}
	return l.URL(l.Sign(link)), link, nil
}

// URL is the landing page's address for a signed link.
func (l *Links) URL(signed string) string {
	return l.base + "/signin?" + url.Values{"l": {signed}}.Encode()
}

// Sign returns link in its signed form: base64url(JSON) "." base64url(HMAC-SHA256).
func (l *Links) Sign(link Link) string {
	payload, _ := json.Marshal(wireLink{V: linkVersion, Link: link, E: link.Expiry.Unix()})
	p := base64.RawURLEncoding.EncodeToString(payload)
	return p + "." + base64.RawURLEncoding.EncodeToString(l.mac(p))
}

func (l *Links) mac(payload string) []byte {
	m := hmac.New(sha256.New, l.macKey)
	m.Write([]byte(payload))
	return m.Sum(nil)
}

// maxSigned bounds what Verify reads.
const maxSigned = 2048

// Verify checks the signature of a signed link, then its expiry. Errors match ErrLinkInvalid or
// ErrLinkExpired; an expired link still returns what it carries.
func (l *Links) Verify(signed string, now time.Time) (Link, error) {
	payload, sig, ok := strings.Cut(signed, ".")
	if !ok || len(signed) > maxSigned {
		return Link{}, ErrLinkInvalid
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, l.mac(payload)) {
		return Link{}, ErrLinkInvalid
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return Link{}, ErrLinkInvalid
	}
	var w wireLink
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil || w.V != linkVersion || w.Project == "" || w.Nonce == "" || w.E == 0 {
		return Link{}, ErrLinkInvalid
	}
	link := w.Link
	link.Expiry = time.Unix(w.E, 0)
	if !now.Before(link.Expiry) {
		return link, ErrLinkExpired
	}
	return link, nil
}

// LoadKey reads the key file at path, creating it with KeySize random bytes and mode 0600 when it
// does not exist. Concurrent creators agree on one key. A key file readable by group or others is
// refused. Created as root, the file is given to the owner of its directory, so a sidecar running
// as that user can read it.
func LoadKey(path string) ([]byte, error) {
	key, err := secret.LoadOrCreateFile(path, "the sign-in key file", func() ([]byte, error) {
		key := make([]byte, KeySize)
		_, err := rand.Read(key)
		return key, err
	})
	if err != nil {
		return nil, err
	}
	if len(key) < KeySize {
		return nil, fmt.Errorf("the sign-in key file %s holds %d bytes, fewer than %d", path, len(key), KeySize)
	}
	return key, nil
}
