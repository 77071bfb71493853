package signin

import (
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// flow is one sign-in between the button and the callback: what the callback needs to finish it.
// It travels in a cookie, encrypted and authenticated, so that any replica sharing the key file
// can serve the callback and nothing is kept in memory.
type flow struct {
	State    string `json:"s"`
	Verifier string `json:"v"`
	Project  string `json:"p"`
	Mailbox  string `json:"m"`
	Nonce    string `json:"n"`
	// IDNonce is the OpenID Connect nonce of the authorization request, which the id_token must
	// carry back (not the link's Nonce).
	IDNonce string `json:"in,omitempty"`
	// LinkExpiry is the link's expiry, so the nonce is remembered as long as the link could work.
	LinkExpiry int64 `json:"le"`
	Expiry     int64 `json:"e"`
}

// cookiePrefix starts the name of every flow cookie; the rest comes from the state, so that two
// sign-ins in one browser do not overwrite each other's cookie.
const cookiePrefix = "postern_signin_"

// cookieName is the name of the cookie of the flow with state.
func cookieName(state string) string {
	sum := sha256.Sum256([]byte(state))
	return cookiePrefix + hex.EncodeToString(sum[:8])
}

// sealer encrypts flows into cookie values (XChaCha20-Poly1305, the cookie name as additional
// data).
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) *sealer {
	aead, err := chacha20poly1305.NewX(derive(key, "postern signin cookie v1"))
	if err != nil {
		panic(err) // derive returns 32 bytes, the only size NewX wants
	}
	return &sealer{aead: aead}
}

func (s *sealer) seal(f flow) (name, value string) {
	name = cookieName(f.State)
	plain, _ := json.Marshal(f)
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	_, _ = rand.Read(nonce)
	return name, base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plain, []byte(name)))
}

var (
	errNoFlow      = errors.New("no sign-in was started for this state in this browser")
	errFlowExpired = errors.New("the sign-in was started too long ago")
)

// open decrypts the cookie value of the flow with state and checks that it belongs to that state
// and has not expired.
func (s *sealer) open(state, value string, now time.Time) (flow, error) {
	name := cookieName(state)
	raw, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(raw) < s.aead.NonceSize() {
		return flow{}, errNoFlow
	}
	plain, err := s.aead.Open(nil, raw[:s.aead.NonceSize()], raw[s.aead.NonceSize():], []byte(name))
	if err != nil {
		return flow{}, errNoFlow
	}
	var f flow
	if err := json.Unmarshal(plain, &f); err != nil || subtle.ConstantTimeCompare([]byte(f.State), []byte(state)) != 1 {
		return flow{}, errNoFlow
	}
	if now.Unix() >= f.Expiry {
		return flow{}, errFlowExpired
	}
	return f, nil
}
